//! From an unpickled object graph to a [`Checkpoint`]: find the state dict, validate each tensor view against
//! its storage, point its bytes into the mmap, and detect tied tensors.

use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::path::Path;
use std::rc::Rc;

use super::pickle::{
    kind_of_scalar, render_scalar, Node, StorageKind, StorageRef, Unpickled, Value,
};
use crate::formats::{FormatError, Result};
use crate::tensor::{
    contiguous_range, numel, Backing, Checkpoint, DType, DataRef, OtherEntry, TensorEntry,
    TensorInfo,
};

/// Deepest nesting of dicts searched for tensors.
const MAX_DEPTH: usize = 32;
/// Wrapper keys preferred when several nested dicts hold tensors (training checkpoints).
const PREFERRED_KEYS: &[&str] = &[
    "state_dict",
    "model_state_dict",
    "model",
    "module",
    "net",
    "network",
    "params",
    "weights",
];
/// Largest logical size of a view bigger than its storage (stride 0 or overlapping strides), so a tiny file cannot
/// make a reader materialise terabytes.
const MAX_EXPANDED_BYTES: usize = 1 << 30;
/// Longest rendering of a non-tensor value.
const MAX_RENDER: usize = 200;

/// Finds a storage's bytes: the byte range of the whole storage in the backing, checked against its persistent id.
pub(crate) type Resolver<'a> =
    dyn FnMut(&StorageRef) -> std::result::Result<Range<usize>, String> + 'a;

/// What makes two tensors the same view: (storage key, dtype, offset, shape, strides).
type ViewKey = (Rc<str>, DType, usize, Vec<usize>, Vec<usize>);

enum Leaf {
    Tensor(usize),
    Other(OtherEntry),
}

/// Build the checkpoint from the unpickled object `up`, whose storages `resolve` locates in `backing`.
pub(crate) fn build(
    path: &Path,
    format: &str,
    backing: Backing,
    up: &Unpickled,
    resolve: &mut Resolver<'_>,
) -> Result<Checkpoint> {
    let leaves = select(up).map_err(|m| FormatError::invalid(path, m))?;
    let mut ck = Checkpoint {
        format: format.to_string(),
        files: vec![path.to_path_buf()],
        ..Default::default()
    };
    let mut ranges: HashMap<Rc<str>, (StorageKind, u64, Range<usize>)> = HashMap::new();
    let mut seen: HashMap<ViewKey, usize> = HashMap::new();
    for (name, leaf) in leaves {
        let node = match leaf {
            Leaf::Other(o) => {
                ck.others.push(o);
                continue;
            }
            Leaf::Tensor(n) => n,
        };
        let terr = |m: String| FormatError::tensor(path, &name, m);
        let spec = match up.nodes.get(node) {
            Some(Node::Tensor(Ok(s))) => s,
            Some(Node::Tensor(Err(e))) => return Err(terr(e.clone())),
            _ => return Err(terr("not a tensor".into())),
        };
        let st = match up.nodes.get(spec.storage) {
            Some(Node::Storage(s)) => s,
            _ => return Err(terr("tensor without storage".into())),
        };
        let range = match ranges.get(&st.key) {
            Some((kind, n, r)) => {
                if *kind != st.kind || *n != st.numel {
                    return Err(terr(format!(
                        "storage '{}' is named twice with different types or sizes ({kind:?} × {n}, then {:?} × {})",
                        st.key, st.kind, st.numel
                    )));
                }
                r.clone()
            }
            None => {
                let r = resolve(st).map_err(terr)?;
                ranges.insert(st.key.clone(), (st.kind, st.numel, r.clone()));
                r
            }
        };
        let data = view(
            backing.clone(),
            range,
            spec.dtype,
            spec.offset,
            &spec.shape,
            &spec.strides,
        )
        .map_err(terr)?;
        let tie = (
            st.key.clone(),
            spec.dtype,
            spec.offset,
            spec.shape.clone(),
            spec.strides.clone(),
        );
        let idx = ck.tensors.len();
        let tied_to = seen.get(&tie).copied();
        if tied_to.is_none() {
            seen.insert(tie, idx);
        }
        ck.tensors.push(TensorEntry {
            info: TensorInfo::new(name, spec.dtype, spec.shape.clone()),
            data,
            tied_to,
        });
    }
    Ok(ck)
}

/// Validate a strided view against its storage's byte range and make its [`DataRef`].
fn view(
    backing: Backing,
    storage: Range<usize>,
    dtype: DType,
    offset: usize,
    shape: &[usize],
    strides: &[usize],
) -> std::result::Result<DataRef, String> {
    let elem = dtype.size();
    let n = numel(shape).ok_or("element count overflows")?;
    let nbytes = n.checked_mul(elem).ok_or("byte size overflows")?;
    if n > 0 {
        let mut last = offset;
        for (&d, &s) in shape.iter().zip(strides) {
            last = (d - 1)
                .checked_mul(s)
                .and_then(|x| last.checked_add(x))
                .ok_or("view extent overflows")?;
        }
        let need = last
            .checked_add(1)
            .and_then(|x| x.checked_mul(elem))
            .ok_or("view extent overflows")?;
        if need > storage.len() {
            return Err(format!(
                "view (offset {offset}, size {shape:?}, stride {strides:?}) reaches byte {need} of a {}-byte storage",
                storage.len()
            ));
        }
    }
    if nbytes > storage.len() && nbytes > MAX_EXPANDED_BYTES {
        return Err(format!(
            "view (size {shape:?}, stride {strides:?}) expands a {}-byte storage to {nbytes} bytes: refused beyond {MAX_EXPANDED_BYTES}",
            storage.len()
        ));
    }
    if let Some(r) = contiguous_range(elem, offset, shape, strides) {
        let start = storage.start + r.start;
        return Ok(DataRef::Contiguous {
            backing,
            range: start..start + r.len(),
        });
    }
    Ok(DataRef::Strided {
        backing,
        storage,
        elem_size: elem,
        offset,
        shape: shape.to_vec(),
        strides: strides.to_vec(),
    })
}

/// Check a storage record's length against its persistent id (numel × unit size).
pub(crate) fn check_record_len(st: &StorageRef, len: usize) -> std::result::Result<(), String> {
    let unit = st
        .kind
        .unit_size()
        .ok_or_else(|| format!("storage '{}' has an unsupported type", st.key))?;
    let want = st.numel.checked_mul(unit as u64);
    if want != Some(len as u64) {
        return Err(format!(
            "storage '{}' record holds {len} bytes, its persistent id says {} × {unit} bytes",
            st.key, st.numel
        ));
    }
    Ok(())
}

/// Choose the state dict inside the top-level object and flatten it into named leaves.
fn select(up: &Unpickled) -> std::result::Result<Vec<(String, Leaf)>, String> {
    let mut root = match up.node(&up.root) {
        Some(Node::Dict(_)) => up.root.clone(),
        Some(Node::Tensor(_)) => {
            return Err("the file holds a single tensor, not a dict of named tensors".into())
        }
        _ => {
            return Err(format!(
                "top-level object is a {}, expected a dict of tensors",
                describe(up, &up.root)
            ))
        }
    };
    let mut memo = HashMap::new();
    let mut out = Vec::new();
    // Descend through wrapper dicts ({"model": {...}, "epoch": 3}) while the level has no tensor of its own.
    for _ in 0..MAX_DEPTH {
        let Some(d) = up.dict(&root) else { break };
        if d.items.iter().any(|(_, v)| is_tensor(up, v)) {
            break;
        }
        let candidates: Vec<&(Value, Value)> = d
            .items
            .iter()
            .filter(|(_, v)| up.dict(v).is_some() && holds_tensors(up, v, 0, &mut memo))
            .collect();
        let chosen = match candidates.len() {
            0 => break,
            1 => candidates[0],
            _ => {
                let pick = PREFERRED_KEYS.iter().find_map(|p| {
                    candidates
                        .iter()
                        .find(|(k, _)| matches!(k, Value::Str(s) if &**s == *p))
                });
                match pick {
                    Some(c) => *c,
                    None => {
                        let names: Vec<String> =
                            candidates.iter().map(|(k, _)| key_name(k)).collect();
                        return Err(format!(
                            "several entries hold tensors ({}): cannot tell which is the state dict",
                            names.join(", ")
                        ));
                    }
                }
            }
        };
        for (k, v) in &d.items {
            if !std::ptr::eq(k, &chosen.0) {
                out.push((key_name(k), Leaf::Other(other(up, &key_name(k), v))));
            }
        }
        root = chosen.1.clone();
    }
    let mut visited = HashSet::new();
    flatten(up, &root, "", 0, &mut memo, &mut visited, &mut out);
    Ok(out)
}

fn flatten(
    up: &Unpickled,
    dict: &Value,
    prefix: &str,
    depth: usize,
    memo: &mut HashMap<usize, bool>,
    visited: &mut HashSet<usize>,
    out: &mut Vec<(String, Leaf)>,
) {
    if let Value::Obj(i) = dict {
        visited.insert(*i);
    }
    let Some(d) = up.dict(dict) else { return };
    for (k, v) in &d.items {
        let name = format!("{prefix}{}", key_name(k));
        match v {
            Value::Obj(i) if matches!(up.nodes.get(*i), Some(Node::Tensor(_))) => {
                out.push((name, Leaf::Tensor(*i)))
            }
            Value::Obj(i)
                if depth < MAX_DEPTH
                    && !visited.contains(i)
                    && up.dict(v).is_some()
                    && holds_tensors(up, v, 0, memo) =>
            {
                let p = format!("{name}.");
                flatten(up, v, &p, depth + 1, memo, visited, out)
            }
            _ => {
                let o = other(up, &name, v);
                out.push((name, Leaf::Other(o)))
            }
        }
    }
}

fn is_tensor(up: &Unpickled, v: &Value) -> bool {
    matches!(up.node(v), Some(Node::Tensor(_)))
}

/// Whether a value holds a tensor anywhere below it (bounded depth, memoized, cycle-safe).
fn holds_tensors(up: &Unpickled, v: &Value, depth: usize, memo: &mut HashMap<usize, bool>) -> bool {
    let Value::Obj(i) = v else { return false };
    if let Some(&b) = memo.get(i) {
        return b;
    }
    if depth > MAX_DEPTH {
        return false;
    }
    memo.insert(*i, false); // cycles count as "no"
    let r = match up.nodes.get(*i) {
        Some(Node::Tensor(_)) => true,
        Some(Node::Tuple(x)) | Some(Node::List(x)) | Some(Node::Set(x)) => {
            x.iter().any(|c| holds_tensors(up, c, depth + 1, memo))
        }
        Some(Node::Dict(d)) => d
            .items
            .iter()
            .any(|(_, c)| holds_tensors(up, c, depth + 1, memo)),
        _ => false,
    };
    memo.insert(*i, r);
    r
}

fn key_name(k: &Value) -> String {
    match k {
        Value::Str(s) => s.to_string(),
        other => render_scalar(other),
    }
}

fn describe(up: &Unpickled, v: &Value) -> String {
    match up.node(v) {
        Some(Node::Tuple(x)) => format!("tuple of {} items", x.len()),
        Some(Node::List(x)) => format!("list of {} items", x.len()),
        Some(Node::Set(x)) => format!("set of {} items", x.len()),
        Some(Node::Dict(d)) => format!("dict of {} entries", d.items.len()),
        Some(Node::Storage(_)) => "storage".into(),
        Some(Node::Tensor(_)) => "tensor".into(),
        None => kind_of_scalar(v).into(),
    }
}

fn other(up: &Unpickled, name: &str, v: &Value) -> OtherEntry {
    let (kind, value) = match up.node(v) {
        Some(Node::Tuple(_)) => ("tuple", describe(up, v)),
        Some(Node::List(_)) => ("list", describe(up, v)),
        Some(Node::Set(_)) => ("set", describe(up, v)),
        Some(Node::Dict(_)) => ("dict", describe(up, v)),
        Some(Node::Storage(_)) => ("storage", describe(up, v)),
        Some(Node::Tensor(_)) => ("tensor", describe(up, v)),
        None => (kind_of_scalar(v), render_scalar(v)),
    };
    let mut value = value;
    if value.len() > MAX_RENDER {
        let cut = (0..=MAX_RENDER)
            .rev()
            .find(|&i| value.is_char_boundary(i))
            .unwrap_or(0);
        value.truncate(cut);
        value.push('…');
    }
    OtherEntry {
        name: name.to_string(),
        kind: kind.to_string(),
        value,
    }
}

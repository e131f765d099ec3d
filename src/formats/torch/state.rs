//! From an unpickled object graph to a [`Checkpoint`]: find the state dict, validate each tensor view against
//! its storage, point its bytes into the mmap, and detect tied tensors.

use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::path::Path;
use std::rc::Rc;

use super::pickle::{
    kind_of_scalar, render_scalar, Node, PickleError, StorageKind, StorageRef, Unpickled, Value,
};
use crate::formats::{FormatError, ReadOptions, Result};
use crate::tensor::{
    contiguous_range, numel, Backing, Checkpoint, DType, DataRef, OtherEntry, TensorEntry,
    TensorInfo,
};

/// Deepest nesting of dicts searched for tensors.
const MAX_DEPTH: usize = 32;
/// Keys that hold the model's state dict in a training checkpoint, most wanted first. One of these holding tensors
/// is chosen even beside top-level tensors (`loss`) and other dicts (optimizer states).
const PREFERRED_KEYS: &[&str] = &[
    "state_dict",
    "model_state_dict",
    "model_state",
    "model",
    "module",
    "ema",
    "ema_state_dict",
    "model_ema",
    "net",
    "network",
    "params",
    "weights",
];
/// Parts of key names that mark training state beside the model (never chosen as the state dict by themselves).
const TRAINING_STATE: &[&str] = &["optim", "scheduler", "scaler", "rng", "amp"];
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
    opts: &ReadOptions,
) -> Result<Checkpoint> {
    let (leaves, notes) = select(up, opts).map_err(|m| FormatError::invalid(path, m))?;
    let mut ck = Checkpoint {
        format: format.to_string(),
        files: vec![path.to_path_buf()],
        notes,
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
        // A legacy storage view: a window of the root storage, in elements.
        let (range, base) = match st.view {
            None => (range, 0),
            Some((off, n)) => {
                let unit = st.kind.unit_size().unwrap_or(1) as u64;
                let start = off.checked_mul(unit);
                let end = off.checked_add(n).and_then(|e| e.checked_mul(unit));
                match (start, end) {
                    (Some(a), Some(b)) if b <= range.len() as u64 => (
                        range.start + a as usize..range.start + b as usize,
                        off as usize,
                    ),
                    _ => {
                        return Err(terr(format!(
                            "storage view (offset {off}, size {n}) reaches past its {}-byte root storage '{}'",
                            range.len(),
                            st.key
                        )))
                    }
                }
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
            base + spec.offset,
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

/// Named leaves of the chosen state dict, and notes for the user.
type Selected = (Vec<(String, Leaf)>, Vec<String>);

/// Choose the state dict inside the top-level object and flatten it into named leaves; with it, notes saying
/// which dict of a training checkpoint was read and what was left out.
fn select(up: &Unpickled, opts: &ReadOptions) -> std::result::Result<Selected, String> {
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
    let mut notes = Vec::new();
    // (path of the chosen dict, keys left out beside it)
    let mut chosen_path: Vec<String> = Vec::new();
    let mut left_out: Vec<String> = Vec::new();
    let leave_out = |up: &Unpickled,
                     d: &super::pickle::Dict,
                     keep: &Value,
                     at: &[String],
                     out: &mut Vec<(String, Leaf)>,
                     left_out: &mut Vec<String>| {
        for (k, v) in &d.items {
            if std::ptr::eq(k, keep) {
                continue;
            }
            let name = key_name(k);
            let full = at
                .iter()
                .cloned()
                .chain([name.clone()])
                .collect::<Vec<_>>()
                .join("/");
            left_out.push(full);
            out.push((name.clone(), Leaf::Other(other(up, &name, v))));
        }
    };
    if let Some(want) = &opts.state_dict_key {
        // The whole key first (it may contain '/' or '.'), then a path of keys separated by '/'.
        let whole = [want.as_str()];
        let parts: Vec<&str> = if up
            .dict(&root)
            .is_some_and(|d| d.items.iter().any(|(k, _)| key_name(k) == *want))
        {
            whole.to_vec()
        } else {
            want.split('/').collect()
        };
        for part in parts {
            let d = up.dict(&root).ok_or_else(|| {
                format!(
                    "state dict key '{want}': '{}' is a {}, not a dict",
                    chosen_path.join("/"),
                    describe(up, &root)
                )
            })?;
            let Some(item) = d.items.iter().find(|(k, _)| key_name(k) == part) else {
                let keys: Vec<String> = d.items.iter().map(|(k, _)| key_name(k)).collect();
                return Err(format!(
                    "state dict key '{want}': no entry '{part}' (the keys there: {})",
                    keys.join(", ")
                ));
            };
            leave_out(up, d, &item.0, &chosen_path, &mut out, &mut left_out);
            chosen_path.push(part.to_string());
            root = item.1.clone();
        }
        if up.dict(&root).is_none() || !holds_tensors(up, &root, 0, &mut memo) {
            return Err(format!(
                "state dict key '{want}' names a {}, not a dict of tensors",
                describe(up, &root)
            ));
        }
    } else {
        // Descend through wrapper dicts ({"model": {...}, "epoch": 3}, Lightning's {"state_dict": ...,
        // "optimizer_states": [...]}, the tutorial's {"model_state_dict": ..., "loss": tensor}).
        for depth in 0..MAX_DEPTH {
            let Some(d) = up.dict(&root) else { break };
            let holds = |v: &Value, memo: &mut HashMap<usize, bool>| {
                up.dict(v).is_some() && holds_tensors(up, v, 0, memo)
            };
            let preferred = PREFERRED_KEYS.iter().find_map(|p| {
                d.items
                    .iter()
                    .find(|(k, v)| matches!(k, Value::Str(s) if &**s == *p) && holds(v, &mut memo))
            });
            let chosen = match preferred {
                Some(c) => c,
                None => {
                    if d.items.iter().any(|(_, v)| is_tensor(up, v)) {
                        break;
                    }
                    let candidates: Vec<&(Value, Value)> = d
                        .items
                        .iter()
                        .filter(|(k, v)| {
                            let name = key_name(k).to_ascii_lowercase();
                            !TRAINING_STATE.iter().any(|t| name.contains(t)) && holds(v, &mut memo)
                        })
                        .collect();
                    match candidates.len() {
                        0 => break,
                        1 => candidates[0],
                        // Below a chosen wrapper, several tensor dicts are one nested state dict.
                        _ if depth > 0 => break,
                        _ => {
                            let names: Vec<String> =
                                candidates.iter().map(|(k, _)| key_name(k)).collect();
                            return Err(format!(
                                "several entries hold tensors ({}): cannot tell which is the state dict; \
                                 pick one with --state-dict-key",
                                names.join(", ")
                            ));
                        }
                    }
                }
            };
            leave_out(up, d, &chosen.0, &chosen_path, &mut out, &mut left_out);
            chosen_path.push(key_name(&chosen.0));
            root = chosen.1.clone();
        }
    }
    if !chosen_path.is_empty() {
        let how = if opts.state_dict_key.is_some() {
            "as asked"
        } else {
            "a training checkpoint; pick another with --state-dict-key"
        };
        let rest = if left_out.is_empty() {
            "nothing else".to_string()
        } else {
            left_out.join(", ")
        };
        notes.push(format!(
            "read the state dict under '{}' ({how}); left out: {rest}",
            chosen_path.join("/")
        ));
    }
    let mut visited = HashSet::new();
    flatten(up, &root, "", 0, &mut memo, &mut visited, &mut out);
    Ok((out, notes))
}

/// What a pickle that our machine refused most likely is, when that can be told from the refused global: a whole
/// nn.Module, numpy state, a TrainingArguments file. Otherwise the machine's own message.
pub(crate) fn explain_pickle_error(e: &PickleError, pickle: &[u8]) -> String {
    let Some((m, n)) = &e.refused else {
        return e.to_string();
    };
    let has = |needle: &[u8]| pickle.windows(needle.len()).any(|w| w == needle);
    if m.starts_with("numpy") {
        return format!(
            "a pickle of numpy objects ({m}.{n}), such as a Trainer's rng_state.pth: random-number state, not model weights"
        );
    }
    if n == "TrainingArguments" || m.ends_with("training_args") {
        return format!(
            "a transformers TrainingArguments object ({m}.{n}, a training_args.bin): training settings, not model weights"
        );
    }
    let module_like = m.starts_with("torch.nn.modules")
        || (has(b"_parameters") && has(b"_modules") && has(b"_buffers"));
    if module_like {
        return format!(
            "a whole pickled nn.Module of class {m}.{n} (torch.save(model)), not a state dict: load it in Python and \
             torch.save(model.state_dict()) instead"
        );
    }
    e.to_string()
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

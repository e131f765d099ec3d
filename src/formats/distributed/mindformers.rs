//! MindFormers 2.x checkpoints (`mindformers/checkpoint/` of the 2.1.0 wheel).
//!
//! Layout: a root with `latest_checkpointed_iteration.txt` (the iteration number) and `iteration_NNNNNNNN/`
//! folders; each holds `metadata.json`, `common.json` and per-rank `model-RRRRRRR-NNNNNNN.safetensors` (optimizer
//! state in `opt-…` files). `metadata.json` is
//! `{"state_dict_metadata": {param: {"properties": {"dtype": "Float32", ...}, "global_shape": [...],
//! "chunk": [{"global_offset": [...], "local_shape": [...]}, ...], ...}}, "storage_data": {"('param', (o0, o1))":
//! [{"file_name": ..., "storage_rank": ..., "rank_group": [...]}, ...]}}`: each chunk's file is found under the key
//! made of the parameter name and the chunk's global offset, and holds the chunk under the parameter's name.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::{dropped, finish, optimizer_rule, Coverage, Global, Options, Slice};
use crate::formats::strategy::SliceBox;
use crate::formats::{ckpt, open_file, FormatError, Result};
use crate::tensor::{Checkpoint, DType, OtherEntry};

/// The tracker file of a MindFormers checkpoint root.
pub const TRACKER: &str = "latest_checkpointed_iteration.txt";

/// Whether a folder holds `iteration_NNNNNNNN/` folders.
pub fn has_iteration_dirs(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|rd| {
        rd.filter_map(|e| e.ok()).any(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_prefix("iteration_"))
                .is_some_and(|d| d.len() == 8 && d.bytes().all(|b| b.is_ascii_digit()))
                && e.path().join("metadata.json").is_file()
        })
    })
}

/// The `metadata.json` a path stands for: itself, the one in a folder, or the latest iteration's of a root.
pub fn resolve(path: &Path) -> Result<PathBuf> {
    if path.is_file() {
        return Ok(path.to_path_buf());
    }
    let direct = path.join("metadata.json");
    if direct.is_file() {
        return Ok(direct);
    }
    let tracker = path.join(TRACKER);
    if tracker.is_file() {
        let text = std::fs::read_to_string(&tracker).map_err(|e| FormatError::io(&tracker, e))?;
        let it: u64 = text.trim().parse().map_err(|_| {
            FormatError::invalid(
                &tracker,
                format!("'{}' is not an iteration number", text.trim()),
            )
        })?;
        let dir = path.join(format!("iteration_{it:08}"));
        let meta = dir.join("metadata.json");
        if !meta.is_file() {
            return Err(FormatError::invalid(
                &tracker,
                format!("names iteration {it} but {} is missing", meta.display()),
            ));
        }
        return Ok(meta);
    }
    Err(FormatError::invalid(
        path,
        format!("no metadata.json and no {TRACKER}: not a MindFormers 2.x checkpoint"),
    ))
}

/// MindSpore dtype spellings of `metadata.json` (`str(mstype.float32)` = `Float32`), case-insensitive.
pub fn dtype_of(s: &str) -> Option<DType> {
    ckpt::dtype_of_type(s).or_else(|| {
        DType::ALL
            .into_iter()
            .find(|d| ckpt::type_name(*d).eq_ignore_ascii_case(s))
    })
}

/// The `storage_data` key of a chunk: Python's `str((name, tuple(offset)))`.
pub fn storage_key(name: &str, offset: &[usize]) -> String {
    let tuple = match offset {
        [] => "()".to_string(),
        [one] => format!("({one},)"),
        many => format!(
            "({})",
            many.iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let quoted = if name.contains('\'') && !name.contains('"') {
        format!("\"{name}\"")
    } else {
        format!("'{}'", name.replace('\\', "\\\\").replace('\'', "\\'"))
    };
    format!("({quoted}, {tuple})")
}

fn usizes(v: &Value) -> Option<Vec<usize>> {
    v.as_array()?
        .iter()
        .map(|x| x.as_u64().and_then(|u| usize::try_from(u).ok()))
        .collect()
}

/// Read and assemble a MindFormers 2.x checkpoint.
pub fn read(path: &Path, opts: &Options) -> Result<Checkpoint> {
    Ok(read_with_coverage(path, opts)?.0)
}

/// [`read`], with each tensor's coverage and the rank count (distinct storage ranks).
pub fn read_with_coverage(
    path: &Path,
    opts: &Options,
) -> Result<(Checkpoint, Vec<Coverage>, usize)> {
    let meta_path = resolve(path)?;
    let dir = meta_path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let text = std::fs::read_to_string(&meta_path).map_err(|e| FormatError::io(&meta_path, e))?;
    let meta: Value = serde_json::from_str(&text)
        .map_err(|e| FormatError::invalid(&meta_path, format!("not valid JSON: {e}")))?;
    let bad = |m: String| FormatError::invalid(&meta_path, m);
    let sdm = meta
        .get("state_dict_metadata")
        .and_then(Value::as_object)
        .ok_or_else(|| bad("no \"state_dict_metadata\" object".into()))?;
    let storage = meta
        .get("storage_data")
        .and_then(Value::as_object)
        .ok_or_else(|| bad("no \"storage_data\" object".into()))?;
    let mut opened: HashMap<String, Checkpoint> = HashMap::new();
    let mut order: Vec<String> = Vec::new();
    let mut ranks = std::collections::BTreeSet::new();
    let mut globals = Vec::new();
    let mut others: Vec<OtherEntry> = Vec::new();
    for (name, m) in sdm {
        if !opts.keep_optimizer {
            if let Some(what) = optimizer_rule(name) {
                others.push(dropped(name, what));
                continue;
            }
        }
        let tbad = |msg: String| FormatError::tensor(&meta_path, name, msg);
        let dtype_s = m
            .pointer("/properties/dtype")
            .and_then(Value::as_str)
            .ok_or_else(|| tbad("no properties.dtype".into()))?;
        let dtype = dtype_of(dtype_s).ok_or_else(|| tbad(format!("unknown dtype '{dtype_s}'")))?;
        let shape = m
            .get("global_shape")
            .and_then(usizes)
            .ok_or_else(|| tbad("no global_shape list".into()))?;
        let chunks = m
            .get("chunk")
            .and_then(Value::as_array)
            .ok_or_else(|| tbad("no chunk list".into()))?;
        let mut slices = Vec::with_capacity(chunks.len());
        for c in chunks {
            let raw_off = c
                .get("global_offset")
                .and_then(usizes)
                .ok_or_else(|| tbad("chunk without global_offset".into()))?;
            let local = c
                .get("local_shape")
                .and_then(usizes)
                .ok_or_else(|| tbad("chunk without local_shape".into()))?;
            let key = storage_key(name, &raw_off);
            let entries = storage.get(&key).and_then(Value::as_array).ok_or_else(|| {
                tbad(format!(
                    "chunk at {raw_off:?} has no storage_data entry {key}"
                ))
            })?;
            let file_name = entries
                .first()
                .and_then(|e| e.get("file_name"))
                .and_then(Value::as_str)
                .ok_or_else(|| tbad(format!("storage_data {key} names no file")))?;
            if file_name.contains('/') || file_name.contains('\\') || file_name.starts_with('.') {
                return Err(tbad(format!(
                    "storage file name '{file_name}' is not a plain file name"
                )));
            }
            for e in entries {
                if let Some(r) = e.get("storage_rank").and_then(Value::as_u64) {
                    ranks.insert(r);
                }
            }
            let fpath = dir.join(file_name);
            if !opened.contains_key(file_name) {
                if !fpath.is_file() {
                    return Err(FormatError::tensor(
                        &meta_path,
                        name,
                        format!("names the file {} which is missing", fpath.display()),
                    ));
                }
                opened.insert(file_name.to_string(), open_file(&fpath)?);
                order.push(file_name.to_string());
            }
            let ck = &opened[file_name];
            let entry = ck.find(name).ok_or_else(|| {
                FormatError::tensor(
                    &fpath,
                    name,
                    "not in this file, though metadata.json says it is",
                )
            })?;
            // An unsharded tensor may be recorded with a one-element offset (0,).
            let mut offset = raw_off.clone();
            if offset.len() < shape.len() && offset.iter().all(|&o| o == 0) {
                offset.resize(shape.len(), 0);
            }
            if entry.info.shape != local {
                return Err(FormatError::tensor(
                    &fpath,
                    name,
                    format!(
                        "shape {:?} but metadata.json gives the chunk at {raw_off:?} the shape {local:?}",
                        entry.info.shape
                    ),
                ));
            }
            slices.push(Slice {
                file: fpath.clone(),
                entry: entry.clone(),
                bx: SliceBox {
                    offset,
                    shape: local,
                },
            });
        }
        globals.push(Global {
            name: name.clone(),
            dtype,
            shape,
            declared_in: meta_path.clone(),
            slices,
        });
    }
    let common = dir.join("common.json");
    let mut files = vec![meta_path.clone()];
    if common.is_file() {
        let text = std::fs::read_to_string(&common).map_err(|e| FormatError::io(&common, e))?;
        let v: Value = serde_json::from_str(&text)
            .map_err(|e| FormatError::invalid(&common, format!("not valid JSON: {e}")))?;
        if let Some(o) = v.as_object() {
            for (k, val) in o {
                others.push(OtherEntry {
                    name: k.clone(),
                    kind: "common.json".to_string(),
                    value: val.to_string(),
                });
            }
        }
        files.push(common.clone());
    }
    files.extend(order.iter().map(|f| dir.join(f)));
    let n = ranks.len().max(1);
    let (ck, covs) = finish(
        format!("mindformers_distributed({n} ranks)"),
        globals,
        others,
        files,
    )?;
    Ok((ck, covs, n))
}

//! `inspect`: a checkpoint's tensors from its headers, as a table or one JSON object.

use std::fmt::Write as _;
use std::path::Path;

use rayon::prelude::*;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::convert::hex;
use crate::formats::{self, FormatError};
use crate::tensor::Checkpoint;

/// Read `path` for inspection: one file lists that file's tensors; an index json or a directory lists all shards.
pub fn open(path: &Path) -> Result<Checkpoint, FormatError> {
    if path.is_dir() || formats::distributed::detect(path).is_some() {
        formats::open_model(path)
    } else {
        formats::open_file(path)
    }
}

/// Render the inspection of `path`: a table, or with `json` one JSON object
/// `{"format", "tensors": [{"name","dtype","shape","nbytes"[,"sha256"]}], "other": [...], "metadata": {...},
/// "notes": [...]}` (`metadata`: safetensors `__metadata__`; `notes`: which dict of a training checkpoint was read).
pub fn inspect(path: &Path, json: bool, hash: bool) -> Result<String, FormatError> {
    // Distributed checkpoints: the table shows ranks, files and each global tensor's coverage.
    if !json && !hash && formats::distributed::detect(path).is_some() {
        let opts = formats::distributed::Options::default();
        return Ok(formats::distributed::summarise(path, &opts)?.render());
    }
    let ck = open(path)?;
    let hashes: Vec<Option<String>> = if hash {
        ck.tensors
            .par_iter()
            .map(|t| Some(hex(&Sha256::digest(t.data.bytes().as_ref()))))
            .collect()
    } else {
        vec![None; ck.tensors.len()]
    };
    if json {
        let tensors: Vec<_> = ck
            .tensors
            .iter()
            .zip(&hashes)
            .map(|(t, h)| {
                let mut o = json!({
                    "name": t.info.name,
                    "dtype": t.info.dtype.name(),
                    "shape": t.info.shape,
                    "nbytes": t.info.nbytes(),
                });
                if let Some(h) = h {
                    o["sha256"] = json!(h);
                }
                o
            })
            .collect();
        let other: Vec<_> = ck
            .others
            .iter()
            .map(|o| json!({"name": o.name, "kind": o.kind, "value": o.value}))
            .collect();
        let metadata: serde_json::Map<String, serde_json::Value> = ck
            .metadata
            .iter()
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect();
        let doc = json!({
            "format": ck.format,
            "tensors": tensors,
            "other": other,
            "metadata": metadata,
            "notes": ck.notes,
        });
        return Ok(format!("{doc}\n"));
    }
    let mut out = String::new();
    let total: usize = ck.tensors.iter().map(|t| t.info.nbytes()).sum();
    let _ = writeln!(
        out,
        "{}: {} ({} tensors, {} bytes)",
        path.display(),
        ck.format,
        ck.tensors.len(),
        total
    );
    for n in &ck.notes {
        let _ = writeln!(out, "note: {n}");
    }
    for (k, v) in &ck.metadata {
        let _ = writeln!(out, "metadata: {k} = {v}");
    }
    let width = ck
        .tensors
        .iter()
        .map(|t| t.info.name.len())
        .max()
        .unwrap_or(4)
        .max(4);
    let _ = writeln!(
        out,
        "{:<width$}  {:<5}  {:<20}  {:>12}",
        "name", "dtype", "shape", "bytes"
    );
    for (t, h) in ck.tensors.iter().zip(&hashes) {
        let _ = write!(
            out,
            "{:<width$}  {:<5}  {:<20}  {:>12}",
            t.info.name,
            t.info.dtype.name(),
            format!("{:?}", t.info.shape),
            t.info.nbytes()
        );
        if let Some(h) = h {
            let _ = write!(out, "  {h}");
        }
        out.push('\n');
    }
    for o in &ck.others {
        let _ = writeln!(out, "{:<width$}  ({}) {}", o.name, o.kind, o.value);
    }
    Ok(out)
}

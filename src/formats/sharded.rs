//! HF sharded checkpoints: `*.safetensors.index.json` / `*.bin.index.json` with a `weight_map`.

use std::path::{Path, PathBuf};

use super::{FormatError, OutTensor, OutputFormat, Result, TensorWriter, WriteOptions};
use crate::tensor::Checkpoint;

/// What a model path resolves to.
pub enum Resolved {
    /// An index json: load every shard it names.
    Index(PathBuf),
    /// One weight file.
    File(PathBuf),
}

/// Whether the path names an HF index json.
pub fn is_index(path: &Path) -> bool {
    path.to_str().is_some_and(|s| s.ends_with(".index.json"))
}

pub fn resolve(path: &Path) -> Result<Resolved> {
    Ok(Resolved::File(path.to_path_buf()))
}

pub fn read_index(path: &Path) -> Result<Checkpoint> {
    Err(FormatError::invalid(
        path,
        "sharded reader: not implemented yet",
    ))
}

pub fn writer(
    _format: OutputFormat,
    path: &Path,
    _tensors: &[OutTensor],
    _opts: &WriteOptions,
) -> Result<Box<dyn TensorWriter>> {
    Err(FormatError::invalid(
        path,
        "sharded writer: not implemented yet",
    ))
}

/// Parse an HF-style size: `500KB`, `5GB` (decimal), `10MiB`, `2GiB` (binary) or a plain byte count.
pub fn parse_size(s: &str) -> std::result::Result<u64, String> {
    s.trim().parse::<u64>().map_err(|_| format!("bad size '{s}'"))
}

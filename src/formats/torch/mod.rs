//! PyTorch `torch.save` files: the zip container (reader and writer) and the legacy (pre-1.6) format (reader).
//! The pickle machine is our own, with an allow-list of globals; nothing is ever executed.

use std::path::Path;

use super::{FormatError, OutTensor, Result, TensorWriter, WriteOptions};
use crate::tensor::Checkpoint;

/// First bytes of a legacy file: PROTO 2, then LONG1 of the magic number 0x1950A86A20F9469CFC6C.
pub const LEGACY_MAGIC_PREFIX: [u8; 14] = [
    0x80, 0x02, 0x8A, 0x0A, 0x6C, 0xFC, 0x9C, 0x46, 0xF9, 0x20, 0x6A, 0xA8, 0x50, 0x19,
];

pub fn read_zip(path: &Path) -> Result<Checkpoint> {
    Err(FormatError::invalid(
        path,
        "torch zip reader: not implemented yet",
    ))
}

pub fn read_legacy(path: &Path) -> Result<Checkpoint> {
    Err(FormatError::invalid(
        path,
        "torch legacy reader: not implemented yet",
    ))
}

pub fn writer(
    path: &Path,
    _tensors: &[OutTensor],
    _opts: &WriteOptions,
) -> Result<Box<dyn TensorWriter>> {
    Err(FormatError::invalid(
        path,
        "torch writer: not implemented yet",
    ))
}

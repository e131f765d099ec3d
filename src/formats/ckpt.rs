//! MindSpore `.ckpt`: a run of protobuf records, optionally followed by a `crc_num` trailer.

use std::path::Path;

use super::{FormatError, OutTensor, Result, TensorWriter, WriteOptions};
use crate::tensor::Checkpoint;

pub fn read(path: &Path) -> Result<Checkpoint> {
    Err(FormatError::invalid(
        path,
        "ckpt reader: not implemented yet",
    ))
}

pub fn writer(
    path: &Path,
    _tensors: &[OutTensor],
    _opts: &WriteOptions,
) -> Result<Box<dyn TensorWriter>> {
    Err(FormatError::invalid(
        path,
        "ckpt writer: not implemented yet",
    ))
}

//! PyTorch `torch.save` files: the zip container (reader and writer) and the legacy (pre-1.6) format (reader).
//! The pickle machine is our own, with an allow-list of globals; nothing is ever executed.
//!
//! * [`read_zip`]: `.bin/.pt/.pth` zip archives (any root folder), tensors as zero-copy views into the mmap.
//! * [`read_legacy`]: the pre-1.6 pickle-stream format.
//! * [`writer`]: a streaming zip writer that `torch.load(weights_only=True, mmap=True)` accepts; tied tensors share
//!   one storage.

#[cfg(test)]
mod crafted_tests;
mod legacy;
mod pickle;
mod state;
mod writer;
mod zip_reader;

use std::path::Path;

use super::{OutTensor, ReadOptions, Result, TensorWriter, WriteOptions};
use crate::tensor::{Checkpoint, DType};

/// First bytes of a legacy file: PROTO 2, then LONG1 of the magic number 0x1950A86A20F9469CFC6C.
pub const LEGACY_MAGIC_PREFIX: [u8; 14] = [
    0x80, 0x02, 0x8A, 0x0A, 0x6C, 0xFC, 0x9C, 0x46, 0xF9, 0x20, 0x6A, 0xA8, 0x50, 0x19,
];

/// `Checkpoint::format` of a zip file.
pub const FORMAT_ZIP: &str = "torch_zip";
/// `Checkpoint::format` of a legacy file.
pub const FORMAT_LEGACY: &str = "torch_legacy_pickle";

/// Legacy storage classes (`torch <Name>`): the dtype, or `None` for a recognised class we cannot convert.
pub(crate) const STORAGE_CLASSES: &[(&str, Option<DType>)] = &[
    ("FloatStorage", Some(DType::F32)),
    ("DoubleStorage", Some(DType::F64)),
    ("HalfStorage", Some(DType::F16)),
    ("BFloat16Storage", Some(DType::BF16)),
    ("LongStorage", Some(DType::I64)),
    ("IntStorage", Some(DType::I32)),
    ("ShortStorage", Some(DType::I16)),
    ("CharStorage", Some(DType::I8)),
    ("ByteStorage", Some(DType::U8)),
    ("BoolStorage", Some(DType::Bool)),
    ("ComplexFloatStorage", None),
    ("ComplexDoubleStorage", None),
    ("QInt8Storage", None),
    ("QUInt8Storage", None),
    ("QInt32Storage", None),
    ("QUInt4x2Storage", None),
    ("QUInt2x4Storage", None),
];

/// `torch <dtype>` globals (as `_rebuild_tensor_v3` names them): the dtype, or `None` for a real torch dtype we
/// cannot convert.
pub(crate) const DTYPE_GLOBALS: &[(&str, Option<DType>)] = &[
    ("float32", Some(DType::F32)),
    ("float16", Some(DType::F16)),
    ("bfloat16", Some(DType::BF16)),
    ("float64", Some(DType::F64)),
    ("int64", Some(DType::I64)),
    ("int32", Some(DType::I32)),
    ("int16", Some(DType::I16)),
    ("int8", Some(DType::I8)),
    ("uint8", Some(DType::U8)),
    ("uint16", Some(DType::U16)),
    ("uint32", Some(DType::U32)),
    ("uint64", Some(DType::U64)),
    ("bool", Some(DType::Bool)),
    ("float8_e4m3fn", Some(DType::F8E4M3)),
    ("float8_e5m2", Some(DType::F8E5M2)),
    ("float8_e4m3fnuz", None),
    ("float8_e5m2fnuz", None),
    ("float8_e8m0fnu", Some(DType::F8E8M0)),
    ("float4_e2m1fn_x2", None),
    ("complex32", None),
    ("complex64", None),
    ("complex128", None),
    ("qint8", None),
    ("quint8", None),
    ("qint32", None),
    ("quint4x2", None),
    ("quint2x4", None),
    ("bits1x8", None),
    ("bits2x4", None),
    ("bits4x2", None),
    ("bits8", None),
    ("bits16", None),
    ("uint1", None),
    ("uint2", None),
    ("uint3", None),
    ("uint4", None),
    ("uint5", None),
    ("uint6", None),
    ("uint7", None),
    ("int1", None),
    ("int2", None),
    ("int3", None),
    ("int4", None),
    ("int5", None),
    ("int6", None),
    ("int7", None),
];

/// How the writer names each dtype: a legacy storage class (`_rebuild_tensor_v2`), or, for dtypes that have none,
/// `UntypedStorage` + a dtype global (`_rebuild_tensor_v3`, needs torch ≥ 2.3).
pub(crate) fn write_spelling(d: DType) -> WriteSpelling {
    if let Some((cls, _)) = STORAGE_CLASSES.iter().find(|(_, x)| *x == Some(d)) {
        return WriteSpelling::Legacy(cls);
    }
    let name = DTYPE_GLOBALS
        .iter()
        .find(|(_, x)| *x == Some(d))
        .map(|(n, _)| *n)
        .unwrap_or("uint8");
    WriteSpelling::V3(name)
}

/// See [`write_spelling`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum WriteSpelling {
    Legacy(&'static str),
    V3(&'static str),
}

/// Read a torch zip checkpoint (`torch.save` ≥ 1.6): every tensor of its state dict, as views into the mmap.
pub fn read_zip(path: &Path) -> Result<Checkpoint> {
    zip_reader::read(path, &ReadOptions::default())
}

/// [`read_zip`] with reader options (which dict of a training checkpoint).
pub fn read_zip_with(path: &Path, opts: &ReadOptions) -> Result<Checkpoint> {
    zip_reader::read(path, opts)
}

/// Read a legacy (pre-1.6, non-zip) `torch.save` file.
pub fn read_legacy(path: &Path) -> Result<Checkpoint> {
    legacy::read(path, &ReadOptions::default())
}

/// [`read_legacy`] with reader options.
pub fn read_legacy_with(path: &Path, opts: &ReadOptions) -> Result<Checkpoint> {
    legacy::read(path, opts)
}

/// A streaming torch zip writer for `tensors` at `path` (see [`TensorWriter`]). Tied tensors (`tied_to`) are
/// written once and referenced twice.
pub fn writer(
    path: &Path,
    tensors: &[OutTensor],
    opts: &WriteOptions,
) -> Result<Box<dyn TensorWriter>> {
    writer::TorchWriter::create(path, tensors, opts).map(|w| Box::new(w) as Box<dyn TensorWriter>)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_dtype_has_a_write_spelling_that_reads_back() {
        for d in DType::ALL {
            match write_spelling(d) {
                WriteSpelling::Legacy(cls) => {
                    assert!(STORAGE_CLASSES.contains(&(cls, Some(d))))
                }
                WriteSpelling::V3(n) => {
                    assert!(matches!(d, DType::U16 | DType::U32 | DType::U64) || d.is_fp8());
                    assert!(DTYPE_GLOBALS.contains(&(n, Some(d))));
                }
            }
        }
    }
}

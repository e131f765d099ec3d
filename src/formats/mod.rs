//! Checkpoint formats: one module per format, each a reader and a writer. No model knowledge here.
//!
//! Reading: [`open_file`] reads exactly one file (detected by its first bytes); [`open_model`] resolves a
//! weight file, an HF shard, an index json or a directory to the whole set of weight files.
//! Writing: [`create_writer`] returns a streaming [`TensorWriter`] for a declared list of tensors; it writes into a
//! temporary file in the output directory and renames it into place in [`TensorWriter::finish`].

pub mod ckpt;
mod detect;
pub mod distributed;
mod metadata;
pub mod safetensors;
pub mod sharded;
pub mod strategy;
pub mod torch;

use std::fs::File;
use std::io::{self, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;

use crate::tensor::{Checkpoint, TensorInfo};

/// Errors of the format layer. Every message names the file, and the tensor where there is one.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: {msg}")]
    Invalid { path: PathBuf, msg: String },
    #[error("{path}: tensor '{tensor}': {msg}")]
    Tensor {
        path: PathBuf,
        tensor: String,
        msg: String,
    },
}

impl FormatError {
    pub fn io(path: &Path, source: io::Error) -> Self {
        FormatError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
    pub fn invalid(path: &Path, msg: impl Into<String>) -> Self {
        FormatError::Invalid {
            path: path.to_path_buf(),
            msg: msg.into(),
        }
    }
    pub fn tensor(path: &Path, tensor: &str, msg: impl Into<String>) -> Self {
        FormatError::Tensor {
            path: path.to_path_buf(),
            tensor: tensor.to_string(),
            msg: msg.into(),
        }
    }
}

pub type Result<T> = std::result::Result<T, FormatError>;

/// The on-disk formats we read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InputFormat {
    TorchZip,
    TorchLegacy,
    Safetensors,
    Ckpt,
}

/// The formats we write. A sharded HF layout wraps one of the single-file formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputFormat {
    Ckpt,
    Torch,
    Safetensors,
}

impl OutputFormat {
    /// The format a file name asks for, by extension.
    pub fn from_extension(path: &Path) -> Option<OutputFormat> {
        let ext = path.extension()?.to_str()?;
        match ext {
            "ckpt" => Some(OutputFormat::Ckpt),
            "bin" | "pt" | "pth" => Some(OutputFormat::Torch),
            "safetensors" => Some(OutputFormat::Safetensors),
            _ => None,
        }
    }
}

/// Options shared by the writers.
#[derive(Clone, Debug)]
pub struct WriteOptions {
    /// safetensors `__metadata__` (e.g. `format=pt` or `format=ms`).
    pub metadata: Vec<(String, String)>,
    /// MindSpore ckpt: append the `crc_num` trailer.
    pub crc: bool,
    /// MindSpore ckpt: bytes per record before a tensor is sliced (MindSpore: 512 MiB).
    pub slice_size: usize,
    /// HF sharding: split the output into shards of at most this many bytes (a bigger tensor gets its own shard).
    pub max_shard_size: Option<u64>,
    /// HF sharding: the single-file name the shard names derive from (`o.bin` gives `o-0000i-of-0000n.bin` and
    /// `o.bin.index.json`, a single shard is `o.bin`); `None`: the HF names of the format (`model.safetensors`,
    /// `pytorch_model.bin`, `mindspore_model.ckpt`).
    pub shard_name: Option<String>,
}

pub const CKPT_SLICE_SIZE: usize = 512 * 1024 * 1024;

impl Default for WriteOptions {
    fn default() -> Self {
        WriteOptions {
            metadata: Vec::new(),
            crc: false,
            slice_size: CKPT_SLICE_SIZE,
            max_shard_size: None,
            shard_name: None,
        }
    }
}

/// One tensor an output will hold, declared before any byte is written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutTensor {
    pub info: TensorInfo,
    /// Index of an earlier declared tensor with identical contents (a tied weight). Writers that can share
    /// storage (torch) write it once and do not ask for its bytes.
    pub tied_to: Option<usize>,
}

/// A streaming writer for a declared list of tensors.
pub trait TensorWriter: Send {
    /// Indices into the declared list, in the order this writer wants their bytes. Every index it needs appears
    /// exactly once; tensors it does not need (a tied copy it shares) are left out.
    fn order(&self) -> Vec<usize>;
    /// The bytes (row-major, little-endian, exactly `info.nbytes()`) of the declared tensor `index`, which must be
    /// the next one in [`order`](Self::order).
    fn write(&mut self, index: usize, data: &[u8]) -> Result<()>;
    /// Complete the output: flush, fsync, rename into place. Returns the files written.
    /// Dropping a writer without finishing removes its temporary files.
    fn finish(self: Box<Self>) -> Result<Vec<PathBuf>>;
}

/// Map a file read-only. Callers must not modify inputs while converting.
pub fn map_file(path: &Path) -> Result<Arc<Mmap>> {
    let file = File::open(path).map_err(|e| FormatError::io(path, e))?;
    // SAFETY: the map is read-only; the tool documents that inputs must not change during a conversion.
    let map = unsafe { Mmap::map(&file) }.map_err(|e| FormatError::io(path, e))?;
    Ok(Arc::new(map))
}

pub use detect::detect;
pub use metadata::carried_metadata;

/// Options of the readers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReadOptions {
    /// torch training checkpoints: the entry holding the model's state dict (`model_state_dict`, `ema`...; a
    /// nested one as `outer/inner`). `None`: chosen by the usual names, with a note saying which.
    pub state_dict_key: Option<String>,
}

/// Read exactly one weight file. An index json reads every shard it names.
pub fn open_file(path: &Path) -> Result<Checkpoint> {
    open_file_with(path, &ReadOptions::default())
}

/// [`open_file`] with reader options.
pub fn open_file_with(path: &Path, opts: &ReadOptions) -> Result<Checkpoint> {
    if sharded::is_index(path) {
        if opts.state_dict_key.is_some() {
            return Err(FormatError::invalid(
                path,
                "a state dict key was given, but a sharded set holds plain state dicts",
            ));
        }
        return sharded::read_index(path);
    }
    let fmt = detect(path)?;
    if opts.state_dict_key.is_some()
        && !matches!(fmt, InputFormat::TorchZip | InputFormat::TorchLegacy)
    {
        return Err(FormatError::invalid(
            path,
            "a state dict key was given, but only torch checkpoints hold several dicts",
        ));
    }
    match fmt {
        InputFormat::TorchZip => torch::read_zip_with(path, opts),
        InputFormat::TorchLegacy => torch::read_legacy_with(path, opts),
        InputFormat::Safetensors => safetensors::read(path),
        InputFormat::Ckpt => ckpt::read(path),
    }
}

/// Read a whole model: a single weight file, one shard of an HF set (all shards are loaded through the index),
/// an index json, or a directory holding an index or exactly one weight file.
pub fn open_model(path: &Path) -> Result<Checkpoint> {
    open_model_with(path, &ReadOptions::default())
}

/// [`open_model`] with reader options (a state dict key applies to a single torch file, and is refused otherwise).
pub fn open_model_with(path: &Path, opts: &ReadOptions) -> Result<Checkpoint> {
    open_input(path, opts, &distributed::Options::default())
}

/// [`open_model_with`], plus the options of distributed checkpoints (optimizer state, strategy file).
pub fn open_input(
    path: &Path,
    opts: &ReadOptions,
    dist: &distributed::Options,
) -> Result<Checkpoint> {
    // Distributed checkpoints (rank_N/ folders + strategy, MindFormers 2.x metadata.json): one separate branch.
    if distributed::detect(path).is_some() {
        if opts.state_dict_key.is_some() {
            return Err(FormatError::invalid(
                path,
                "a state dict key was given, but a distributed checkpoint holds plain per-rank files",
            ));
        }
        return distributed::open(path, dist);
    }
    match sharded::resolve(path)? {
        sharded::Resolved::Index(index) if opts.state_dict_key.is_some() => {
            Err(FormatError::invalid(
                &index,
                "a state dict key was given, but a sharded set holds plain state dicts",
            ))
        }
        sharded::Resolved::Index(index) => sharded::read_index(&index),
        sharded::Resolved::File(file) => open_file_with(&file, opts),
    }
}

/// Create a writer for `tensors` at `path` in `format`. With `opts.max_shard_size` (or a directory path, see
/// [`sharded`]), the output is an HF sharded set.
pub fn create_writer(
    format: OutputFormat,
    path: &Path,
    tensors: &[OutTensor],
    opts: &WriteOptions,
) -> Result<Box<dyn TensorWriter>> {
    if opts.max_shard_size.is_some() {
        return sharded::writer(format, path, tensors, opts);
    }
    create_single_writer(format, path, tensors, opts)
}

/// A writer for one file, never sharded.
pub fn create_single_writer(
    format: OutputFormat,
    path: &Path,
    tensors: &[OutTensor],
    opts: &WriteOptions,
) -> Result<Box<dyn TensorWriter>> {
    match format {
        OutputFormat::Ckpt => ckpt::writer(path, tensors, opts),
        OutputFormat::Torch => torch::writer(path, tensors, opts),
        OutputFormat::Safetensors => safetensors::writer(path, tensors, opts),
    }
}

/// Prefix of every temporary output name (see [`crate::fsio`]).
pub use crate::fsio::{temp_prefix, TEMP_PREFIX};

impl From<crate::fsio::FsError> for FormatError {
    fn from(e: crate::fsio::FsError) -> Self {
        FormatError::Io {
            path: e.path,
            source: e.source,
        }
    }
}

/// A file being written under a temporary name in its final directory: [`crate::fsio::AtomicFile`] with the
/// format layer's errors. [`AtomicFile::commit`] fsyncs, renames into place and fsyncs the directory; dropped
/// uncommitted, the temporary file is removed. Inside a [`crate::fsio::HashScope`] its bytes are hashed as they
/// are written. Buffered; implements `Write` and `Seek`.
///
/// A zip written through `Write` (the torch writer's zip crate) patches each entry's local header (CRC-32 and
/// sizes) after the entry's data. So that such a file is still hashed while written, the header is held unhashed
/// until the data arrives, then hashed with the CRC and sizes that data implies; the zip crate's patch must then
/// write exactly those bytes, else the file gets no streamed digest (see [`crate::fsio::AtomicFile::release`]).
pub struct AtomicFile {
    file: crate::fsio::AtomicFile,
    /// The first bytes written through `Write` were a zip local header.
    zip: Option<bool>,
}

/// Zip record signatures.
const ZIP_LOCAL: &[u8] = b"PK\x03\x04";
const ZIP_CENTRAL: &[u8] = b"PK\x01\x02";
/// Fixed part of a zip local header; CRC-32 and the two sizes sit at 14..26.
const ZIP_LOCAL_FIXED: usize = 30;

impl AtomicFile {
    pub fn create(path: &Path) -> Result<Self> {
        Ok(AtomicFile {
            file: crate::fsio::AtomicFile::create(path)?,
            zip: None,
        })
    }

    /// Final path of the file.
    pub fn path(&self) -> &Path {
        self.file.path()
    }

    /// `write_all` with the error naming the output file.
    pub fn put(&mut self, buf: &[u8]) -> Result<()> {
        Ok(self.file.put(buf)?)
    }

    /// Before `buf` is appended to a zip: hold a local header, and when the data after a complete header arrives,
    /// hash the header as the zip crate will patch it (CRC-32 of the data, its length twice: a Stored entry).
    fn zip_before(&mut self, buf: &[u8]) {
        if !self.file.at_end() {
            return;
        }
        let header_len = |h: &[u8]| {
            (h.len() >= ZIP_LOCAL_FIXED).then(|| {
                ZIP_LOCAL_FIXED
                    + usize::from(u16::from_le_bytes([h[26], h[27]]))
                    + usize::from(u16::from_le_bytes([h[28], h[29]]))
            })
        };
        let held = self.file.held().map(|h| (h.to_vec(), header_len(h)));
        match held {
            None => {
                if buf.starts_with(ZIP_LOCAL) {
                    self.file.hold();
                }
            }
            Some((h, Some(n))) if h.len() >= n => {
                if buf.starts_with(ZIP_LOCAL) || buf.starts_with(ZIP_CENTRAL) || h.len() > n {
                    // An empty entry (its header patched in the hold) or not the layout expected.
                    self.file.release(None);
                    if buf.starts_with(ZIP_LOCAL) {
                        self.file.hold();
                    }
                    return;
                }
                let mut p = h;
                match u32::try_from(buf.len()) {
                    Ok(len) => {
                        p[14..18].copy_from_slice(&crc32fast::hash(buf).to_le_bytes());
                        p[18..22].copy_from_slice(&len.to_le_bytes());
                        p[22..26].copy_from_slice(&len.to_le_bytes());
                        self.file.release(Some(p));
                    }
                    // zip64: sizes live in an extra field; no prediction (the digest is lost, never wrong).
                    Err(_) => self.file.release(None),
                }
            }
            // The header is still being written.
            Some(_) => {}
        }
    }

    /// Flush, fsync, rename into place, fsync the directory.
    pub fn commit(self) -> Result<PathBuf> {
        Ok(self.file.commit()?.path)
    }
}

impl Write for AtomicFile {
    /// Writes all of `buf` (one call per caller's write, so a zip entry's data arrives whole).
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let zip = *self.zip.get_or_insert_with(|| buf.starts_with(ZIP_LOCAL));
        if zip {
            self.zip_before(buf);
        }
        self.file.write_all(buf)?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl Seek for AtomicFile {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        self.file.seek(pos)
    }
}

#[cfg(test)]
mod atomic_tests {
    use super::*;
    use crate::fsio::{sha256_file, HashScope};
    use crate::tensor::{DType, TensorInfo};

    /// Every output format, sharded too, gets its digest while written (the torch zip included, whose headers
    /// the zip crate patches), and the digest is the file's.
    #[test]
    fn every_format_is_hashed_while_written() {
        let d = tempfile::tempdir().unwrap();
        let tensors: Vec<OutTensor> = [("a", 3usize), ("b", 0), ("c", 70_000)]
            .iter()
            .map(|&(n, len)| OutTensor {
                info: TensorInfo::new(n.to_string(), DType::F32, vec![len]),
                tied_to: None,
            })
            .collect();
        let cases = [
            (OutputFormat::Torch, "m.bin", None),
            (OutputFormat::Ckpt, "m.ckpt", None),
            (OutputFormat::Safetensors, "m.safetensors", None),
            (OutputFormat::Torch, "shards/", Some(100_000u64)),
        ];
        for (format, name, shard) in cases {
            let scope = HashScope::enter();
            let path = d.path().join(name);
            let opts = WriteOptions {
                max_shard_size: shard,
                ..Default::default()
            };
            let mut w = create_writer(format, &path, &tensors, &opts).unwrap();
            for i in w.order() {
                let n = tensors[i].info.nbytes();
                let data: Vec<u8> = (0..n).map(|k| (k * 7 + i) as u8).collect();
                w.write(i, &data).unwrap();
            }
            let files = w.finish().unwrap();
            assert!(!files.is_empty());
            for f in files {
                let want = sha256_file(&f).unwrap();
                assert_eq!(scope.take(&f), Some(want), "{format:?} {}", f.display());
            }
        }
    }
}

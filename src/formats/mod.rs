//! Checkpoint formats: one module per format, each a reader and a writer. No model knowledge here.
//!
//! Reading: [`open_file`] reads exactly one file (detected by its first bytes); [`open_model`] resolves a
//! weight file, an HF shard, an index json or a directory to the whole set of weight files.
//! Writing: [`create_writer`] returns a streaming [`TensorWriter`] for a declared list of tensors; it writes into a
//! temporary file in the output directory and renames it into place in [`TensorWriter::finish`].

pub mod ckpt;
pub mod distributed;
pub mod safetensors;
pub mod sharded;
pub mod strategy;
pub mod torch;

use std::fs::File;
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
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
}

pub const CKPT_SLICE_SIZE: usize = 512 * 1024 * 1024;

impl Default for WriteOptions {
    fn default() -> Self {
        WriteOptions {
            metadata: Vec::new(),
            crc: false,
            slice_size: CKPT_SLICE_SIZE,
            max_shard_size: None,
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

/// Detect a single file's format from its first bytes.
pub fn detect(path: &Path) -> Result<InputFormat> {
    let mut head = [0u8; 16];
    let mut f = File::open(path).map_err(|e| FormatError::io(path, e))?;
    let mut n = 0;
    while n < head.len() {
        let k = f
            .read(&mut head[n..])
            .map_err(|e| FormatError::io(path, e))?;
        if k == 0 {
            break;
        }
        n += k;
    }
    let head = &head[..n];
    if n == 0 {
        return Err(FormatError::invalid(path, "empty file: not a checkpoint"));
    }
    if head.starts_with(b"PK\x03\x04") || head.starts_with(b"PK\x05\x06") {
        return Ok(InputFormat::TorchZip);
    }
    if head.starts_with(&torch::LEGACY_MAGIC_PREFIX) {
        return Ok(InputFormat::TorchLegacy);
    }
    if n >= 9 && head[0] == 0x0A {
        // Could be a ckpt record; a safetensors header length starting with 0x0A is possible too, so check the
        // safetensors shape first: u64 length then '{' (possibly after spaces).
        if safetensors::looks_like(head) {
            return Ok(InputFormat::Safetensors);
        }
        return Ok(InputFormat::Ckpt);
    }
    if safetensors::looks_like(head) {
        return Ok(InputFormat::Safetensors);
    }
    if head[0] == 0x0A {
        return Ok(InputFormat::Ckpt);
    }
    if head.starts_with(b"\x80") {
        return Err(FormatError::invalid(
            path,
            "a bare pickle without torch's zip container or legacy magic: not a torch checkpoint",
        ));
    }
    if path.extension().and_then(|e| e.to_str()) == Some("ckpt") {
        return Err(FormatError::invalid(
            path,
            format!(
                "not a plain MindSpore checkpoint (first byte 0x{:02X}, expected 0x0A): encrypted or not a ckpt",
                head[0]
            ),
        ));
    }
    Err(FormatError::invalid(
        path,
        "unrecognised format (expected torch zip/legacy, safetensors or MindSpore ckpt)",
    ))
}

/// Read exactly one weight file. An index json reads every shard it names.
pub fn open_file(path: &Path) -> Result<Checkpoint> {
    if sharded::is_index(path) {
        return sharded::read_index(path);
    }
    match detect(path)? {
        InputFormat::TorchZip => torch::read_zip(path),
        InputFormat::TorchLegacy => torch::read_legacy(path),
        InputFormat::Safetensors => safetensors::read(path),
        InputFormat::Ckpt => ckpt::read(path),
    }
}

/// Read a whole model: a single weight file, one shard of an HF set (all shards are loaded through the index),
/// an index json, or a directory holding an index or exactly one weight file.
pub fn open_model(path: &Path) -> Result<Checkpoint> {
    open_model_with(path, &distributed::Options::default())
}

/// [`open_model`], with the options of distributed checkpoints (optimizer state, strategy file).
pub fn open_model_with(path: &Path, dist: &distributed::Options) -> Result<Checkpoint> {
    // Distributed checkpoints (rank_N/ folders + strategy, MindFormers 2.x metadata.json): one separate branch.
    if distributed::detect(path).is_some() {
        return distributed::open(path, dist);
    }
    match sharded::resolve(path)? {
        sharded::Resolved::Index(index) => sharded::read_index(&index),
        sharded::Resolved::File(file) => open_file(&file),
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

/// A file being written under a temporary name in its final directory; [`AtomicFile::commit`] fsyncs and renames
/// it into place. Dropped uncommitted, the temporary file is removed. Buffered; implements `Write` and `Seek`.
pub struct AtomicFile {
    path: PathBuf,
    out: BufWriter<tempfile::NamedTempFile>,
    /// Logical write position (bytes handed to the buffer, seeks applied).
    pos: u64,
    /// End of the range already handed to the kernel for writeback.
    kicked: u64,
}

/// Bytes written before the kernel is asked to start writing them back (so `commit`'s fsync waits for the tail only).
const WRITEBACK_STEP: u64 = 32 << 20;

/// Prefix of every temporary output name, so a later run can find and remove leftovers of a killed one.
pub const TEMP_PREFIX: &str = ".convert-weight-tmp-";

/// Prefix of the temporary names of one output file: `.convert-weight-tmp-<file name>-`.
pub fn temp_prefix(file_name: &str) -> String {
    format!("{TEMP_PREFIX}{file_name}-")
}

impl AtomicFile {
    pub fn create(path: &Path) -> Result<Self> {
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&dir).map_err(|e| FormatError::io(&dir, e))?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = tempfile::Builder::new()
            .prefix(&temp_prefix(&name))
            .tempfile_in(&dir)
            .map_err(|e| FormatError::io(path, e))?;
        Ok(AtomicFile {
            path: path.to_path_buf(),
            out: BufWriter::with_capacity(8 << 20, tmp),
            pos: 0,
            kicked: 0,
        })
    }

    /// Final path of the file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `write_all` with the error naming the output file.
    pub fn put(&mut self, buf: &[u8]) -> Result<()> {
        self.out
            .write_all(buf)
            .map_err(|e| FormatError::io(&self.path, e))?;
        self.advance(buf.len());
        Ok(())
    }

    /// Account for `n` bytes written; once enough reached the file, start their writeback (advisory: the data is
    /// made durable by `commit`'s fsync either way).
    fn advance(&mut self, n: usize) {
        self.pos += n as u64;
        let in_file = self.pos.saturating_sub(self.out.buffer().len() as u64);
        if in_file >= self.kicked + WRITEBACK_STEP {
            #[cfg(target_os = "linux")]
            {
                use std::os::fd::AsRawFd;
                let fd = self.out.get_ref().as_file().as_raw_fd();
                // SAFETY: plain syscall on a file descriptor we own; failure only loses the hint.
                unsafe {
                    libc::sync_file_range(
                        fd,
                        self.kicked as libc::off64_t,
                        (in_file - self.kicked) as libc::off64_t,
                        libc::SYNC_FILE_RANGE_WRITE,
                    )
                };
            }
            self.kicked = in_file;
        }
    }

    /// Flush, fsync and rename into place.
    pub fn commit(self) -> Result<PathBuf> {
        let path = self.path;
        let tmp = self
            .out
            .into_inner()
            .map_err(|e| FormatError::io(&path, e.into_error()))?;
        tmp.as_file()
            .sync_all()
            .map_err(|e| FormatError::io(&path, e))?;
        tmp.persist(&path)
            .map_err(|e| FormatError::io(&path, e.error))?;
        Ok(path)
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.out.write(buf)?;
        self.advance(n);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

impl Seek for AtomicFile {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        let p = self.out.seek(pos)?;
        self.pos = p;
        self.kicked = self.kicked.min(p);
        Ok(p)
    }
}

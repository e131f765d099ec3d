//! Streaming writer for torch zip checkpoints (§2.5/§2.7 of the format spec): `<stem>/data.pkl` (protocol 2,
//! minimal vocabulary, no memo), `<stem>/byteorder`, `<stem>/data/<N>` in storage order, `<stem>/version`. All
//! entries Stored and 64-byte aligned, with a fixed timestamp; no `.format_version`/`.storage_alignment`.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};

use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, DateTime, ZipWriter};

use super::pickle::Emitter;
use super::{write_spelling, WriteSpelling};
use crate::formats::{AtomicFile, FormatError, OutTensor, Result, TensorWriter, WriteOptions};
use crate::tensor::numel;

/// Most items per `SETITEMS` batch (as Python's pickler).
const BATCH: usize = 1000;
/// Entries at least this big need zip64 headers, which the zip crate must know before writing.
const LARGE: u64 = u32::MAX as u64;

/// The torch zip writer; see the module doc.
pub(crate) struct TorchWriter {
    zip: ZipWriter<AtomicFile>,
    path: PathBuf,
    stem: String,
    tensors: Vec<OutTensor>,
    /// Indices of the tensors that own a storage, in storage order (storage N = `order[N]`).
    order: Vec<usize>,
    /// Byte size of each declared tensor.
    nbytes: Vec<usize>,
    /// How many of `order` have been written.
    next: usize,
}

fn entry_options(size: u64) -> SimpleFileOptions {
    SimpleFileOptions::default()
        .compression_method(CompressionMethod::Stored)
        .with_alignment(64)
        .last_modified_time(DateTime::default())
        .large_file(size >= LARGE)
}

/// Row-major strides as torch computes them (a zero-size dim counts as 1).
pub(crate) fn contiguous_strides(shape: &[usize]) -> Vec<u64> {
    let mut strides = vec![0u64; shape.len()];
    let mut acc = 1u64;
    for (i, &d) in shape.iter().enumerate().rev() {
        strides[i] = acc;
        acc = acc.saturating_mul(d.max(1) as u64);
    }
    strides
}

impl TorchWriter {
    pub(crate) fn create(path: &Path, tensors: &[OutTensor], _opts: &WriteOptions) -> Result<Self> {
        let mut names = HashSet::new();
        let mut nbytes = Vec::with_capacity(tensors.len());
        let mut storage_of = vec![0usize; tensors.len()];
        let mut order = Vec::new();
        for (i, t) in tensors.iter().enumerate() {
            let terr = |m: String| FormatError::tensor(path, &t.info.name, m);
            if !names.insert(t.info.name.as_str()) {
                return Err(terr("declared twice".into()));
            }
            let n = numel(&t.info.shape)
                .and_then(|n| n.checked_mul(t.info.dtype.size()))
                .ok_or_else(|| terr(format!("shape {:?} overflows", t.info.shape)))?;
            nbytes.push(n);
            match t.tied_to {
                None => {
                    storage_of[i] = order.len();
                    order.push(i);
                }
                Some(j) => {
                    let base = tensors.get(j).filter(|_| j < i).ok_or_else(|| {
                        terr(format!("tied to #{j}, which is not an earlier tensor"))
                    })?;
                    if base.info.dtype != t.info.dtype || base.info.shape != t.info.shape {
                        return Err(terr(format!(
                            "tied to '{}' but their dtype/shape differ ({} {:?} vs {} {:?})",
                            base.info.name,
                            t.info.dtype,
                            t.info.shape,
                            base.info.dtype,
                            base.info.shape
                        )));
                    }
                    storage_of[i] = storage_of[j];
                }
            }
        }
        let pickle = build_pickle(tensors, &storage_of, &nbytes);
        let stem = path
            .file_stem()
            .and_then(|s| s.to_str())
            .filter(|s| !s.is_empty())
            .unwrap_or("archive")
            .to_string();
        let file = AtomicFile::create(path)?;
        let mut w = TorchWriter {
            zip: ZipWriter::new(file),
            path: path.to_path_buf(),
            stem,
            tensors: tensors.to_vec(),
            order,
            nbytes,
            next: 0,
        };
        w.entry("data.pkl", &pickle)?;
        w.entry("byteorder", b"little")?;
        Ok(w)
    }

    fn zip_err(&self, what: &str, e: impl std::fmt::Display) -> FormatError {
        FormatError::invalid(&self.path, format!("writing zip entry {what}: {e}"))
    }

    fn entry(&mut self, name: &str, data: &[u8]) -> Result<()> {
        let full = format!("{}/{name}", self.stem);
        self.zip
            .start_file(full.as_str(), entry_options(data.len() as u64))
            .map_err(|e| self.zip_err(&full, e))?;
        self.zip
            .write_all(data)
            .map_err(|e| FormatError::io(&self.path, e))
    }
}

/// The `data.pkl` of a state dict: `{name: _rebuild_tensor_v2/v3(persid, 0, size, stride, False, OrderedDict())}`.
fn build_pickle(tensors: &[OutTensor], storage_of: &[usize], nbytes: &[usize]) -> Vec<u8> {
    let mut e = Emitter::default();
    e.proto2();
    e.op(b'}');
    let idx: Vec<usize> = (0..tensors.len()).collect();
    for chunk in idx.chunks(BATCH) {
        e.mark();
        for &i in chunk {
            let t = &tensors[i];
            e.unicode(&t.info.name);
            let spelling = write_spelling(t.info.dtype);
            let (rebuild, smod, scls, snumel) = match spelling {
                WriteSpelling::Legacy(cls) => (
                    "_rebuild_tensor_v2",
                    "torch",
                    cls,
                    nbytes[i] / t.info.dtype.size(),
                ),
                WriteSpelling::V3(_) => (
                    "_rebuild_tensor_v3",
                    "torch.storage",
                    "UntypedStorage",
                    nbytes[i],
                ),
            };
            e.global("torch._utils", rebuild);
            e.mark();
            // persistent id ('storage', class, key, 'cpu', numel)
            e.mark();
            e.unicode("storage");
            e.global(smod, scls);
            e.unicode(&storage_of[i].to_string());
            e.unicode("cpu");
            e.int(snumel as u64);
            e.op(b't');
            e.op(b'Q');
            e.int(0);
            let shape: Vec<u64> = t.info.shape.iter().map(|&d| d as u64).collect();
            e.int_tuple(&shape);
            e.int_tuple(&contiguous_strides(&t.info.shape));
            e.op(0x89); // requires_grad False
            e.global("collections", "OrderedDict");
            e.op(b')');
            e.op(b'R');
            if let WriteSpelling::V3(dtype) = spelling {
                e.global("torch", dtype);
            }
            e.op(b't');
            e.op(b'R');
        }
        e.op(b'u');
    }
    e.op(b'.');
    e.buf
}

impl TensorWriter for TorchWriter {
    fn order(&self) -> Vec<usize> {
        self.order.clone()
    }

    fn write(&mut self, index: usize, data: &[u8]) -> Result<()> {
        let Some(&want) = self.order.get(self.next) else {
            return Err(FormatError::invalid(
                &self.path,
                format!("tensor #{index} written after every storage was complete"),
            ));
        };
        let name = self
            .tensors
            .get(index)
            .map(|t| t.info.name.clone())
            .unwrap_or_default();
        if index != want {
            return Err(FormatError::tensor(
                &self.path,
                &name,
                format!(
                    "written out of order: tensor #{index}, expected #{want} ('{}')",
                    self.tensors[want].info.name
                ),
            ));
        }
        if data.len() != self.nbytes[index] {
            return Err(FormatError::tensor(
                &self.path,
                &name,
                format!("got {} bytes, expected {}", data.len(), self.nbytes[index]),
            ));
        }
        let key = self.next;
        self.entry(&format!("data/{key}"), data)?;
        self.next += 1;
        Ok(())
    }

    fn finish(mut self: Box<Self>) -> Result<Vec<PathBuf>> {
        if self.next != self.order.len() {
            let missing = &self.tensors[self.order[self.next]].info.name;
            return Err(FormatError::invalid(
                &self.path,
                format!(
                    "finished with {} of {} storages written (next: '{missing}')",
                    self.next,
                    self.order.len()
                ),
            ));
        }
        self.entry("version", b"3\n")?;
        let path = self.path.clone();
        let file = self
            .zip
            .finish()
            .map_err(|e| FormatError::invalid(&path, format!("finishing zip: {e}")))?;
        Ok(vec![file.commit()?])
    }
}

//! MindSpore `.ckpt`: a run of protobuf records, optionally followed by a `crc_num` trailer (spec §1).
//!
//! Reading walks the records by hand over a memory map: no payload is copied, every tensor's data is a range (or,
//! for a sliced tensor, several ranges) of the map. Writing emits the record headers by hand and streams each
//! payload straight to the output, byte-identical to MindSpore's own `save_checkpoint`.
//!
//! Wire layout (spec §1.2):
//! ```text
//! file   := record* [crc_trailer]
//! record := 0x0A varint(len V) V                   -- Checkpoint.value
//! V      := 0x0A varint(len tag) tag  0x12 varint(len T) T
//! T      := (0x08 varint(dim))*  0x12 varint(len type) type  0x1A varint(n) <n bytes>
//! crc_trailer := "crc_num" + CRC-32 as a 10-byte big-endian integer
//! ```

use std::collections::HashSet;
use std::ops::Range;
use std::path::{Path, PathBuf};

use super::{AtomicFile, FormatError, OutTensor, Result, TensorWriter, WriteOptions};
use crate::tensor::{numel, Backing, Checkpoint, DType, DataRef, OtherEntry, TensorEntry};

/// `Checkpoint.format` of a file read here.
pub const FORMAT: &str = "mindspore_ckpt_protobuf";

/// Magic of the CRC trailer.
const CRC_MAGIC: &[u8; 7] = b"crc_num";
/// Length of the CRC trailer: the magic and a 10-byte big-endian integer.
pub const TRAILER_LEN: usize = 17;

/// `tensor_type` strings we read, and the dtype each stands for. The first spelling of a dtype is the one we write
/// (MindSpore 2.x); `Uint*` are the MindSpore 1.0 loader's spellings.
const TYPES: &[(&str, DType)] = &[
    ("Float64", DType::F64),
    ("Float32", DType::F32),
    ("Float16", DType::F16),
    ("BFloat16", DType::BF16),
    ("Int64", DType::I64),
    ("Int32", DType::I32),
    ("Int16", DType::I16),
    ("Int8", DType::I8),
    ("UInt8", DType::U8),
    ("UInt16", DType::U16),
    ("UInt32", DType::U32),
    ("UInt64", DType::U64),
    ("Bool", DType::Bool),
    ("Uint8", DType::U8),
    ("Uint16", DType::U16),
    ("Uint32", DType::U32),
    ("Uint64", DType::U64),
];

/// `tensor_type` strings MindSpore knows but we cannot represent, with the reason.
const UNSUPPORTED_TYPES: &[(&str, &str)] = &[(
    "Int4",
    "qint4x2 (two 4-bit values per byte) is not supported",
)];

/// Type string of `str` records (`append_dict` strings, UTF-32LE content).
const STR_TYPE: &[u8] = b"str";

/// The MindSpore `tensor_type` string of a dtype (modern spelling). FP8 has none: the writer refuses it before
/// this is asked.
pub fn type_name(dtype: DType) -> &'static str {
    dtype_type(dtype).unwrap_or("Float32")
}

/// The MindSpore `tensor_type` string of a dtype, if MindSpore has one.
fn dtype_type(dtype: DType) -> Option<&'static str> {
    TYPES.iter().find(|(_, d)| *d == dtype).map(|(s, _)| *s)
}

/// The dtype a `tensor_type` string stands for, if we support it.
pub fn dtype_of_type(s: &str) -> Option<DType> {
    TYPES.iter().find(|(n, _)| *n == s).map(|(_, d)| *d)
}

// ------------------------------------------------------------------------------------------------------------
// Reading
// ------------------------------------------------------------------------------------------------------------

/// Protobuf wire types.
const WT_VARINT: u8 = 0;
const WT_I64: u8 = 1;
const WT_LEN: u8 = 2;
const WT_I32: u8 = 5;

/// A bounds-checked cursor over `buf[pos..end]`; positions are absolute offsets into the whole file.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    end: usize,
}

impl<'a> Cursor<'a> {
    fn new(buf: &'a [u8], range: Range<usize>) -> Self {
        Cursor {
            buf,
            pos: range.start,
            end: range.end,
        }
    }

    fn at_end(&self) -> bool {
        self.pos >= self.end
    }

    fn remaining(&self) -> usize {
        self.end - self.pos
    }

    /// A base-128 varint of at most 10 bytes.
    fn varint(&mut self) -> std::result::Result<u64, String> {
        let mut value = 0u64;
        for i in 0..10 {
            if self.pos >= self.end {
                return Err(format!("truncated varint at byte {}", self.pos));
            }
            let b = self.buf[self.pos];
            self.pos += 1;
            if i == 9 && b > 1 {
                return Err(format!("varint overflows 64 bits at byte {}", self.pos - 1));
            }
            value |= u64::from(b & 0x7F) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(format!("varint longer than 10 bytes at byte {}", self.pos))
    }

    /// A field key: (field number, wire type).
    fn key(&mut self) -> std::result::Result<(u64, u8), String> {
        let at = self.pos;
        let k = self.varint()?;
        let field = k >> 3;
        if field == 0 {
            return Err(format!("invalid protobuf field number 0 at byte {at}"));
        }
        Ok((field, (k & 7) as u8))
    }

    /// The range of a length-delimited payload, checked against the enclosing message.
    fn len_delimited(&mut self) -> std::result::Result<Range<usize>, String> {
        let at = self.pos;
        let n = self.varint()?;
        let rem = self.remaining();
        match usize::try_from(n) {
            Ok(n) if n <= rem => {
                let r = self.pos..self.pos + n;
                self.pos += n;
                Ok(r)
            }
            _ => Err(format!(
                "length {n} at byte {at} runs past the end of its message ({rem} bytes left)"
            )),
        }
    }

    /// Skip the value of an unknown field.
    fn skip(&mut self, wire: u8) -> std::result::Result<(), String> {
        let fixed = |c: &mut Self, n: usize| {
            if c.remaining() < n {
                Err(format!("truncated fixed-size field at byte {}", c.pos))
            } else {
                c.pos += n;
                Ok(())
            }
        };
        match wire {
            WT_VARINT => self.varint().map(|_| ()),
            WT_I64 => fixed(self, 8),
            WT_LEN => self.len_delimited().map(|_| ()),
            WT_I32 => fixed(self, 4),
            w => Err(format!(
                "unsupported protobuf wire type {w} at byte {}",
                self.pos
            )),
        }
    }
}

/// One `Checkpoint.value` record as found in the file (offsets are absolute).
struct Record {
    tag: String,
    dims: Vec<u64>,
    ttype: Range<usize>,
    content: Range<usize>,
    /// Byte offset of the record (for messages).
    at: usize,
}

/// Parse one `Checkpoint.value` (the bytes of V).
fn parse_value(buf: &[u8], v: Range<usize>) -> std::result::Result<Record, String> {
    let at = v.start;
    let mut c = Cursor::new(buf, v);
    let mut tag: Option<Range<usize>> = None;
    let mut tensor: Option<Range<usize>> = None;
    let mut is_map = false;
    while !c.at_end() {
        let (field, wire) = c.key()?;
        match (field, wire) {
            (1, WT_LEN) => tag = Some(c.len_delimited()?),
            (2, WT_LEN) => {
                if tensor.is_some() {
                    return Err(format!(
                        "record at byte {at} holds two tensors (merged messages are not supported)"
                    ));
                }
                tensor = Some(c.len_delimited()?);
            }
            (3, WT_LEN) => {
                c.len_delimited()?;
                is_map = true;
            }
            (1..=3, w) => {
                return Err(format!(
                    "record at byte {at}: field {field} has wire type {w}, expected 2 (length-delimited)"
                ))
            }
            (_, w) => c.skip(w)?,
        }
    }
    let tag = tag.ok_or_else(|| format!("record at byte {at} has no tag (parameter name)"))?;
    let tag = std::str::from_utf8(&buf[tag])
        .map_err(|_| format!("record at byte {at}: tag is not valid UTF-8"))?
        .to_string();
    if is_map {
        return Err(format!(
            "parameter '{tag}': a MapTensorProto record (MindSpore MapParameter, an embedding hash table) is not \
             supported"
        ));
    }
    let t = tensor.ok_or_else(|| format!("parameter '{tag}': record has no tensor"))?;
    let mut c = Cursor::new(buf, t);
    let mut dims = Vec::new();
    let mut ttype: Option<Range<usize>> = None;
    let mut content: Option<Range<usize>> = None;
    while !c.at_end() {
        let (field, wire) = c.key().map_err(|e| format!("parameter '{tag}': {e}"))?;
        let r: std::result::Result<(), String> = match (field, wire) {
            (1, WT_VARINT) => c.varint().map(|d| dims.push(d)),
            (1, WT_LEN) => c.len_delimited().and_then(|p| {
                let mut pc = Cursor::new(buf, p);
                while !pc.at_end() {
                    dims.push(pc.varint()?);
                }
                Ok(())
            }),
            (2, WT_LEN) => c.len_delimited().map(|r| ttype = Some(r)),
            (3, WT_LEN) => c.len_delimited().map(|r| content = Some(r)),
            (2..=3, w) => Err(format!(
                "field {field} has wire type {w}, expected 2 (length-delimited)"
            )),
            (_, w) => c.skip(w),
        };
        r.map_err(|e| format!("parameter '{tag}': {e}"))?;
    }
    let ttype = ttype.ok_or_else(|| format!("parameter '{tag}': tensor has no tensor_type"))?;
    // A missing tensor_content decodes as empty (MindSpore then silently loads zeros; the length check below
    // refuses it unless the tensor really is empty).
    let content = content.unwrap_or(0..0);
    Ok(Record {
        tag,
        dims,
        ttype,
        content,
        at,
    })
}

/// Check and strip the `crc_num` trailer. Returns the length of the record bytes.
fn strip_trailer(path: &Path, buf: &[u8]) -> Result<usize> {
    let n = buf.len();
    if n < TRAILER_LEN || &buf[n - TRAILER_LEN..n - 10] != CRC_MAGIC {
        return Ok(n);
    }
    let body = n - TRAILER_LEN;
    let stored = &buf[n - 10..];
    let stored_value = stored
        .iter()
        .fold(0u128, |acc, &b| (acc << 8) | u128::from(b));
    let actual = crc32fast::hash(&buf[..body]);
    if stored_value != u128::from(actual) {
        return Err(FormatError::invalid(
            path,
            format!(
                "CRC mismatch: the crc_num trailer says {stored_value:#010x}, the records hash to {actual:#010x} \
                 (the file is corrupted)"
            ),
        ));
    }
    Ok(body)
}

/// Read a MindSpore checkpoint: every tensor (sliced ones joined), `str` records as [`OtherEntry`].
pub fn read(path: &Path) -> Result<Checkpoint> {
    let len = std::fs::metadata(path)
        .map_err(|e| FormatError::io(path, e))?
        .len();
    if len == 0 {
        return Err(FormatError::invalid(
            path,
            "empty file: not a MindSpore checkpoint",
        ));
    }
    let map = super::map_file(path)?;
    let buf: &[u8] = &map[..];
    if buf.first() != Some(&0x0A) {
        return Err(FormatError::invalid(
            path,
            format!(
                "first byte is 0x{:02X}, expected 0x0A: the file looks encrypted (MindSpore enc_key) or is not a \
                 ckpt",
                buf.first().copied().unwrap_or(0)
            ),
        ));
    }
    let body = strip_trailer(path, buf)?;
    let records = walk(buf, body).map_err(|m| FormatError::invalid(path, m))?;
    if records.is_empty() {
        return Err(FormatError::invalid(
            path,
            "no parameters in the checkpoint",
        ));
    }
    let backing = Backing::Mmap(map.clone());
    let mut out = Checkpoint {
        format: FORMAT.to_string(),
        files: vec![path.to_path_buf()],
        ..Default::default()
    };
    let mut seen: HashSet<&str> = HashSet::new();
    let mut i = 0;
    while i < records.len() {
        let first = &records[i];
        let mut j = i + 1;
        while j < records.len() && records[j].tag == first.tag {
            j += 1;
        }
        let group = &records[i..j];
        if !seen.insert(first.tag.as_str()) {
            return Err(FormatError::tensor(
                path,
                &first.tag,
                format!(
                    "appears again at byte {} after other parameters (non-adjacent duplicate tag)",
                    first.at
                ),
            ));
        }
        build_entry(path, buf, group, &backing, &mut out)?;
        i = j;
    }
    Ok(out)
}

/// Walk the top-level records of `buf[..body]`.
fn walk(buf: &[u8], body: usize) -> std::result::Result<Vec<Record>, String> {
    let mut c = Cursor::new(buf, 0..body);
    let mut records = Vec::new();
    while !c.at_end() {
        let at = c.pos;
        let (field, wire) = c.key()?;
        match (field, wire) {
            (1, WT_LEN) => {
                let v = c.len_delimited()?;
                records.push(parse_value(buf, v)?);
            }
            (1, w) => {
                return Err(format!(
                    "record at byte {at} has wire type {w}, expected 2 (length-delimited)"
                ))
            }
            (_, w) => c.skip(w)?,
        }
    }
    Ok(records)
}

/// Turn a group of adjacent same-tag records into a tensor or a `str` entry.
fn build_entry(
    path: &Path,
    buf: &[u8],
    group: &[Record],
    backing: &Backing,
    out: &mut Checkpoint,
) -> Result<()> {
    let first = &group[0];
    let name = first.tag.as_str();
    let terr = |m: String| FormatError::tensor(path, name, m);
    let ttype = &buf[first.ttype.clone()];
    for r in &group[1..] {
        if buf[r.ttype.clone()] != *ttype || r.dims != first.dims {
            return Err(terr(format!(
                "slice at byte {} has dims {:?} / type '{}', the first slice has {:?} / '{}'",
                r.at,
                r.dims,
                String::from_utf8_lossy(&buf[r.ttype.clone()]),
                first.dims,
                String::from_utf8_lossy(ttype)
            )));
        }
    }
    let ranges: Vec<Range<usize>> = group.iter().map(|r| r.content.clone()).collect();
    let total: usize = ranges.iter().map(|r| r.len()).sum();
    if ttype == STR_TYPE {
        if total % 4 != 0 {
            return Err(terr(format!(
                "str content of {total} bytes is not a whole number of UTF-32 code points"
            )));
        }
        let mut value = String::new();
        let mut word = Vec::with_capacity(4);
        for b in ranges.iter().flat_map(|r| buf[r.clone()].iter()) {
            word.push(*b);
            if word.len() == 4 {
                let cp = u32::from_le_bytes([word[0], word[1], word[2], word[3]]);
                let ch = char::from_u32(cp)
                    .ok_or_else(|| terr(format!("invalid UTF-32 code point {cp:#x} in str")))?;
                value.push(ch);
                word.clear();
            }
        }
        out.others.push(OtherEntry {
            name: name.to_string(),
            kind: "str".to_string(),
            value,
        });
        return Ok(());
    }
    let tname = String::from_utf8_lossy(ttype);
    let dtype = match dtype_of_type(&tname) {
        Some(d) => d,
        None => {
            let why = UNSUPPORTED_TYPES
                .iter()
                .find(|(n, _)| *n == tname)
                .map(|(_, w)| *w)
                .unwrap_or("unknown tensor_type (MindSpore itself refuses it)");
            return Err(terr(format!("tensor_type '{tname}': {why}")));
        }
    };
    let mut shape = Vec::with_capacity(first.dims.len());
    for &d in &first.dims {
        let d = d as i64; // int64 on the wire: a negative dim is a huge u64
        match usize::try_from(d) {
            Ok(u) => shape.push(u),
            Err(_) => return Err(terr(format!("invalid dimension {d} in dims"))),
        }
    }
    if shape == [0] {
        // MindSpore 1.0 wrote scalars as dims [0]; our writer writes a zero-length 1-D tensor as dims [0] with
        // empty content.
        if total == dtype.size() {
            shape.clear();
        } else if total != 0 {
            return Err(terr(format!(
                "dims [0] with {total} bytes of content: neither a scalar ({} bytes) nor empty",
                dtype.size()
            )));
        }
    }
    let expected = numel(&shape).and_then(|n| n.checked_mul(dtype.size()));
    if expected != Some(total) {
        return Err(terr(format!(
            "{} content bytes for shape {:?} of {} ({}), expected {} (MindSpore would silently load zeros)",
            total,
            shape,
            tname,
            dtype,
            match expected {
                Some(e) => e.to_string(),
                None => "an overflowing size".to_string(),
            }
        )));
    }
    let data = if ranges.len() == 1 {
        DataRef::Contiguous {
            backing: backing.clone(),
            range: ranges[0].clone(),
        }
    } else {
        DataRef::Chunks {
            backing: backing.clone(),
            ranges,
        }
    };
    out.tensors.push(TensorEntry {
        info: crate::tensor::TensorInfo::new(name, dtype, shape),
        data,
        tied_to: None,
    });
    Ok(())
}

// ------------------------------------------------------------------------------------------------------------
// Writing
// ------------------------------------------------------------------------------------------------------------

/// Append a base-128 varint.
fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Length of a varint.
fn varint_len(v: u64) -> usize {
    let bits = 64 - (v | 1).leading_zeros() as usize;
    bits.div_ceil(7)
}

/// Length of a length-delimited field (key byte, length varint, payload).
fn ld_len(n: usize) -> usize {
    1 + varint_len(n as u64) + n
}

/// Streaming ckpt writer: one record per tensor (more for tensors over the slice size), in declared order.
struct CkptWriter {
    file: Option<AtomicFile>,
    path: PathBuf,
    tensors: Vec<OutTensor>,
    next: usize,
    slice_size: usize,
    crc: Option<crc32fast::Hasher>,
    /// Reused header buffer.
    head: Vec<u8>,
}

/// Create a ckpt writer at `path` for `tensors` (declared order is file order).
///
/// Tied copies are written as full copies (ckpt has no sharing). A tensor bigger than `opts.slice_size` becomes
/// consecutive records of `slice_size` bytes with the same tag, full dims and type (MindSpore 2.x byte slicing).
/// A zero-length 1-D tensor (shape `[0]`) is written as dims `[0]` with empty content: our reader reads it back as
/// shape `[0]`, but MindSpore reads dims `[0]` as a scalar (and loads zeros for it).
/// `opts.crc` appends the `crc_num` trailer.
pub fn writer(
    path: &Path,
    tensors: &[OutTensor],
    opts: &WriteOptions,
) -> Result<Box<dyn TensorWriter>> {
    if opts.slice_size == 0 {
        return Err(FormatError::invalid(path, "ckpt slice size must be > 0"));
    }
    let mut names = HashSet::new();
    for t in tensors {
        let name = &t.info.name;
        if !names.insert(name.as_str()) {
            return Err(FormatError::tensor(
                path,
                name,
                "declared twice (a ckpt cannot hold two parameters with one name)",
            ));
        }
        if name.is_empty() {
            return Err(FormatError::invalid(path, "a tensor has an empty name"));
        }
        if dtype_type(t.info.dtype).is_none() {
            return Err(FormatError::tensor(
                path,
                name,
                format!(
                    "dtype {} cannot be stored in a MindSpore .ckpt (it has no FP8 tensor_type); dequantise it with a family \
                     (e.g. --model deepseek3 writes bf16) or write .safetensors, which keeps FP8 as it is",
                    t.info.dtype
                ),
            ));
        }
        if let Some(&d) = t.info.shape.iter().find(|&&d| d > i32::MAX as usize) {
            return Err(FormatError::tensor(
                path,
                name,
                format!("dimension {d} does not fit MindSpore's int32 dims"),
            ));
        }
        if numel(&t.info.shape)
            .and_then(|n| n.checked_mul(t.info.dtype.size()))
            .is_none()
        {
            return Err(FormatError::tensor(path, name, "size overflows"));
        }
    }
    let file = AtomicFile::create(path)?;
    Ok(Box::new(CkptWriter {
        file: Some(file),
        path: path.to_path_buf(),
        tensors: tensors.to_vec(),
        next: 0,
        slice_size: opts.slice_size,
        crc: opts.crc.then(crc32fast::Hasher::new),
        head: Vec::with_capacity(256),
    }))
}

impl CkptWriter {
    fn put(&mut self, bytes: &[u8]) -> Result<()> {
        if let Some(h) = self.crc.as_mut() {
            h.update(bytes);
        }
        match self.file.as_mut() {
            Some(f) => f.put(bytes),
            None => Err(FormatError::invalid(&self.path, "writer already finished")),
        }
    }

    /// Emit one record: header bytes, then the payload.
    fn record(&mut self, index: usize, payload: &[u8]) -> Result<()> {
        let info = &self.tensors[index].info;
        let tag = info.name.as_bytes();
        let ttype = type_name(info.dtype).as_bytes();
        // dims: none for a scalar, else one varint key per dim.
        let dims_len: usize = info.shape.iter().map(|&d| 1 + varint_len(d as u64)).sum();
        let t_len = dims_len + ld_len(ttype.len()) + ld_len(payload.len());
        let v_len = ld_len(tag.len()) + ld_len(t_len);
        let mut h = std::mem::take(&mut self.head);
        h.clear();
        h.push(0x0A);
        put_varint(&mut h, v_len as u64);
        h.push(0x0A);
        put_varint(&mut h, tag.len() as u64);
        h.extend_from_slice(tag);
        h.push(0x12);
        put_varint(&mut h, t_len as u64);
        for &d in &info.shape {
            h.push(0x08);
            put_varint(&mut h, d as u64);
        }
        h.push(0x12);
        put_varint(&mut h, ttype.len() as u64);
        h.extend_from_slice(ttype);
        h.push(0x1A);
        put_varint(&mut h, payload.len() as u64);
        let r = self.put(&h);
        self.head = h;
        r?;
        self.put(payload)
    }
}

impl TensorWriter for CkptWriter {
    fn order(&self) -> Vec<usize> {
        (0..self.tensors.len()).collect()
    }

    fn write(&mut self, index: usize, data: &[u8]) -> Result<()> {
        if index != self.next || index >= self.tensors.len() {
            return Err(FormatError::invalid(
                &self.path,
                format!(
                    "tensor #{index} written out of order (expected #{})",
                    self.next
                ),
            ));
        }
        let info = &self.tensors[index].info;
        if data.len() != info.nbytes() {
            return Err(FormatError::tensor(
                &self.path,
                &info.name,
                format!(
                    "got {} bytes, expected {} for {:?} {}",
                    data.len(),
                    info.nbytes(),
                    info.shape,
                    info.dtype
                ),
            ));
        }
        if data.is_empty() {
            self.record(index, data)?;
        } else {
            for chunk in data.chunks(self.slice_size) {
                self.record(index, chunk)?;
            }
        }
        self.next += 1;
        Ok(())
    }

    fn finish(mut self: Box<Self>) -> Result<Vec<PathBuf>> {
        if self.next != self.tensors.len() {
            return Err(FormatError::invalid(
                &self.path,
                format!(
                    "finished after {} of {} tensors",
                    self.next,
                    self.tensors.len()
                ),
            ));
        }
        if let Some(h) = self.crc.take() {
            let crc = h.finalize();
            let mut trailer = Vec::with_capacity(TRAILER_LEN);
            trailer.extend_from_slice(CRC_MAGIC);
            trailer.extend_from_slice(&[0; 6]);
            trailer.extend_from_slice(&crc.to_be_bytes());
            self.put(&trailer)?;
        }
        let file = self
            .file
            .take()
            .ok_or_else(|| FormatError::invalid(&self.path, "writer already finished"))?;
        Ok(vec![file.commit()?])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints() {
        for v in [0u64, 1, 127, 128, 300, 1 << 35, u64::MAX] {
            let mut b = Vec::new();
            put_varint(&mut b, v);
            assert_eq!(b.len(), varint_len(v));
            let mut c = Cursor::new(&b, 0..b.len());
            assert_eq!(c.varint().unwrap(), v);
        }
        // 11 continuation bytes: refused
        let b = [0xFFu8; 11];
        assert!(Cursor::new(&b, 0..11).varint().is_err());
        // truncated
        let b = [0x80u8];
        assert!(Cursor::new(&b, 0..1).varint().is_err());
    }

    #[test]
    fn type_table() {
        for d in DType::ALL {
            if d.is_fp8() {
                assert_eq!(dtype_type(d), None);
                continue;
            }
            assert_eq!(dtype_of_type(type_name(d)), Some(d));
        }
        assert_eq!(dtype_of_type("Uint16"), Some(DType::U16));
        assert_eq!(type_name(DType::U16), "UInt16");
    }

    #[test]
    fn fp8_is_refused_with_a_reason() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.ckpt");
        let t = OutTensor {
            info: crate::tensor::TensorInfo::new("w", DType::F8E4M3, vec![2]),
            tied_to: None,
        };
        let msg = match writer(&p, &[t], &WriteOptions::default()) {
            Ok(_) => panic!("FP8 written to a ckpt"),
            Err(e) => e.to_string(),
        };
        assert!(msg.contains("'w'") || msg.contains("w:"), "{msg}");
        assert!(
            msg.contains("F8_E4M3") && msg.contains("safetensors"),
            "{msg}"
        );
        assert!(!p.exists());
    }
}

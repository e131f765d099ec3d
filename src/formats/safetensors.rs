//! safetensors: u64 header length, JSON header, raw data (spec §3.2).
//!
//! The reader validates everything the reference implementation does (header size, JSON shape, dtypes, offsets
//! covering the data buffer exactly, no duplicate keys) over a memory map; each tensor is one range of the map.
//! The writer reproduces the `safetensors` crate (and Python package) layout byte for byte: tensors sorted by
//! dtype descending (the crate's `Dtype` order, i.e. alignment first) then name, header keys in data order,
//! `__metadata__` first, header padded with spaces to a multiple of 8.

use std::cell::RefCell;
use std::collections::HashSet;
use std::fmt;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, Visitor};
use serde::Deserialize;

use super::{AtomicFile, FormatError, OutTensor, Result, TensorWriter, WriteOptions};
use crate::tensor::{numel, Backing, Checkpoint, DType, DataRef, TensorEntry, TensorInfo};

/// `Checkpoint.format` of a file read here.
pub const FORMAT: &str = "safetensors";

/// Largest header the reference implementation accepts.
pub const MAX_HEADER: u64 = 100_000_000;

/// Our dtypes and their place in the `safetensors` crate's `Dtype` order (writers sort by it, descending).
const DTYPES: &[(DType, safetensors::Dtype)] = &[
    (DType::Bool, safetensors::Dtype::BOOL),
    (DType::U8, safetensors::Dtype::U8),
    (DType::I8, safetensors::Dtype::I8),
    (DType::I16, safetensors::Dtype::I16),
    (DType::U16, safetensors::Dtype::U16),
    (DType::F16, safetensors::Dtype::F16),
    (DType::BF16, safetensors::Dtype::BF16),
    (DType::I32, safetensors::Dtype::I32),
    (DType::U32, safetensors::Dtype::U32),
    (DType::F32, safetensors::Dtype::F32),
    (DType::F64, safetensors::Dtype::F64),
    (DType::I64, safetensors::Dtype::I64),
    (DType::U64, safetensors::Dtype::U64),
    (DType::F8E4M3, safetensors::Dtype::F8_E4M3),
    (DType::F8E5M2, safetensors::Dtype::F8_E5M2),
    (DType::F8E8M0, safetensors::Dtype::F8_E8M0),
];

/// safetensors dtypes we cannot represent.
const UNSUPPORTED: &[&str] = &[
    "F4",
    "F6_E2M3",
    "F6_E3M2",
    "F8_E4M3FNUZ",
    "F8_E5M2FNUZ",
    "C64",
];

fn st_dtype(d: DType) -> safetensors::Dtype {
    DTYPES
        .iter()
        .find(|(ours, _)| *ours == d)
        .map(|(_, st)| *st)
        .unwrap_or(safetensors::Dtype::U8)
}

/// Whether the first bytes look like a safetensors file (u64 LE header length, then `{` after optional spaces).
pub fn looks_like(head: &[u8]) -> bool {
    head.len() >= 9 && head[8..].iter().find(|&&b| b != b' ') == Some(&b'{')
}

// ------------------------------------------------------------------------------------------------------------
// JSON helpers
// ------------------------------------------------------------------------------------------------------------

/// A JSON object read in document order that refuses duplicate keys (serde_json's maps keep the last silently).
#[derive(Debug)]
pub(crate) struct UniqueMap<V>(pub Vec<(String, V)>);

impl<'de, V: Deserialize<'de>> Deserialize<'de> for UniqueMap<V> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Vis<V>(PhantomData<V>);
        impl<'de, V: Deserialize<'de>> Visitor<'de> for Vis<V> {
            type Value = UniqueMap<V>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut a: A,
            ) -> std::result::Result<Self::Value, A::Error> {
                let mut seen = HashSet::new();
                let mut out = Vec::new();
                while let Some(k) = a.next_key::<String>()? {
                    if !seen.insert(k.clone()) {
                        return Err(de::Error::custom(format!("duplicate key '{k}'")));
                    }
                    out.push((k, a.next_value::<V>()?));
                }
                Ok(UniqueMap(out))
            }
        }
        d.deserialize_map(Vis(PhantomData))
    }
}

/// One tensor's header entry as written in the JSON (unknown fields ignored, duplicate fields refused).
#[derive(Debug, Deserialize)]
struct RawInfo {
    dtype: String,
    shape: Vec<usize>,
    data_offsets: (u64, u64),
}

/// The parsed header: metadata and tensors in JSON order.
#[derive(Default)]
struct Header {
    metadata: Vec<(String, String)>,
    tensors: Vec<(String, RawInfo)>,
}

/// Parses the header, remembering the last key seen so errors can name the tensor.
struct HeaderSeed<'a>(&'a RefCell<Option<String>>);

impl<'de> DeserializeSeed<'de> for HeaderSeed<'_> {
    type Value = Header;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<Header, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for HeaderSeed<'_> {
    type Value = Header;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object of tensors")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> std::result::Result<Header, A::Error> {
        let mut seen = HashSet::new();
        let mut h = Header::default();
        while let Some(k) = a.next_key::<String>()? {
            *self.0.borrow_mut() = Some(k.clone());
            if !seen.insert(k.clone()) {
                return Err(de::Error::custom(format!("duplicate key '{k}'")));
            }
            if k == "__metadata__" {
                h.metadata = a.next_value::<UniqueMap<String>>()?.0;
            } else {
                h.tensors.push((k, a.next_value::<RawInfo>()?));
            }
        }
        Ok(h)
    }
}

// ------------------------------------------------------------------------------------------------------------
// Reading
// ------------------------------------------------------------------------------------------------------------

/// Map a safetensors dtype string to ours, or explain why not.
fn parse_dtype(s: &str) -> std::result::Result<DType, String> {
    if let Some(d) = DType::from_name(s) {
        return Ok(d);
    }
    if UNSUPPORTED.contains(&s) {
        return Err(format!(
            "dtype {s} is not supported (no MindSpore/torch-legacy equivalent; supported: F64 F32 F16 BF16 I64 I32 \
             I16 I8 U8 U16 U32 U64 BOOL F8_E4M3 F8_E5M2 F8_E8M0)"
        ));
    }
    Err(format!("unknown dtype '{s}'"))
}

/// Read a safetensors file. Tensors are listed in data-offset order; `__metadata__` goes to `metadata`.
pub fn read(path: &Path) -> Result<Checkpoint> {
    let map = super::map_file(path)?;
    let buf: &[u8] = &map[..];
    let inv = |m: String| FormatError::invalid(path, m);
    if buf.len() < 8 {
        return Err(inv(format!(
            "file of {} bytes is too short for a safetensors header length",
            buf.len()
        )));
    }
    let mut len8 = [0u8; 8];
    len8.copy_from_slice(&buf[..8]);
    let n = u64::from_le_bytes(len8);
    if n > MAX_HEADER {
        return Err(inv(format!(
            "header length {n} exceeds the safetensors limit of {MAX_HEADER} bytes"
        )));
    }
    let avail = buf.len() - 8;
    let n = match usize::try_from(n) {
        Ok(n) if n <= avail => n,
        _ => {
            return Err(inv(format!(
                "header length {n} runs past the end of the file ({avail} bytes after the length)"
            )))
        }
    };
    let text = std::str::from_utf8(&buf[8..8 + n])
        .map_err(|e| inv(format!("header is not valid UTF-8: {e}")))?;
    if !text.trim_start().starts_with('{') {
        return Err(inv("header does not start with '{'".to_string()));
    }
    let last = RefCell::new(None);
    let mut de = serde_json::Deserializer::from_str(text);
    let header = HeaderSeed(&last)
        .deserialize(&mut de)
        .and_then(|h| de.end().map(|_| h))
        .map_err(|e| {
            let at = match last.borrow().as_ref() {
                Some(k) => format!(" (at key '{k}')"),
                None => String::new(),
            };
            inv(format!("invalid header JSON{at}: {e}"))
        })?;

    let data_start = 8 + n;
    let data_len = (buf.len() - data_start) as u64;
    // Validate every entry, then check the offsets tile the buffer.
    let mut entries = Vec::with_capacity(header.tensors.len());
    for (name, raw) in header.tensors {
        let terr = |m: String| FormatError::tensor(path, &name, m);
        let dtype = parse_dtype(&raw.dtype).map_err(terr)?;
        let (begin, end) = raw.data_offsets;
        if end < begin {
            return Err(terr(format!(
                "data_offsets [{begin}, {end}] end before begin"
            )));
        }
        let nbytes = numel(&raw.shape)
            .and_then(|k| k.checked_mul(dtype.size()))
            .and_then(|b| u64::try_from(b).ok());
        if nbytes != Some(end - begin) {
            return Err(terr(format!(
                "data_offsets [{begin}, {end}] hold {} bytes, shape {:?} of {dtype} needs {}",
                end - begin,
                raw.shape,
                nbytes.map_or("an overflowing size".to_string(), |b| b.to_string())
            )));
        }
        entries.push((name, dtype, raw.shape, begin, end));
    }
    let mut idx: Vec<usize> = (0..entries.len()).collect();
    idx.sort_by_key(|&i| (entries[i].3, entries[i].4));
    let mut expect = 0u64;
    for &i in &idx {
        let (name, _, _, begin, end) = &entries[i];
        if *begin != expect {
            let what = if *begin > expect {
                "a hole"
            } else {
                "an overlap"
            };
            return Err(FormatError::tensor(
                path,
                name,
                format!(
                    "data_offsets [{begin}, {end}] leave {what} in the data buffer (previous tensor ends at {expect})"
                ),
            ));
        }
        expect = *end;
    }
    if expect != data_len {
        return Err(inv(format!(
            "tensors cover {expect} bytes of a {data_len}-byte data buffer ({})",
            if expect < data_len {
                "trailing bytes after the last tensor"
            } else {
                "the file is truncated"
            }
        )));
    }
    let backing = Backing::Mmap(map.clone());
    let mut slots: Vec<Option<_>> = entries.into_iter().map(Some).collect();
    let mut tensors = Vec::with_capacity(slots.len());
    for i in idx {
        let Some((name, dtype, shape, begin, end)) = slots[i].take() else {
            continue;
        };
        // In bounds: the offsets tile [0, data_len) exactly.
        let range = data_start + begin as usize..data_start + end as usize;
        tensors.push(TensorEntry {
            info: TensorInfo::new(name, dtype, shape),
            data: DataRef::Contiguous {
                backing: backing.clone(),
                range,
            },
            tied_to: None,
        });
    }
    Ok(Checkpoint {
        format: FORMAT.to_string(),
        tensors,
        others: Vec::new(),
        files: vec![path.to_path_buf()],
        metadata: header.metadata,
        notes: Vec::new(),
    })
}

// ------------------------------------------------------------------------------------------------------------
// Writing
// ------------------------------------------------------------------------------------------------------------

/// The order the safetensors writers lay tensors out: dtype descending in the crate's `Dtype` order (which puts
/// bigger elements first), then name.
pub fn layout_order(tensors: &[OutTensor]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..tensors.len()).collect();
    order.sort_by(|&a, &b| {
        let (ta, tb) = (&tensors[a].info, &tensors[b].info);
        st_dtype(tb.dtype)
            .cmp(&st_dtype(ta.dtype))
            .then_with(|| ta.name.cmp(&tb.name))
    });
    order
}

fn json_str(s: &str) -> String {
    // Serialising a str cannot fail.
    serde_json::to_string(s).unwrap_or_default()
}

/// Build the padded header for `order`.
fn build_header(
    path: &Path,
    tensors: &[OutTensor],
    order: &[usize],
    metadata: &[(String, String)],
) -> Result<Vec<u8>> {
    let mut h = String::from("{");
    if !metadata.is_empty() {
        let mut keys = HashSet::new();
        h.push_str("\"__metadata__\":{");
        for (i, (k, v)) in metadata.iter().enumerate() {
            if !keys.insert(k.as_str()) {
                return Err(FormatError::invalid(
                    path,
                    format!("metadata key '{k}' given twice"),
                ));
            }
            if i > 0 {
                h.push(',');
            }
            h.push_str(&json_str(k));
            h.push(':');
            h.push_str(&json_str(v));
        }
        h.push('}');
    }
    let mut offset = 0u64;
    for (i, &t) in order.iter().enumerate() {
        let info = &tensors[t].info;
        let nbytes = numel(&info.shape)
            .and_then(|n| n.checked_mul(info.dtype.size()))
            .and_then(|b| u64::try_from(b).ok())
            .ok_or_else(|| FormatError::tensor(path, &info.name, "size overflows"))?;
        let end = offset
            .checked_add(nbytes)
            .ok_or_else(|| FormatError::tensor(path, &info.name, "total size overflows"))?;
        if i > 0 || !metadata.is_empty() {
            h.push(',');
        }
        let shape: Vec<String> = info.shape.iter().map(|d| d.to_string()).collect();
        h.push_str(&format!(
            "{}:{{\"dtype\":\"{}\",\"shape\":[{}],\"data_offsets\":[{},{}]}}",
            json_str(&info.name),
            info.dtype.name(),
            shape.join(","),
            offset,
            end
        ));
        offset = end;
    }
    h.push('}');
    let mut bytes = h.into_bytes();
    let padded = bytes.len().next_multiple_of(8);
    bytes.resize(padded, b' ');
    if bytes.len() as u64 > MAX_HEADER {
        return Err(FormatError::invalid(
            path,
            format!(
                "header of {} bytes exceeds the safetensors limit of {MAX_HEADER}",
                bytes.len()
            ),
        ));
    }
    Ok(bytes)
}

/// Streaming safetensors writer.
struct StWriter {
    file: Option<AtomicFile>,
    path: PathBuf,
    tensors: Vec<OutTensor>,
    order: Vec<usize>,
    pos: usize,
}

/// Create a safetensors writer at `path`. `order()` is the crate's layout order (see [`layout_order`]); header keys
/// follow it, `opts.metadata` becomes `__metadata__` (omitted when empty). Tied copies are written in full.
pub fn writer(
    path: &Path,
    tensors: &[OutTensor],
    opts: &WriteOptions,
) -> Result<Box<dyn TensorWriter>> {
    let mut names = HashSet::new();
    for t in tensors {
        let name = t.info.name.as_str();
        if name == "__metadata__" {
            return Err(FormatError::tensor(
                path,
                name,
                "a tensor cannot be named __metadata__ in safetensors",
            ));
        }
        if !names.insert(name) {
            return Err(FormatError::tensor(path, name, "declared twice"));
        }
    }
    let order = layout_order(tensors);
    let header = build_header(path, tensors, &order, &opts.metadata)?;
    let mut file = AtomicFile::create(path)?;
    file.put(&(header.len() as u64).to_le_bytes())?;
    file.put(&header)?;
    Ok(Box::new(StWriter {
        file: Some(file),
        path: path.to_path_buf(),
        tensors: tensors.to_vec(),
        order,
        pos: 0,
    }))
}

impl TensorWriter for StWriter {
    fn order(&self) -> Vec<usize> {
        self.order.clone()
    }

    fn write(&mut self, index: usize, data: &[u8]) -> Result<()> {
        match self.order.get(self.pos) {
            Some(&want) if want == index => {}
            want => {
                return Err(FormatError::invalid(
                    &self.path,
                    format!("tensor #{index} written out of order (expected {want:?})"),
                ))
            }
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
        let file = self
            .file
            .as_mut()
            .ok_or_else(|| FormatError::invalid(&self.path, "writer already finished"))?;
        file.put(data)?;
        self.pos += 1;
        Ok(())
    }

    fn finish(mut self: Box<Self>) -> Result<Vec<PathBuf>> {
        if self.pos != self.order.len() {
            return Err(FormatError::invalid(
                &self.path,
                format!(
                    "finished after {} of {} tensors",
                    self.pos,
                    self.order.len()
                ),
            ));
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
    fn dtype_names_agree_with_the_crate() {
        for (ours, st) in DTYPES {
            assert_eq!(ours.name(), st.to_string());
            assert_eq!(ours.size() * 8, st.bitsize());
        }
        assert_eq!(DTYPES.len(), DType::ALL.len());
    }

    #[test]
    fn layout_is_dtype_descending_then_name() {
        let t = |n: &str, d| OutTensor {
            info: TensorInfo::new(n, d, vec![1]),
            tied_to: None,
        };
        let ts = vec![
            t("b", DType::F16),
            t("a", DType::Bool),
            t("c", DType::I64),
            t("a2", DType::BF16),
            t("z", DType::F32),
            t("y", DType::F32),
        ];
        let names: Vec<_> = layout_order(&ts)
            .into_iter()
            .map(|i| ts[i].info.name.as_str())
            .collect();
        assert_eq!(names, ["c", "y", "z", "a2", "b", "a"]);
    }
}

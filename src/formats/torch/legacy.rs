//! Reader for the legacy (pre-1.6) `torch.save` format: five pickles back to back (magic, protocol version,
//! sys_info, the object, the sorted storage keys), then per key an i64 element count and the raw bytes.

use std::collections::HashMap;
use std::ops::Range;
use std::path::Path;
use std::rc::Rc;

use super::pickle::{render_scalar, unpickle, Node, StorageKind, StorageRef, Unpickled, Value};
use super::state::{self, check_record_len};
use super::FORMAT_LEGACY;
use crate::formats::{map_file, FormatError, ReadOptions, Result};
use crate::tensor::{Backing, Checkpoint};

/// The magic number 0x1950A86A20F9469CFC6C as little-endian bytes.
const MAGIC: [u8; 10] = [0x6C, 0xFC, 0x9C, 0x46, 0xF9, 0x20, 0x6A, 0xA8, 0x50, 0x19];
const PROTOCOL_VERSION: i64 = 1001;

/// Read a legacy `torch.save` file.
pub(crate) fn read(path: &Path, opts: &ReadOptions) -> Result<Checkpoint> {
    let map = map_file(path)?;
    let bytes: &[u8] = &map[..];
    let run = |start: usize, what: &str| -> Result<Unpickled> {
        unpickle(bytes, start)
            .map_err(|e| FormatError::invalid(path, format!("legacy {what} pickle: {e}")))
    };
    let magic = run(0, "magic")?;
    match &magic.root {
        Value::BigInt(b) if b[..] == MAGIC => {}
        other => {
            return Err(FormatError::invalid(
                path,
                format!(
                    "legacy torch magic number is {}, expected 0x1950a86a20f9469cfc6c",
                    render_scalar(other)
                ),
            ))
        }
    }
    let proto = run(magic.end, "protocol")?;
    if proto.root != Value::Int(PROTOCOL_VERSION) {
        return Err(FormatError::invalid(
            path,
            format!(
                "legacy protocol version is {}, expected {PROTOCOL_VERSION}",
                render_scalar(&proto.root)
            ),
        ));
    }
    let sys = run(proto.end, "sys_info")?;
    let d = sys
        .dict(&sys.root)
        .ok_or_else(|| FormatError::invalid(path, "legacy sys_info is not a dict"))?;
    for (k, v) in &d.items {
        if *k == Value::Str("little_endian".into()) && *v == Value::Bool(false) {
            return Err(FormatError::invalid(
                path,
                "saved on a big-endian machine (sys_info little_endian False): not supported",
            ));
        }
    }
    let obj = unpickle(bytes, sys.end).map_err(|e| {
        FormatError::invalid(
            path,
            format!(
                "legacy object pickle: {}",
                state::explain_pickle_error(&e, &bytes[sys.end..])
            ),
        )
    })?;
    let keys = run(obj.end, "storage key list")?;
    let key_list: Vec<Rc<str>> = keys
        .seq(&keys.root)
        .ok_or_else(|| FormatError::invalid(path, "legacy storage key list is not a list"))?
        .iter()
        .map(|k| match k {
            Value::Str(s) => Ok(s.clone()),
            Value::Int(i) => Ok(i.to_string().into()),
            other => Err(FormatError::invalid(
                path,
                format!(
                    "legacy storage key {} is not a string",
                    render_scalar(other)
                ),
            )),
        })
        .collect::<Result<_>>()?;

    // Every storage named in the object pickle, by key (for its element size).
    let mut storages: HashMap<Rc<str>, (StorageKind, u64)> = HashMap::new();
    for n in &obj.nodes {
        if let Node::Storage(s) = n {
            storages.entry(s.key.clone()).or_insert((s.kind, s.numel));
        }
    }
    // Walk the raw storages that follow the pickles.
    let mut pos = keys.end;
    let mut ranges: HashMap<Rc<str>, Range<usize>> = HashMap::new();
    for key in &key_list {
        let &(kind, _) = storages.get(key).ok_or_else(|| {
            FormatError::invalid(
                path,
                format!("legacy storage '{key}' is listed but no tensor names it"),
            )
        })?;
        let unit = kind.unit_size().ok_or_else(|| {
            FormatError::invalid(
                path,
                format!("legacy storage '{key}' has an unsupported type ({kind:?})"),
            )
        })?;
        let head = pos
            .checked_add(8)
            .filter(|&e| e <= bytes.len())
            .ok_or_else(|| cut_short(path, key, pos, 8, bytes.len()))?;
        let mut c = [0u8; 8];
        c.copy_from_slice(&bytes[pos..head]);
        let count = i64::from_le_bytes(c);
        let n = u64::try_from(count)
            .ok()
            .and_then(|c| c.checked_mul(unit as u64))
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| {
                FormatError::invalid(
                    path,
                    format!("legacy storage '{key}' claims {count} elements"),
                )
            })?;
        let end = head
            .checked_add(n)
            .filter(|&e| e <= bytes.len())
            .ok_or_else(|| cut_short(path, key, head, n, bytes.len()))?;
        ranges.insert(key.clone(), head..end);
        pos = end;
    }
    let mut resolve = |st: &StorageRef| -> std::result::Result<Range<usize>, String> {
        let r = ranges
            .get(&st.key)
            .cloned()
            .ok_or_else(|| format!("storage '{}' is not in the file's storage list", st.key))?;
        check_record_len(st, r.len())?;
        Ok(r)
    };
    state::build(
        path,
        FORMAT_LEGACY,
        Backing::Mmap(map.clone()),
        &obj,
        &mut resolve,
        opts,
    )
}

fn cut_short(path: &Path, key: &str, at: usize, need: usize, len: usize) -> FormatError {
    FormatError::invalid(
        path,
        format!("file cut short: storage '{key}' needs {need} bytes at offset {at}, the file has {len} bytes"),
    )
}

//! Format detection: a reader gets a file only when its first bytes are that format's with confidence; otherwise
//! one line says what was tried and why nothing fits.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use super::{safetensors, torch, FormatError, InputFormat, Result};

/// Bytes read for detection: enough for a ckpt record's tag and a tar header.
const HEAD: usize = 4096;

/// Detect a single file's format from its first bytes.
pub fn detect(path: &Path) -> Result<InputFormat> {
    let mut f = File::open(path).map_err(|e| FormatError::io(path, e))?;
    let len = f.metadata().map_err(|e| FormatError::io(path, e))?.len();
    let mut head = Vec::with_capacity(HEAD);
    (&mut f)
        .take(HEAD as u64)
        .read_to_end(&mut head)
        .map_err(|e| FormatError::io(path, e))?;
    let head = &head[..];
    if head.is_empty() {
        return Err(FormatError::invalid(path, "empty file: not a checkpoint"));
    }
    if head.starts_with(b"PK\x03\x04") || head.starts_with(b"PK\x05\x06") {
        return Ok(InputFormat::TorchZip);
    }
    if head.starts_with(&torch::LEGACY_MAGIC_PREFIX) {
        return Ok(InputFormat::TorchLegacy);
    }
    if head.len() >= 262 && &head[257..262] == b"ustar" {
        return Err(FormatError::invalid(
            path,
            "a tar archive: torch < 0.1.10 saved checkpoints as tar files, which torch.load(weights_only=True) \
             refuses too and which are not supported; load it with an old torch and torch.save it again",
        ));
    }
    let st = safetensors_reason(head);
    if st.is_none() {
        return Ok(InputFormat::Safetensors);
    }
    let ck = ckpt_reason(head);
    if ck.is_none() {
        return Ok(InputFormat::Ckpt);
    }
    if head[0] == 0x80 && head.len() >= 2 && (2..=5).contains(&head[1]) {
        return Err(FormatError::invalid(
            path,
            "a bare pickle without torch's zip container or legacy magic: not a torch checkpoint",
        ));
    }
    if head[0] != 0x0A && path.extension().and_then(|e| e.to_str()) == Some("ckpt") {
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
        format!(
            "not a checkpoint ({len}-byte file): torch zip: no 'PK' signature; torch legacy: no pickle magic; \
             safetensors: {}; MindSpore ckpt: {}",
            st.unwrap_or_default(),
            ck.unwrap_or_default()
        ),
    ))
}

/// Why `head` is not a safetensors file, or `None` if it is one.
fn safetensors_reason(head: &[u8]) -> Option<String> {
    if head.len() < 9 {
        return Some("too short for an 8-byte header length and a header".into());
    }
    if !safetensors::looks_like(head) {
        return Some("the header after the 8-byte length does not start with '{'".into());
    }
    let n = u64::from_le_bytes(head[..8].try_into().unwrap_or_default());
    // A header longer than the file is left to the reader, which says the file is cut short.
    if n > safetensors::MAX_HEADER {
        return Some(format!(
            "header length {n} is beyond the format's limit of {}",
            safetensors::MAX_HEADER
        ));
    }
    None
}

/// A protobuf varint at `b[*p..]`.
fn varint(b: &[u8], p: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for i in 0..10 {
        let x = *b.get(*p)?;
        *p += 1;
        v |= u64::from(x & 0x7F) << (7 * i);
        if x & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// Why `head` is not the start of a MindSpore ckpt, or `None` when its first record's header is well formed:
/// `0A len` (a `Checkpoint.value`), then `0A len tag` (a UTF-8 name) and `12`/`1A` (a tensor or map tensor).
fn ckpt_reason(head: &[u8]) -> Option<String> {
    if head[0] != 0x0A {
        return Some(format!("first byte 0x{:02X}, expected 0x0A", head[0]));
    }
    let mut p = 1;
    let Some(rec) = varint(head, &mut p) else {
        return Some("no record length after the first byte".into());
    };
    // (A record longer than the file is left to the reader, which says where the file is cut short.)
    if rec < 4 {
        return Some(format!(
            "first record length {rec} is too short for a parameter"
        ));
    }
    if head.get(p) != Some(&0x0A) {
        return Some("first record does not start with a parameter name".into());
    }
    p += 1;
    let Some(tag) = varint(head, &mut p) else {
        return Some("first parameter name has no length".into());
    };
    let end = usize::try_from(tag).ok().and_then(|t| p.checked_add(t));
    match end.and_then(|e| head.get(p..e).map(|t| (e, t))) {
        Some((e, t)) => {
            if std::str::from_utf8(t).is_err() {
                return Some("first parameter name is not UTF-8".into());
            }
            if !matches!(head.get(e), Some(0x12) | Some(0x1A)) {
                return Some("first parameter name is not followed by a tensor".into());
            }
            None
        }
        // A name longer than the head: plausible only if it fits the record.
        None if tag < rec => None,
        None => Some("first parameter name runs past its record".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ckpt_headers() {
        // a real first record: 0A 2E | 0A 03 "f32" | 12 27 ...
        let mut r = vec![0x0A, 0x2E, 0x0A, 0x03, b'f', b'3', b'2', 0x12, 0x27];
        r.resize(0x30, 0);
        assert_eq!(ckpt_reason(&r), None);
        assert!(ckpt_reason(b"\n").is_some());
        assert!(ckpt_reason(b"\n\n").is_some());
        assert!(ckpt_reason(b"\nhello world\n").is_some());
    }
}

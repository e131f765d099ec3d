//! Reader for torch's zip container. The central directory is found the way torch's own reader (miniz) finds it:
//! the end-of-central-directory record, then — when a zip64 locator sits just before it — the zip64 record it
//! points to, whose directory offset is taken as written (never guessed from the record sizes). Every record is
//! sliced straight out of the mmap (entries must be Stored; CRCs of storages are not checked, torch may write 0).

use std::collections::HashMap;
use std::ops::Range;
use std::path::Path;

use super::pickle::unpickle;
use super::state::{self, check_record_len};
use super::FORMAT_ZIP;
use crate::formats::{map_file, FormatError, ReadOptions, Result};
use crate::tensor::{Backing, Checkpoint};

const SIG_LOCAL: u32 = 0x0403_4b50;
const SIG_CENTRAL: u32 = 0x0201_4b50;
const SIG_EOCD: u32 = 0x0605_4b50;
const SIG_ZIP64_EOCD: u32 = 0x0606_4b50;
const SIG_ZIP64_LOCATOR: u32 = 0x0706_4b50;
const EOCD_LEN: usize = 22;
const LOCATOR_LEN: usize = 20;
const ZIP64_EOCD_LEN: usize = 56;
const CENTRAL_LEN: usize = 46;
const LOCAL_LEN: usize = 30;
/// Longest zip comment, so the EOCD is within this many bytes (plus its own length) of the end.
const MAX_COMMENT: usize = 0xFFFF;

/// One central directory entry.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub name: String,
    flags: u16,
    method: u16,
    pub crc: u32,
    compressed: u64,
    size: u64,
    local_offset: u64,
}

/// A zip archive's directory over its bytes.
pub(crate) struct Archive<'a> {
    bytes: &'a [u8],
    pub entries: Vec<Entry>,
    /// Entry index by name (the first entry of a repeated name).
    by_name: HashMap<String, usize>,
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(
        b.get(at..at.checked_add(2)?)?.try_into().ok()?,
    ))
}
fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        b.get(at..at.checked_add(4)?)?.try_into().ok()?,
    ))
}
fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(
        b.get(at..at.checked_add(8)?)?.try_into().ok()?,
    ))
}

impl<'a> Archive<'a> {
    /// Parse the directory of the zip archive `bytes`.
    pub(crate) fn parse(bytes: &'a [u8]) -> std::result::Result<Archive<'a>, String> {
        let len = bytes.len();
        if len < EOCD_LEN {
            return Err(format!(
                "{len} bytes: too short for a zip archive (no end-of-central-directory record)"
            ));
        }
        // The EOCD: the last signature within the comment window whose comment length reaches the end exactly
        // (miniz scans backwards for the signature; requiring the length to fit avoids a stray match in a comment).
        let lowest = len.saturating_sub(EOCD_LEN + MAX_COMMENT);
        let eocd = (lowest..=len - EOCD_LEN)
            .rev()
            .find(|&p| {
                u32_at(bytes, p) == Some(SIG_EOCD)
                    && u16_at(bytes, p + 20).map(|c| p + EOCD_LEN + c as usize) == Some(len)
            })
            .or_else(|| {
                (lowest..=len - EOCD_LEN)
                    .rev()
                    .find(|&p| u32_at(bytes, p) == Some(SIG_EOCD))
            })
            .ok_or("no end-of-central-directory record: not a zip archive, or cut short")?;
        let disk = u16_at(bytes, eocd + 4).unwrap_or(0);
        let cd_disk = u16_at(bytes, eocd + 6).unwrap_or(0);
        let mut on_disk = u64::from(u16_at(bytes, eocd + 8).unwrap_or(0));
        let mut total = u64::from(u16_at(bytes, eocd + 10).unwrap_or(0));
        let mut cd_size = u64::from(u32_at(bytes, eocd + 12).unwrap_or(0));
        let mut cd_offset = u64::from(u32_at(bytes, eocd + 16).unwrap_or(0));
        let mut multi_disk = disk != 0 || cd_disk != 0;
        // zip64: a locator right before the EOCD points at the zip64 record, whose values replace the EOCD's.
        let locator = eocd
            .checked_sub(LOCATOR_LEN)
            .filter(|&l| u32_at(bytes, l) == Some(SIG_ZIP64_LOCATOR));
        if let Some(l) = locator {
            let at = u64_at(bytes, l + 8).unwrap_or(u64::MAX);
            let rec = usize::try_from(at)
                .ok()
                .filter(|&r| {
                    r.checked_add(ZIP64_EOCD_LEN).is_some_and(|e| e <= l)
                        && u32_at(bytes, r) == Some(SIG_ZIP64_EOCD)
                })
                .ok_or_else(|| {
                    format!("zip64 locator at byte {l} points to byte {at}, where there is no zip64 end record")
                })?;
            multi_disk |= u32_at(bytes, l + 4) != Some(0) || u32_at(bytes, l + 16) != Some(1);
            multi_disk |= u32_at(bytes, rec + 16) != Some(0) || u32_at(bytes, rec + 20) != Some(0);
            on_disk = u64_at(bytes, rec + 24).unwrap_or(0);
            total = u64_at(bytes, rec + 32).unwrap_or(0);
            cd_size = u64_at(bytes, rec + 40).unwrap_or(0);
            cd_offset = u64_at(bytes, rec + 48).unwrap_or(0);
        } else if cd_offset == 0xFFFF_FFFF || cd_size == 0xFFFF_FFFF || total == 0xFFFF {
            return Err(
                "end-of-central-directory record asks for zip64 values but there is no zip64 locator".into(),
            );
        }
        if multi_disk || on_disk != total {
            return Err("multi-disk (spanned) zip archives are not supported".into());
        }
        let cd_end = cd_offset
            .checked_add(cd_size)
            .filter(|&e| e <= eocd as u64)
            .ok_or_else(|| {
                format!(
                    "central directory ({cd_size} bytes at byte {cd_offset}) runs past its end record at byte {eocd}"
                )
            })?;
        // Each entry takes at least 46 bytes: a count beyond that is a lie (and must not size an allocation).
        if total > cd_size / CENTRAL_LEN as u64 {
            return Err(format!(
                "end record claims {total} entries in a {cd_size}-byte central directory"
            ));
        }
        let (mut p, cd_end) = (cd_offset as usize, cd_end as usize);
        let mut entries = Vec::with_capacity(total as usize);
        for i in 0..total {
            let head = bytes
                .get(p..)
                .filter(|_| p + CENTRAL_LEN <= cd_end)
                .filter(|_| u32_at(bytes, p) == Some(SIG_CENTRAL))
                .ok_or_else(|| {
                    format!("central directory entry {i} at byte {p}: no directory header there")
                })?;
            let g16 = |o: usize| u16_at(head, o).unwrap_or(0);
            let g32 = |o: usize| u32_at(head, o).unwrap_or(0);
            let (n, m, k) = (g16(28) as usize, g16(30) as usize, g16(32) as usize);
            let next = p + CENTRAL_LEN + n + m + k;
            if next > cd_end {
                return Err(format!(
                    "central directory entry {i} at byte {p} runs past the directory's end"
                ));
            }
            let name_raw = &bytes[p + CENTRAL_LEN..p + CENTRAL_LEN + n];
            let extra = &bytes[p + CENTRAL_LEN + n..p + CENTRAL_LEN + n + m];
            let mut e = Entry {
                name: String::from_utf8_lossy(name_raw).into_owned(),
                flags: g16(8),
                method: g16(10),
                crc: g32(16),
                compressed: u64::from(g32(20)),
                size: u64::from(g32(24)),
                local_offset: u64::from(g32(42)),
            };
            zip64_extra(extra, &mut e).map_err(|m| format!("zip entry '{}': {m}", e.name))?;
            entries.push(e);
            p = next;
        }
        let mut by_name = HashMap::with_capacity(entries.len());
        for (i, e) in entries.iter().enumerate() {
            by_name.entry(e.name.clone()).or_insert(i);
        }
        Ok(Archive {
            bytes,
            entries,
            by_name,
        })
    }

    pub(crate) fn index_for_name(&self, name: &str) -> Option<usize> {
        self.by_name.get(name).copied()
    }

    /// The byte range of entry `i`'s data in the file. Only Stored, unencrypted entries qualify.
    pub(crate) fn entry_range(&self, i: usize) -> std::result::Result<Range<usize>, String> {
        let e = self
            .entries
            .get(i)
            .ok_or_else(|| format!("zip entry {i} does not exist"))?;
        let name = &e.name;
        if e.flags & 1 != 0 {
            return Err(format!("zip entry '{name}' is encrypted"));
        }
        if e.method != 0 {
            let known = METHODS
                .iter()
                .find(|(n, _)| *n == e.method)
                .map_or("unknown", |x| x.1);
            return Err(format!(
                "zip entry '{name}' is compressed (method {}, {known}); torch checkpoints store entries uncompressed (re-save with torch.save)",
                e.method
            ));
        }
        if e.compressed != e.size {
            return Err(format!(
                "zip entry '{name}' is Stored but its sizes differ ({} vs {})",
                e.compressed, e.size
            ));
        }
        let file_len = self.bytes.len();
        let lh = usize::try_from(e.local_offset)
            .ok()
            .filter(|&h| h.checked_add(LOCAL_LEN).is_some_and(|x| x <= file_len))
            .filter(|&h| u32_at(self.bytes, h) == Some(SIG_LOCAL))
            .ok_or_else(|| {
                format!(
                    "zip entry '{name}': no local header at byte {} of the {file_len}-byte file",
                    e.local_offset
                )
            })?;
        let n = u16_at(self.bytes, lh + 26).unwrap_or(0) as usize;
        let m = u16_at(self.bytes, lh + 28).unwrap_or(0) as usize;
        let start = (lh + LOCAL_LEN + n + m) as u64;
        let end = start
            .checked_add(e.size)
            .filter(|&x| x <= file_len as u64)
            .ok_or_else(|| {
                format!(
                    "zip entry '{name}' ({} bytes at offset {start}) runs past the end of the {file_len}-byte file",
                    e.size
                )
            })?;
        // Both fit in usize: they are at most the file length.
        Ok(start as usize..end as usize)
    }
}

/// Apply a zip64 extended-information extra field (ID 1): 8-byte values, in order, for each of uncompressed size,
/// compressed size and local header offset whose 32-bit field is 0xFFFFFFFF.
fn zip64_extra(extra: &[u8], e: &mut Entry) -> std::result::Result<(), String> {
    let mut q = 0;
    while q + 4 <= extra.len() {
        let id = u16_at(extra, q).unwrap_or(0);
        let sz = u16_at(extra, q + 2).unwrap_or(0) as usize;
        let body = extra
            .get(q + 4..q + 4 + sz)
            .ok_or("an extra field runs past the extra data")?;
        if id == 1 {
            let mut r = 0;
            let mut take = |field: &mut u64| -> std::result::Result<(), String> {
                if *field == 0xFFFF_FFFF {
                    *field = u64_at(body, r).ok_or("zip64 extra field too short")?;
                    r += 8;
                }
                Ok(())
            };
            take(&mut e.size)?;
            take(&mut e.compressed)?;
            take(&mut e.local_offset)?;
        }
        q += 4 + sz;
    }
    // A 0xFFFFFFFF with no zip64 extra stands as written (as in miniz); bounds checks catch a lie.
    Ok(())
}

/// Read a torch zip checkpoint.
pub(crate) fn read(path: &Path, opts: &ReadOptions) -> Result<Checkpoint> {
    let map = map_file(path)?;
    let bytes: &[u8] = &map[..];
    let archive = Archive::parse(bytes)
        .map_err(|e| FormatError::invalid(path, format!("not a readable zip archive: {e}")))?;
    let names: Vec<&str> = archive.entries.iter().map(|e| e.name.as_str()).collect();
    // The archive's root folder: whatever precedes the (first) `data.pkl`.
    let pkl = names
        .iter()
        .find(|n| {
            n.strip_suffix("data.pkl")
                .is_some_and(|p| p.is_empty() || p.ends_with('/'))
        })
        .map(|s| s.to_string())
        .ok_or_else(|| {
            FormatError::invalid(path, "zip archive has no data.pkl: not a torch checkpoint")
        })?;
    let prefix = &pkl[..pkl.len() - "data.pkl".len()];
    let torchscript = names.iter().any(|n| {
        *n == format!("{prefix}constants.pkl") || n.starts_with(&format!("{prefix}code/"))
    });
    let byteorder = format!("{prefix}byteorder");
    if let Some(i) = archive.index_for_name(&byteorder) {
        let r = archive
            .entry_range(i)
            .map_err(|m| FormatError::invalid(path, m))?;
        match bytes[r].trim_ascii() {
            b"little" => {}
            b"big" => {
                return Err(FormatError::invalid(
                    path,
                    "saved on a big-endian machine (byteorder 'big'): not supported",
                ))
            }
            other => {
                return Err(FormatError::invalid(
                    path,
                    format!(
                        "byteorder record is '{}', expected 'little'",
                        String::from_utf8_lossy(other)
                    ),
                ))
            }
        }
    }
    let pkl_index = archive
        .index_for_name(&pkl)
        .ok_or_else(|| FormatError::invalid(path, "data.pkl vanished from the directory"))?;
    let pr = archive
        .entry_range(pkl_index)
        .map_err(|m| FormatError::invalid(path, m))?;
    // The pickle is small: check its CRC, unless the writer zeroed every CRC (torch's compute_crc32=False).
    // Storage records are not hashed (that would read every byte of the checkpoint to list it).
    let want_crc = archive.entries[pkl_index].crc;
    if want_crc != 0 && crc32fast::hash(&bytes[pr.clone()]) != want_crc {
        return Err(FormatError::invalid(
            path,
            format!("{pkl}: CRC-32 mismatch (the file is corrupt)"),
        ));
    }
    let torchscript_msg = "a TorchScript module, not a state dict (a torch.jit.save archive): load it in Python with torch.jit.load and torch.save its state_dict()";
    let up = match unpickle(&bytes[pr.clone()], 0) {
        Ok(up) => up,
        Err(_) if torchscript => return Err(FormatError::invalid(path, torchscript_msg)),
        Err(e) => {
            return Err(FormatError::invalid(
                path,
                format!("{pkl}: {}", state::explain_pickle_error(&e, &bytes[pr])),
            ))
        }
    };
    let resolve = |st: &super::pickle::StorageRef| -> std::result::Result<Range<usize>, String> {
        let name = format!("{prefix}data/{}", st.key);
        let i = archive
            .index_for_name(&name)
            .ok_or_else(|| format!("storage record '{name}' is missing from the archive"))?;
        let r = archive.entry_range(i)?;
        check_record_len(st, r.len())?;
        Ok(r)
    };
    let mut resolve = resolve;
    match state::build(
        path,
        FORMAT_ZIP,
        Backing::Mmap(map.clone()),
        &up,
        &mut resolve,
        opts,
    ) {
        Err(_) if torchscript => Err(FormatError::invalid(path, torchscript_msg)),
        Ok(mut ck) if torchscript => {
            ck.notes.push(
                "a TorchScript archive (torch.jit.save) whose data.pkl holds a state dict: read that".into(),
            );
            Ok(ck)
        }
        r => r,
    }
}

/// Zip compression method numbers, for messages.
const METHODS: &[(u16, &str)] = &[
    (8, "Deflate"),
    (9, "Deflate64"),
    (12, "bzip2"),
    (14, "LZMA"),
    (93, "Zstandard"),
    (95, "XZ"),
    (99, "AES-encrypted"),
];

#[cfg(test)]
mod tests {
    use super::*;

    fn eocd(entries: u16, cd_size: u32, cd_offset: u32) -> Vec<u8> {
        let mut e = SIG_EOCD.to_le_bytes().to_vec();
        e.extend_from_slice(&[0; 4]);
        e.extend_from_slice(&entries.to_le_bytes());
        e.extend_from_slice(&entries.to_le_bytes());
        e.extend_from_slice(&cd_size.to_le_bytes());
        e.extend_from_slice(&cd_offset.to_le_bytes());
        e.extend_from_slice(&[0, 0]);
        e
    }

    fn err(b: &[u8]) -> String {
        match Archive::parse(b) {
            Ok(a) => panic!("parsed {} entries", a.entries.len()),
            Err(e) => e,
        }
    }

    #[test]
    fn broken_directories_are_refused_without_allocating() {
        assert!(err(&[0; 10]).contains("too short"));
        assert!(err(&[0; 100]).contains("no end-of-central-directory"));
        assert!(err(&eocd(60000, 0, 0)).contains("claims 60000 entries"));
        assert!(err(&eocd(1, 46, 1000)).contains("runs past"));
        assert!(err(&eocd(1, 0xFFFF_FFFF, 0xFFFF_FFFF)).contains("zip64"));
        // a zip64 locator pointing at nothing
        let mut b = SIG_ZIP64_LOCATOR.to_le_bytes().to_vec();
        b.extend_from_slice(&0u32.to_le_bytes());
        b.extend_from_slice(&(1u64 << 40).to_le_bytes());
        b.extend_from_slice(&1u32.to_le_bytes());
        b.extend(eocd(0, 0, 0));
        assert!(err(&b).contains("no zip64 end record"));
        // an empty archive is fine (and then has no data.pkl)
        assert_eq!(Archive::parse(&eocd(0, 0, 0)).unwrap().entries.len(), 0);
    }
}

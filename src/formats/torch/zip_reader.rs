//! Reader for torch's zip container: the zip crate reads the central directory of the mmap, and every record is
//! sliced straight out of the mmap (entries must be Stored; CRCs are not checked, torch may write 0).

use std::io::Cursor;
use std::ops::Range;
use std::path::Path;

use zip::{CompressionMethod, ZipArchive};

use super::pickle::unpickle;
use super::state::{self, check_record_len};
use super::FORMAT_ZIP;
use crate::formats::{map_file, FormatError, Result};
use crate::tensor::{Backing, Checkpoint};

/// Read a torch zip checkpoint.
pub(crate) fn read(path: &Path) -> Result<Checkpoint> {
    let map = map_file(path)?;
    let bytes: &[u8] = &map[..];
    let mut archive = ZipArchive::new(Cursor::new(bytes))
        .map_err(|e| FormatError::invalid(path, format!("not a readable zip archive: {e}")))?;
    let names: Vec<String> = archive
        .file_names_raw()
        .map(|n| String::from_utf8_lossy(n).into_owned())
        .collect();
    // The archive's root folder: whatever precedes the (first) `data.pkl`.
    let pkl = names
        .iter()
        .find(|n| {
            n.strip_suffix("data.pkl")
                .is_some_and(|p| p.is_empty() || p.ends_with('/'))
        })
        .ok_or_else(|| {
            FormatError::invalid(path, "zip archive has no data.pkl: not a torch checkpoint")
        })?
        .clone();
    let prefix = &pkl[..pkl.len() - "data.pkl".len()];
    if names
        .iter()
        .any(|n| *n == format!("{prefix}constants.pkl") || n.starts_with(&format!("{prefix}code/")))
    {
        return Err(FormatError::invalid(
            path,
            "a TorchScript archive (torch.jit.save), not a torch.save checkpoint: load it in Python and torch.save its state_dict()",
        ));
    }
    let byteorder = format!("{prefix}byteorder");
    if let Some(i) = archive.index_for_name(&byteorder) {
        let r = entry_range(&mut archive, i, bytes).map_err(|m| FormatError::invalid(path, m))?;
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
    let pr =
        entry_range(&mut archive, pkl_index, bytes).map_err(|m| FormatError::invalid(path, m))?;
    // The pickle is small: check its CRC, unless the writer zeroed every CRC (torch's compute_crc32=False).
    // Storage records are not hashed (that would read every byte of the checkpoint to list it).
    let want_crc = archive
        .by_index_raw(pkl_index)
        .map(|f| f.crc32())
        .map_err(|e| FormatError::invalid(path, format!("{pkl}: {e}")))?;
    if want_crc != 0 && crc32fast::hash(&bytes[pr.clone()]) != want_crc {
        return Err(FormatError::invalid(
            path,
            format!("{pkl}: CRC-32 mismatch (the file is corrupt)"),
        ));
    }
    let up =
        unpickle(&bytes[pr], 0).map_err(|e| FormatError::invalid(path, format!("{pkl}: {e}")))?;
    let mut resolve =
        |st: &super::pickle::StorageRef| -> std::result::Result<Range<usize>, String> {
            let name = format!("{prefix}data/{}", st.key);
            let i = archive
                .index_for_name(&name)
                .ok_or_else(|| format!("storage record '{name}' is missing from the archive"))?;
            let r = entry_range(&mut archive, i, bytes)?;
            check_record_len(st, r.len())?;
            Ok(r)
        };
    state::build(
        path,
        FORMAT_ZIP,
        Backing::Mmap(map.clone()),
        &up,
        &mut resolve,
    )
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

/// The byte range of entry `i`'s data in the file. Only Stored entries qualify.
fn entry_range(
    archive: &mut ZipArchive<Cursor<&[u8]>>,
    i: usize,
    archive_bytes: &[u8],
) -> std::result::Result<Range<usize>, String> {
    let file_len = archive_bytes.len();
    let f = archive
        .by_index_raw(i)
        .map_err(|e| format!("zip entry {i}: {e}"))?;
    let name = String::from_utf8_lossy(f.name_raw()).into_owned();
    if f.compression() != CompressionMethod::Stored {
        // The method number, from the local header (the crate names methods it was built without "Unsupported").
        let method = usize::try_from(f.header_start())
            .ok()
            .and_then(|h| archive_bytes.get(h.checked_add(8)?..h.checked_add(10)?))
            .map(|b| u16::from_le_bytes([b[0], b[1]]));
        let label = match method {
            Some(m) => {
                let known = METHODS
                    .iter()
                    .find(|(n, _)| *n == m)
                    .map_or("unknown", |x| x.1);
                format!("method {m}, {known}")
            }
            None => format!("{:?}", f.compression()),
        };
        return Err(format!(
            "zip entry '{name}' is compressed ({label}); torch checkpoints store entries uncompressed (re-save with torch.save)"
        ));
    }
    if f.encrypted() {
        return Err(format!("zip entry '{name}' is encrypted"));
    }
    if f.compressed_size() != f.size() {
        return Err(format!(
            "zip entry '{name}' is Stored but its sizes differ ({} vs {})",
            f.compressed_size(),
            f.size()
        ));
    }
    let start = f
        .data_start()
        .ok_or_else(|| format!("zip entry '{name}': data offset unknown"))?;
    let end = start
        .checked_add(f.size())
        .filter(|&e| e <= file_len as u64)
        .ok_or_else(|| {
            format!(
                "zip entry '{name}' ({} bytes at offset {start}) runs past the end of the {file_len}-byte file",
                f.size()
            )
        })?;
    // Both fit in usize: they are at most the file length.
    Ok(start as usize..end as usize)
}

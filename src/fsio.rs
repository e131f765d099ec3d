//! Durable file writes and hashing, for every file the tool writes (outputs, shards, index files, fingerprints,
//! golden files, reports).
//!
//! A file is written under a temporary name beside its target (`.convert-weight-tmp-<name>-XXXXXX`), fsynced,
//! renamed into place, and its directory fsynced, so a crash leaves either the old file or the new one, never a
//! part. The file gets the permissions that `open(O_CREAT, 0666)` under the user's umask gives (as `cp` would), not
//! the 0600 of a temporary file.
//!
//! Hashing happens while the bytes are written, never by reading a file back: an [`AtomicFile`] created with
//! hashing (see [`HashScope`]) computes the SHA-256 of the bytes as they are appended. A writer that seeks back and
//! rewrites bytes already hashed (the zip crate patches each local header after its data) makes the digest
//! unavailable; the caller then knows it has none ([`Committed::sha256`] is `None`).

use std::cell::RefCell;
use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// An I/O error with the file it concerns.
#[derive(Debug, thiserror::Error)]
#[error("{}: {source}", path.display())]
pub struct FsError {
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

impl FsError {
    pub fn new(path: &Path, source: io::Error) -> FsError {
        FsError {
            path: path.to_path_buf(),
            source,
        }
    }
}

pub type Result<T> = std::result::Result<T, FsError>;

/// Prefix of every temporary output name, so a later run can find and remove leftovers of a killed one.
pub const TEMP_PREFIX: &str = ".convert-weight-tmp-";

/// Prefix of the temporary names of one output file: `.convert-weight-tmp-<file name>-`.
pub fn temp_prefix(file_name: &str) -> String {
    format!("{TEMP_PREFIX}{file_name}-")
}

/// Bytes written before the kernel is asked to start writing them back (so `commit`'s fsync waits for the tail only).
const WRITEBACK_STEP: u64 = 32 << 20;

/// Lower-case hex of a digest.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// SHA-256 of a byte slice, as lower-case hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// SHA-256 of a whole existing file (for checking outputs written by an earlier run, never for one being written).
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = File::open(path).map_err(|e| FsError::new(path, e))?;
    let mut h = Sha256::new();
    io::copy(&mut f, &mut h).map_err(|e| FsError::new(path, e))?;
    Ok(hex(&h.finalize()))
}

/// The directory a file lives in (`.` for a bare name).
fn dir_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// fsync a directory, so a rename in it is durable. Best effort where directories cannot be opened.
pub fn sync_dir(dir: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        let d = File::open(dir).map_err(|e| FsError::new(dir, e))?;
        d.sync_all().map_err(|e| FsError::new(dir, e))?;
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

fn temp_in(dir: &Path, path: &Path) -> Result<tempfile::NamedTempFile> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let prefix = temp_prefix(&name);
    let mut b = tempfile::Builder::new();
    b.prefix(&prefix);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        // The mode of `open(O_CREAT, 0666)`: the umask applies, as for a file written by `cp`.
        b.permissions(std::fs::Permissions::from_mode(0o666));
    }
    b.tempfile_in(dir).map_err(|e| FsError::new(path, e))
}

thread_local! {
    /// Digests of the files committed on this thread inside a [`HashScope`], by (device, inode).
    static SCOPE: RefCell<Option<HashMap<(u64, u64), String>>> = const { RefCell::new(None) };
}

/// While alive, every [`AtomicFile`] created on this thread hashes its bytes as they are written, and
/// [`HashScope::take`] hands out the digest of a committed file by its final path (renames keep it: the digest is
/// kept by inode). Scopes nest; dropping one restores the outer one.
pub struct HashScope {
    outer: Option<HashMap<(u64, u64), String>>,
}

impl HashScope {
    pub fn enter() -> HashScope {
        let outer = SCOPE.with(|s| s.borrow_mut().replace(HashMap::new()));
        HashScope { outer }
    }

    /// The SHA-256 of the file now at `path`, if it was committed in this scope with a digest.
    pub fn take(&self, path: &Path) -> Option<String> {
        let key = file_key(path)?;
        SCOPE.with(|s| s.borrow_mut().as_mut().and_then(|m| m.remove(&key)))
    }
}

impl Drop for HashScope {
    fn drop(&mut self) {
        let outer = self.outer.take();
        SCOPE.with(|s| *s.borrow_mut() = outer);
    }
}

fn scope_active() -> bool {
    SCOPE.with(|s| s.borrow().is_some())
}

#[cfg(unix)]
fn key_of(m: &std::fs::Metadata) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    Some((m.dev(), m.ino()))
}

#[cfg(not(unix))]
fn key_of(_: &std::fs::Metadata) -> Option<(u64, u64)> {
    None
}

fn file_key(path: &Path) -> Option<(u64, u64)> {
    key_of(&std::fs::metadata(path).ok()?)
}

/// Most bytes a hold may keep (a zip local header is under 100 bytes plus 64 of alignment).
const HOLD_MAX: usize = 64 << 10;

/// SHA-256 of the bytes appended so far; broken by a write anywhere but at the end of what was hashed, except the
/// rewrites that a hold or a predicted region allows (see [`AtomicFile::hold`]).
struct StreamHash {
    h: Sha256,
    upto: u64,
    broken: bool,
    /// Bytes written from `upto` on but not hashed yet (a hold), and their start.
    held: Option<Vec<u8>>,
    /// A region hashed as predicted bytes: its start, the bytes hashed, and which of them the file does not hold
    /// yet (they must be rewritten to exactly these values before the next hold or the commit).
    predicted: Option<(u64, Vec<u8>, Vec<bool>)>,
}

impl StreamHash {
    /// Account for `buf` written at `at`.
    fn wrote(&mut self, at: u64, buf: &[u8]) {
        if self.broken {
            return;
        }
        let len = buf.len() as u64;
        if let Some(held) = self.held.as_mut() {
            let end = self.upto + held.len() as u64;
            if at == end {
                held.extend_from_slice(buf);
                if held.len() > HOLD_MAX {
                    self.broken = true;
                }
            } else if at >= self.upto && at + len <= end {
                let o = (at - self.upto) as usize;
                held[o..o + buf.len()].copy_from_slice(buf);
            } else {
                self.broken = true;
            }
            return;
        }
        if at == self.upto {
            self.h.update(buf);
            self.upto += len;
            return;
        }
        // A rewrite of bytes hashed as predicted: it must write exactly the prediction.
        if let Some((start, bytes, missing)) = self.predicted.as_mut() {
            if at >= *start && at + len <= *start + bytes.len() as u64 {
                let o = (at - *start) as usize;
                if bytes[o..o + buf.len()] == *buf {
                    missing[o..o + buf.len()]
                        .iter_mut()
                        .for_each(|m| *m = false);
                    return;
                }
            }
        }
        self.broken = true;
    }

    /// A predicted region still waiting for its rewrite breaks the digest.
    fn settle(&mut self) {
        if let Some((_, _, missing)) = self.predicted.take() {
            if missing.iter().any(|&m| m) {
                self.broken = true;
            }
        }
    }

    /// Hash the held bytes, or `predicted` in their place.
    fn release(&mut self, predicted: Option<Vec<u8>>) {
        let Some(held) = self.held.take() else {
            return;
        };
        match predicted {
            Some(p) if p.len() == held.len() => {
                self.settle();
                self.h.update(&p);
                let missing = held.iter().zip(&p).map(|(a, b)| a != b).collect();
                let start = self.upto;
                self.upto += p.len() as u64;
                self.predicted = Some((start, p, missing));
            }
            Some(_) => self.broken = true,
            None => {
                self.h.update(&held);
                self.upto += held.len() as u64;
            }
        }
    }
}

/// A file being written under a temporary name in its final directory; [`AtomicFile::commit`] fsyncs it, renames
/// it into place and fsyncs the directory. Dropped uncommitted, the temporary file is removed. Buffered; implements
/// `Write` and `Seek`. With hashing, SHA-256 is computed over the bytes as they are written.
pub struct AtomicFile {
    path: PathBuf,
    out: BufWriter<tempfile::NamedTempFile>,
    /// Logical write position (bytes handed to the buffer, seeks applied).
    pos: u64,
    /// End of the data written so far.
    end: u64,
    /// End of the range already handed to the kernel for writeback.
    kicked: u64,
    hash: Option<StreamHash>,
}

/// A file in place.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Committed {
    pub path: PathBuf,
    /// SHA-256 of its bytes when it was hashed while written and never rewritten in place.
    pub sha256: Option<String>,
}

impl AtomicFile {
    /// A new file for `path` (its directory created if missing); hashed when a [`HashScope`] is active on this
    /// thread.
    pub fn create(path: &Path) -> Result<Self> {
        Self::with_hashing(path, scope_active())
    }

    /// A new file for `path`, hashed while written or not.
    pub fn with_hashing(path: &Path, hash: bool) -> Result<Self> {
        let dir = dir_of(path);
        std::fs::create_dir_all(&dir).map_err(|e| FsError::new(&dir, e))?;
        let tmp = temp_in(&dir, path)?;
        Ok(AtomicFile {
            path: path.to_path_buf(),
            out: BufWriter::with_capacity(8 << 20, tmp),
            pos: 0,
            end: 0,
            kicked: 0,
            hash: hash.then(|| StreamHash {
                h: Sha256::new(),
                upto: 0,
                broken: false,
                held: None,
                predicted: None,
            }),
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
            .map_err(|e| FsError::new(&self.path, e))?;
        self.advance(buf);
        Ok(())
    }

    /// Account for `buf` written at `pos`: hash it, and once enough reached the file, start its writeback
    /// (advisory: the data is made durable by `commit`'s fsync either way).
    fn advance(&mut self, buf: &[u8]) {
        if let Some(h) = self.hash.as_mut() {
            h.wrote(self.pos, buf);
        }
        self.pos += buf.len() as u64;
        self.end = self.end.max(self.pos);
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

    /// Whether the next write appends (the position is at the end of what was written).
    pub fn at_end(&self) -> bool {
        self.pos == self.end
    }

    /// Start holding: the bytes written from here on reach the file but are hashed only at
    /// [`release`](Self::release), and may be rewritten in place until then. For a writer that patches a header
    /// after the data that follows it (zip). No-op without hashing, or when not at the end.
    pub fn hold(&mut self) {
        let at_end = self.at_end();
        if let Some(h) = self.hash.as_mut() {
            if at_end && h.held.is_none() && h.upto == self.pos {
                h.settle();
                h.held = Some(Vec::new());
            }
        }
    }

    /// The bytes held so far (as they are in the file now).
    pub fn held(&self) -> Option<&[u8]> {
        self.hash.as_ref().and_then(|h| h.held.as_deref())
    }

    /// Hash the held bytes and stop holding. With `predicted` (as long as the held bytes), those bytes are hashed
    /// instead, and every byte where they differ from the file must later be rewritten to the predicted value
    /// (before the next hold or the commit), else the file gets no digest. A wrong prediction thus never yields a
    /// wrong digest, only none.
    pub fn release(&mut self, predicted: Option<Vec<u8>>) {
        if let Some(h) = self.hash.as_mut() {
            h.release(predicted);
        }
    }

    /// Flush, fsync, rename into place, fsync the directory.
    pub fn commit(mut self) -> Result<Committed> {
        if let Some(h) = self.hash.as_mut() {
            h.release(None);
            h.settle();
        }
        let path = self.path;
        let tmp = self
            .out
            .into_inner()
            .map_err(|e| FsError::new(&path, e.into_error()))?;
        tmp.as_file()
            .sync_all()
            .map_err(|e| FsError::new(&path, e))?;
        let key = tmp.as_file().metadata().ok().as_ref().and_then(key_of);
        tmp.persist(&path)
            .map_err(|e| FsError::new(&path, e.error))?;
        sync_dir(&dir_of(&path))?;
        let sha256 = self
            .hash
            .filter(|h| !h.broken && h.upto == self.end)
            .map(|h| hex(&h.h.finalize()));
        if let (Some(d), Some(k)) = (&sha256, key) {
            SCOPE.with(|s| {
                if let Some(m) = s.borrow_mut().as_mut() {
                    m.insert(k, d.clone());
                }
            });
        }
        Ok(Committed { path, sha256 })
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.out.write(buf)?;
        self.advance(&buf[..n]);
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

/// Write `bytes` to `path` atomically and durably (see the module docs); the directory is created if missing.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = AtomicFile::with_hashing(path, false)?;
    f.put(bytes)?;
    f.commit().map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_while_writing_and_hands_the_digest_over_after_a_rename() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a.bin");
        let scope = HashScope::enter();
        let mut f = AtomicFile::create(&p).unwrap();
        f.put(b"hello ").unwrap();
        f.write_all(b"world").unwrap();
        let c = f.commit().unwrap();
        let want = sha256_hex(b"hello world");
        assert_eq!(c.sha256.as_deref(), Some(want.as_str()));
        let moved = d.path().join("b.bin");
        std::fs::rename(&p, &moved).unwrap();
        assert_eq!(scope.take(&moved), Some(want.clone()));
        assert_eq!(scope.take(&moved), None, "taken once");
        assert_eq!(sha256_file(&moved).unwrap(), want);
        drop(scope);
        // Without a scope: not hashed.
        let mut f = AtomicFile::create(&p).unwrap();
        f.put(b"x").unwrap();
        assert_eq!(f.commit().unwrap().sha256, None);
    }

    #[test]
    fn a_rewrite_in_place_drops_the_digest() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("z");
        let mut f = AtomicFile::with_hashing(&p, true).unwrap();
        f.put(b"0000data").unwrap();
        f.seek(SeekFrom::Start(0)).unwrap();
        f.put(b"1111").unwrap();
        f.seek(SeekFrom::End(0)).unwrap();
        assert_eq!(f.commit().unwrap().sha256, None);
        assert_eq!(std::fs::read(&p).unwrap(), b"1111data");
    }

    #[test]
    fn held_and_predicted_bytes_must_match_the_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("h");
        // A header patched after its data, the patch predicted right: the digest is the file's.
        let mut f = AtomicFile::with_hashing(&p, true).unwrap();
        f.put(b"pre").unwrap();
        f.hold();
        f.put(b"HDR?").unwrap();
        f.release(Some(b"HDR!".to_vec()));
        f.put(b"data").unwrap();
        f.seek(SeekFrom::Start(6)).unwrap();
        f.put(b"!").unwrap();
        f.seek(SeekFrom::End(0)).unwrap();
        let c = f.commit().unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"preHDR!data");
        assert_eq!(c.sha256, Some(sha256_hex(b"preHDR!data")));
        // Predicted but never rewritten, or rewritten otherwise: no digest (never a wrong one).
        for patch in [None, Some(&b"#"[..])] {
            let mut f = AtomicFile::with_hashing(&p, true).unwrap();
            f.hold();
            f.put(b"HDR?").unwrap();
            f.release(Some(b"HDR!".to_vec()));
            f.put(b"data").unwrap();
            if let Some(b) = patch {
                f.seek(SeekFrom::Start(3)).unwrap();
                f.put(b).unwrap();
                f.seek(SeekFrom::End(0)).unwrap();
            }
            assert_eq!(f.commit().unwrap().sha256, None, "{patch:?}");
        }
        // Rewrites inside a hold are simply taken.
        let mut f = AtomicFile::with_hashing(&p, true).unwrap();
        f.hold();
        f.put(b"ab").unwrap();
        f.seek(SeekFrom::Start(0)).unwrap();
        f.put(b"X").unwrap();
        f.seek(SeekFrom::End(0)).unwrap();
        f.put(b"cd").unwrap();
        let c = f.commit().unwrap();
        assert_eq!(c.sha256, Some(sha256_hex(b"Xbcd")));
    }

    #[cfg(unix)]
    #[test]
    fn files_get_the_mode_of_a_plain_create() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        // The process umask, read without changing it.
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let umask = status
            .lines()
            .find_map(|l| l.strip_prefix("Umask:"))
            .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
            .unwrap_or(0o022);
        let p = d.path().join("sub").join("r.json");
        write_atomic(&p, b"{}").unwrap();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o666 & !umask);
        assert_eq!(std::fs::read(&p).unwrap(), b"{}");
        // No temporary file left behind.
        let names: Vec<_> = std::fs::read_dir(p.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }
}

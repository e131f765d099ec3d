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

/// SHA-256 of the bytes appended so far; broken by a write anywhere but at the end of what was hashed.
struct StreamHash {
    h: Sha256,
    upto: u64,
    broken: bool,
}

/// A file being written under a temporary name in its final directory; [`AtomicFile::commit`] fsyncs it, renames
/// it into place and fsyncs the directory. Dropped uncommitted, the temporary file is removed. Buffered; implements
/// `Write` and `Seek`. With hashing, SHA-256 is computed over the bytes as they are written.
pub struct AtomicFile {
    path: PathBuf,
    out: BufWriter<tempfile::NamedTempFile>,
    /// Logical write position (bytes handed to the buffer, seeks applied).
    pos: u64,
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
            kicked: 0,
            hash: hash.then(|| StreamHash {
                h: Sha256::new(),
                upto: 0,
                broken: false,
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
            if h.broken || self.pos != h.upto {
                h.broken = true;
            } else {
                h.h.update(buf);
                h.upto += buf.len() as u64;
            }
        }
        self.pos += buf.len() as u64;
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

    /// Flush, fsync, rename into place, fsync the directory.
    pub fn commit(self) -> Result<Committed> {
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
            .filter(|h| !h.broken && h.upto == self.pos)
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

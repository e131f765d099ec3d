//! Helpers for the reliability tests (issue 6): running the binaries under a time bound while measuring their peak
//! memory, hand-built files (safetensors, ckpt records, pickles, torch zips), byte surgery and directory checks.
#![allow(dead_code)]

use std::ffi::OsString;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Prefix of every temporary output name (`convert_weight::formats::TEMP_PREFIX`).
pub const TEMP_PREFIX: &str = ".convert-weight-tmp-";

/// `RLIMIT_AS` of every bounded child: an allocation sized by a hostile header fails (and the child aborts, which
/// the tests report) instead of taking the machine's memory.
pub const ADDRESS_SPACE_LIMIT: u64 = 2 << 30;

/// `VmHWM` of a live process, KiB.
fn vm_hwm_kib(pid: libc::pid_t) -> Option<i64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// What a bounded run of a binary did.
#[derive(Debug)]
pub struct Bounded {
    /// Exit code, when it exited normally.
    pub code: Option<i32>,
    /// Terminating signal, when it was killed.
    pub signal: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    /// Peak resident set of the child as last sampled (`VmHWM`), KiB. Sampled while it runs: a short run may
    /// show 0. (wait4's `ru_maxrss` is useless here: Linux carries the parent's high-water mark over fork and exec.)
    /// The hard bound is [`ADDRESS_SPACE_LIMIT`]: an allocation past it fails and the child aborts.
    pub max_rss_kib: i64,
    pub elapsed: Duration,
    /// It ran past the time bound and was killed.
    pub timed_out: bool,
}

fn read_all(mut f: File) -> String {
    let mut v = Vec::new();
    let _ = f.seek(SeekFrom::Start(0));
    let _ = f.read_to_end(&mut v);
    String::from_utf8_lossy(&v).into_owned()
}

/// Spawn `bin args`, reap it with `wait4` (for its own peak RSS), kill it when it runs past `timeout`.
pub fn run_bounded(bin: &Path, args: &[OsString], timeout: Duration) -> Bounded {
    let out = tempfile::tempfile().expect("temp file for stdout");
    let err = tempfile::tempfile().expect("temp file for stderr");
    let mut cmd = Command::new(bin);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::from(out.try_clone().unwrap()))
        .stderr(Stdio::from(err.try_clone().unwrap()))
        .env_remove("RUST_BACKTRACE");
    // SAFETY: only setrlimit (async-signal-safe) runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: ADDRESS_SPACE_LIMIT,
                rlim_max: ADDRESS_SPACE_LIMIT,
            };
            if libc::setrlimit(libc::RLIMIT_AS, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    // Reaped below with wait4 (for the child's rusage), not with Child::wait.
    #[allow(clippy::zombie_processes)]
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e}", bin.display()));
    let pid = child.id() as libc::pid_t;
    let start = Instant::now();
    let mut status: libc::c_int = 0;
    // SAFETY: rusage is plain old data; zeroed is a valid value.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let mut timed_out = false;
    let mut peak = 0i64;
    loop {
        // SAFETY: wait4 on our own child with valid out-pointers.
        let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut ru) };
        if r == pid {
            break;
        }
        if let Some(hwm) = vm_hwm_kib(pid) {
            peak = peak.max(hwm);
        }
        assert!(r >= 0, "wait4: {}", std::io::Error::last_os_error());
        if start.elapsed() > timeout {
            let _ = child.kill();
            // SAFETY: as above, blocking.
            unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
            timed_out = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let elapsed = start.elapsed();
    let (code, signal) = if libc::WIFEXITED(status) {
        (Some(libc::WEXITSTATUS(status)), None)
    } else if libc::WIFSIGNALED(status) {
        (None, Some(libc::WTERMSIG(status)))
    } else {
        (None, None)
    };
    Bounded {
        code,
        signal,
        stdout: read_all(out),
        stderr: read_all(err),
        max_rss_kib: peak,
        elapsed,
        timed_out,
    }
}

/// Strings to OsStrings.
pub fn args<S: AsRef<std::ffi::OsStr>>(a: &[S]) -> Vec<OsString> {
    a.iter().map(|s| s.as_ref().to_os_string()).collect()
}

/// Names of temporary outputs (`.convert-weight-tmp-*`) in a directory.
pub fn temp_leftovers(dir: &Path) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<String> = rd
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(TEMP_PREFIX))
        .collect();
    v.sort();
    v
}

/// Every entry of a directory (names), sorted.
pub fn entries(dir: &Path) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<String> = rd
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Copy a file and make the copy writable (fixtures are read-only).
pub fn copy_file(src: &Path, dst: &Path) {
    std::fs::copy(src, dst)
        .unwrap_or_else(|e| panic!("copy {} -> {}: {e}", src.display(), dst.display()));
    let mut perm = std::fs::metadata(dst).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perm.set_readonly(false);
    std::fs::set_permissions(dst, perm).unwrap();
}

/// Copy the plain files of a directory (not recursive) into a new directory `dst`.
pub fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let p = e.unwrap().path();
        if p.is_file() {
            copy_file(&p, &dst.join(p.file_name().unwrap()));
        }
    }
}

pub fn write(path: &Path, bytes: &[u8]) -> PathBuf {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).unwrap();
    }
    let mut f = File::create(path).unwrap();
    f.write_all(bytes).unwrap();
    path.to_path_buf()
}

// ------------------------------------------------------------------------------------------------------------
// safetensors
// ------------------------------------------------------------------------------------------------------------

/// A safetensors file from a header text and a data buffer.
pub fn safetensors_bytes(header: &str, data: &[u8]) -> Vec<u8> {
    let mut v = (header.len() as u64).to_le_bytes().to_vec();
    v.extend_from_slice(header.as_bytes());
    v.extend_from_slice(data);
    v
}

/// Header length of a safetensors file.
pub fn safetensors_header_len(bytes: &[u8]) -> usize {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[..8]);
    u64::from_le_bytes(b) as usize
}

// ------------------------------------------------------------------------------------------------------------
// MindSpore ckpt records
// ------------------------------------------------------------------------------------------------------------

pub fn varint(mut v: u64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let b = (v & 0x7F) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return out;
        }
        out.push(b | 0x80);
    }
}

fn len_field(field: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![field];
    v.extend(varint(body.len() as u64));
    v.extend_from_slice(body);
    v
}

/// One `Checkpoint.value` record: tag, dims, type string, payload (spec §1.2).
pub fn ckpt_record(tag: &str, dims: &[u64], ty: &str, data: &[u8]) -> Vec<u8> {
    let mut t = Vec::new();
    for &d in dims {
        t.push(0x08);
        t.extend(varint(d));
    }
    t.extend(len_field(0x12, ty.as_bytes()));
    t.extend(len_field(0x1A, data));
    let mut v = len_field(0x0A, tag.as_bytes());
    v.extend(len_field(0x12, &t));
    len_field(0x0A, &v)
}

/// The `crc_num` trailer for a CRC value.
pub fn ckpt_trailer(crc: u32) -> Vec<u8> {
    let mut v = b"crc_num".to_vec();
    v.extend_from_slice(&[0u8; 6]);
    v.extend_from_slice(&crc.to_be_bytes());
    v
}

// ------------------------------------------------------------------------------------------------------------
// Pickles and torch zips
// ------------------------------------------------------------------------------------------------------------

/// A protocol-2 pickle written opcode by opcode.
#[derive(Default, Clone)]
pub struct Pickle(pub Vec<u8>);

impl Pickle {
    pub fn new() -> Self {
        Pickle(vec![0x80, 0x02])
    }
    pub fn op(mut self, b: &[u8]) -> Self {
        self.0.extend_from_slice(b);
        self
    }
    /// GLOBAL `module name`.
    pub fn global(self, module: &str, name: &str) -> Self {
        self.op(format!("c{module}\n{name}\n").as_bytes())
    }
    /// SHORT_BINUNICODE module, name, STACK_GLOBAL (protocol 4 spelling).
    pub fn stack_global(self, module: &str, name: &str) -> Self {
        self.short_str(module).short_str(name).op(b"\x93")
    }
    pub fn short_str(self, s: &str) -> Self {
        let mut v = vec![0x8C, s.len() as u8];
        v.extend_from_slice(s.as_bytes());
        self.op(&v)
    }
    /// BINUNICODE.
    pub fn str(self, s: &str) -> Self {
        let mut v = vec![b'X'];
        v.extend_from_slice(&(s.len() as u32).to_le_bytes());
        v.extend_from_slice(s.as_bytes());
        self.op(&v)
    }
    /// BININT for i32, else LONG1 of 8 bytes.
    pub fn int(self, v: i64) -> Self {
        if let Ok(x) = i32::try_from(v) {
            let mut b = vec![b'J'];
            b.extend_from_slice(&x.to_le_bytes());
            self.op(&b)
        } else {
            let mut b = vec![0x8A, 8];
            b.extend_from_slice(&v.to_le_bytes());
            self.op(&b)
        }
    }
    pub fn mark(self) -> Self {
        self.op(b"(")
    }
    pub fn tuple(self) -> Self {
        self.op(b"t")
    }
    pub fn reduce(self) -> Self {
        self.op(b"R")
    }
    /// `(ints)` as a tuple.
    pub fn int_tuple(self, v: &[i64]) -> Self {
        let mut p = self.mark();
        for &x in v {
            p = p.int(x);
        }
        p.tuple()
    }
    /// One `name: _rebuild_tensor_v2(storage, offset, shape, stride, False, OrderedDict())` item (no MARK around).
    #[allow(clippy::too_many_arguments)]
    pub fn tensor_item(
        self,
        name: &str,
        storage_type: &str,
        key: &str,
        numel: i64,
        offset: i64,
        shape: &[i64],
        stride: &[i64],
    ) -> Self {
        self.str(name)
            .global("torch._utils", "_rebuild_tensor_v2")
            .mark()
            .mark()
            .str("storage")
            .global("torch", storage_type)
            .str(key)
            .str("cpu")
            .int(numel)
            .tuple()
            .op(b"Q")
            .int(offset)
            .int_tuple(shape)
            .int_tuple(stride)
            .op(b"\x89")
            .global("collections", "OrderedDict")
            .op(b")")
            .reduce()
            .tuple()
            .reduce()
    }
    /// Start an `OrderedDict()` and a MARK for its SETITEMS.
    pub fn state_dict_start(self) -> Self {
        self.global("collections", "OrderedDict")
            .op(b")")
            .reduce()
            .mark()
    }
    /// SETITEMS and STOP.
    pub fn state_dict_end(self) -> Self {
        self.op(b"u.")
    }
    pub fn stop(self) -> Self {
        self.op(b".")
    }
}

/// A torch zip (`archive/...`, Stored, data aligned to 64) holding `data.pkl` and the given storages.
pub fn torch_zip(pickle: &[u8], storages: &[(&str, Vec<u8>)]) -> Vec<u8> {
    use zip::write::SimpleFileOptions;
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Stored)
        .with_alignment(64);
    let mut put = |name: &str, data: &[u8]| {
        w.start_file(name, opts).unwrap();
        w.write_all(data).unwrap();
    };
    put("archive/data.pkl", pickle);
    put("archive/byteorder", b"little");
    for (key, data) in storages {
        put(&format!("archive/data/{key}"), data);
    }
    put("archive/version", b"3\n");
    w.finish().unwrap().into_inner()
}

/// One central-directory entry of a zip: (name, offset of the central header, offset of the local header).
pub fn zip_entries(z: &[u8]) -> Vec<(String, usize, usize)> {
    let u16at = |p: usize| u16::from_le_bytes([z[p], z[p + 1]]) as usize;
    let u32at = |p: usize| u32::from_le_bytes([z[p], z[p + 1], z[p + 2], z[p + 3]]) as usize;
    let eocd = (0..=z.len() - 22)
        .rev()
        .find(|&p| z[p..p + 4] == [0x50, 0x4B, 0x05, 0x06])
        .expect("end of central directory");
    let n = u16at(eocd + 10);
    let mut p = u32at(eocd + 16);
    let mut out = Vec::new();
    for _ in 0..n {
        assert_eq!(z[p..p + 4], [0x50, 0x4B, 0x01, 0x02], "central header");
        let name_len = u16at(p + 28);
        let extra = u16at(p + 30);
        let comment = u16at(p + 32);
        let name = String::from_utf8_lossy(&z[p + 46..p + 46 + name_len]).into_owned();
        out.push((name, p, u32at(p + 42)));
        p += 46 + name_len + extra + comment;
    }
    out
}

/// Set the compression method of every entry (local and central headers) to `method` (8 = deflate).
pub fn zip_set_method(z: &mut [u8], method: u16) {
    for (_, central, local) in zip_entries(z) {
        z[central + 10..central + 12].copy_from_slice(&method.to_le_bytes());
        z[local + 8..local + 10].copy_from_slice(&method.to_le_bytes());
    }
}

/// Overwrite the CRC-32 (local and central headers) of the entry whose name ends with `suffix`.
pub fn zip_set_crc(z: &mut [u8], suffix: &str, crc: u32) -> bool {
    let mut hit = false;
    for (name, central, local) in zip_entries(z) {
        if name.ends_with(suffix) {
            z[central + 16..central + 20].copy_from_slice(&crc.to_le_bytes());
            z[local + 14..local + 18].copy_from_slice(&crc.to_le_bytes());
            hit = true;
        }
    }
    hit
}

/// The legacy (pre-1.6) preamble: magic number, protocol version and sys_info pickles.
pub fn legacy_preamble() -> Vec<u8> {
    let mut v = vec![0x80, 0x02, 0x8A, 0x0A];
    v.extend_from_slice(&[0x6C, 0xFC, 0x9C, 0x46, 0xF9, 0x20, 0x6A, 0xA8, 0x50, 0x19]);
    v.push(b'.');
    v.extend(Pickle::new().int(1001).stop().0);
    let sys = Pickle::new()
        .op(b"}")
        .mark()
        .str("protocol_version")
        .int(1001)
        .str("little_endian")
        .op(b"\x88")
        .str("type_sizes")
        .op(b"}")
        .mark()
        .str("short")
        .int(2)
        .str("int")
        .int(4)
        .str("long")
        .int(4)
        .op(b"u")
        .op(b"u.");
    v.extend(sys.0);
    v
}

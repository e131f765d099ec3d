//! Interrupted runs (issue 6): SIGKILL in the middle of writing a large output, SIGINT/SIGTERM on `convert-batch`,
//! and two `convert-batch` processes on one manifest. The large input is generated on the fly with the project's
//! own safetensors writer (deterministic data) in a temporary directory that is removed afterwards.
//!
//! The tests run one at a time (a mutex): they are I/O-heavy and share two cores with the rest of the suite.

mod common;
mod common_corrupt;

use std::ffi::OsString;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common_corrupt::*;
use convert_weight::formats::{self, OutTensor, OutputFormat, WriteOptions};
use convert_weight::tensor::{DType, TensorInfo};

static SERIAL: Mutex<()> = Mutex::new(());

const MIB: usize = 1 << 20;
/// Input size of the SIGKILL test: big enough that a conversion takes seconds.
const BIG: usize = 1024 * MIB;
/// Input size per batch job.
const MEDIUM: usize = 256 * MIB;
/// How long any one process may take before the test gives up on it.
const PATIENCE: Duration = Duration::from_secs(120);

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Write a safetensors file of about `total` bytes: 16 F32 tensors of deterministic, finite values.
fn make_input(path: &Path, total: usize) {
    let n = 16;
    let cols = 1024;
    let rows = total / n / 4 / cols;
    let tensors: Vec<OutTensor> = (0..n)
        .map(|i| OutTensor {
            info: TensorInfo::new(
                format!("layers.{i:02}.weight"),
                DType::F32,
                vec![rows, cols],
            ),
            tied_to: None,
        })
        .collect();
    let mut w = formats::create_writer(
        OutputFormat::Safetensors,
        path,
        &tensors,
        &WriteOptions::default(),
    )
    .unwrap();
    let mut buf = vec![0u8; rows * cols * 4];
    for idx in w.order() {
        let mut x = 0x9E37_79B9u32.wrapping_mul(idx as u32 + 1);
        for c in buf.chunks_exact_mut(4) {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            // Clear the top exponent bit: always a finite float.
            c.copy_from_slice(&(x & 0xBFFF_FFFF).to_le_bytes());
        }
        w.write(idx, &buf).unwrap();
    }
    w.finish().unwrap();
}

fn spawn(bin: &str, args: &[OsString]) -> Child {
    Command::new(common::bin(bin))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Largest temporary output file in `dir` (bytes), if any.
fn biggest_temp(dir: &Path) -> Option<u64> {
    temp_leftovers(dir)
        .iter()
        .filter_map(|n| std::fs::metadata(dir.join(n)).ok())
        .map(|m| m.len())
        .max()
}

/// Poll until a temporary file in `dir` has grown past `bytes`; false if the child exited first.
fn wait_for_temp(child: &mut Child, dir: &Path, bytes: u64) -> bool {
    let start = Instant::now();
    while start.elapsed() < PATIENCE {
        if biggest_temp(dir).is_some_and(|n| n >= bytes) {
            return true;
        }
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    panic!(
        "no temporary file of {bytes} bytes appeared in {} within {PATIENCE:?}",
        dir.display()
    );
}

/// Wait for a child with a bound; kill it and fail on overrun. Returns (exit code, signal, stderr).
fn wait_bounded(mut child: Child) -> (Option<i32>, Option<i32>, String) {
    use std::io::Read;
    use std::os::unix::process::ExitStatusExt;
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > PATIENCE {
            let _ = child.kill();
            let _ = child.wait();
            panic!("process did not finish within {PATIENCE:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    (status.code(), status.signal(), err)
}

fn convert_args(input: &Path, output: &Path) -> Vec<OsString> {
    args(&[
        "--input_path".as_ref(),
        input.as_os_str(),
        "--output_path".as_ref(),
        output.as_os_str(),
    ])
}

/// `verify A B` (tensor by tensor) must say identical.
fn assert_same_tensors(a: &Path, b: &Path) {
    let out = common::cw(&["verify", common::s(a), common::s(b)]);
    assert!(
        out.status.success(),
        "verify {} {}: {}{}",
        a.display(),
        b.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn sigkill_mid_write_leaves_nothing_and_rerun_completes() {
    let _g = serial();
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("big.safetensors");
    make_input(&input, BIG);
    let out_dir = tmp.path().join("out");
    std::fs::create_dir_all(&out_dir).unwrap();
    let output = out_dir.join("big.ckpt");

    let mut child = spawn("convert-weight", &convert_args(&input, &output));
    let caught = wait_for_temp(&mut child, &out_dir, (BIG / 8) as u64);
    assert!(
        caught,
        "the conversion finished before it could be killed: make BIG larger"
    );
    child.kill().unwrap(); // SIGKILL
    let (code, signal, _) = wait_bounded(child);
    assert_eq!(
        (code, signal),
        (None, Some(libc::SIGKILL)),
        "killed by SIGKILL"
    );
    assert!(
        !output.exists(),
        "a killed conversion left a file at the output path"
    );
    let stale = temp_leftovers(&out_dir);
    assert!(
        !stale.is_empty(),
        "expected the killed run's temporary file in {}",
        out_dir.display()
    );

    let (code, _, err) = wait_bounded(spawn("convert-weight", &convert_args(&input, &output)));
    assert_eq!(code, Some(0), "rerun after SIGKILL: {err}");
    assert!(output.is_file(), "rerun wrote no output");
    let left = temp_leftovers(&out_dir);
    assert!(
        left.is_empty(),
        "the rerun left the stale temporary files {left:?} (killed run: {stale:?})"
    );
    assert_same_tensors(&input, &output);
}

/// A manifest of `jobs` conversions of `input` into `out/job<i>.ckpt`.
fn manifest(dir: &Path, input: &Path, jobs: usize) -> PathBuf {
    let mut text = String::new();
    for i in 0..jobs {
        text.push_str(&format!(
            "[[job]]\nname = \"job{i}\"\ninput = \"{}\"\noutput = \"out/job{i}.ckpt\"\n\n",
            input.display()
        ));
    }
    let p = dir.join("jobs.toml");
    std::fs::write(&p, text).unwrap();
    p
}

/// Every job object of a report, whatever its nesting: (name, status).
fn report_jobs(v: &serde_json::Value, out: &mut Vec<(String, String)>) {
    match v {
        serde_json::Value::Object(m) => {
            if let (Some(n), Some(s)) = (
                m.get("name").and_then(|x| x.as_str()),
                m.get("status").and_then(|x| x.as_str()),
            ) {
                out.push((n.to_string(), s.to_string()));
            }
            m.values().for_each(|x| report_jobs(x, out));
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| report_jobs(x, out)),
        _ => {}
    }
}

fn signal_batch(sig: libc::c_int, expect_code: i32) {
    let _g = serial();
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in.safetensors");
    make_input(&input, MEDIUM);
    let jobs = 3;
    let m = manifest(tmp.path(), &input, jobs);
    let report = tmp.path().join("report.json");
    let out_dir = tmp.path().join("out");
    let mut child = spawn(
        "convert-batch",
        &args(&[m.as_os_str(), "--report".as_ref(), report.as_os_str()]),
    );
    std::fs::create_dir_all(&out_dir).unwrap();
    let caught = wait_for_temp(&mut child, &out_dir, (MEDIUM / 8) as u64);
    assert!(caught, "the batch finished before it could be interrupted");
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as libc::pid_t, sig) };
    let (code, signal, err) = wait_bounded(child);
    assert_eq!(
        (code, signal),
        (Some(expect_code), None),
        "exit status after signal {sig}: {err}"
    );
    let left = temp_leftovers(&out_dir);
    assert!(
        left.is_empty(),
        "temporary files left after signal {sig}: {left:?}"
    );
    assert!(
        report.is_file(),
        "no report written after signal {sig}: {err}"
    );
    let mut st = Vec::new();
    report_jobs(&common::read_json(&report), &mut st);
    assert_eq!(st.len(), jobs, "every job in the report: {st:?}");
    assert!(
        st.iter().any(|(_, s)| s == "cancelled"),
        "some job marked cancelled: {st:?}"
    );
    for (name, status) in &st {
        let out = out_dir.join(format!("{name}.ckpt"));
        match status.as_str() {
            "cancelled" => assert!(!out.exists(), "{name} is cancelled but has an output"),
            "ok" | "done" | "succeeded" | "success" => assert_same_tensors(&input, &out),
            other => panic!("{name}: unexpected status '{other}' after signal {sig}"),
        }
    }
}

#[test]
fn sigint_cancels_batch() {
    signal_batch(libc::SIGINT, 130);
}

#[test]
fn sigterm_cancels_batch() {
    signal_batch(libc::SIGTERM, 143);
}

#[test]
fn two_batches_on_one_manifest_write_each_output_once() {
    let _g = serial();
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in.safetensors");
    make_input(&input, MEDIUM);
    let jobs = 3;
    let m = manifest(tmp.path(), &input, jobs);
    let out_dir = tmp.path().join("out");
    let run = |r: &str| {
        spawn(
            "convert-batch",
            &args(&[
                m.as_os_str(),
                "--report".as_ref(),
                tmp.path().join(r).as_os_str(),
            ]),
        )
    };
    let mut a = run("a.json");
    let mut b = run("b.json");
    // Watch each output's inode: a second write renames a new file into place and changes it.
    let mut first_inode: Vec<Option<u64>> = vec![None; jobs];
    let start = Instant::now();
    let (mut ra, mut rb) = (None, None);
    while ra.is_none() || rb.is_none() {
        for (i, slot) in first_inode.iter_mut().enumerate() {
            if slot.is_none() {
                *slot = std::fs::metadata(out_dir.join(format!("job{i}.ckpt")))
                    .ok()
                    .map(|md| md.ino());
            }
        }
        if ra.is_none() {
            ra = a.try_wait().unwrap();
        }
        if rb.is_none() {
            rb = b.try_wait().unwrap();
        }
        if start.elapsed() > PATIENCE {
            let _ = a.kill();
            let _ = b.kill();
            panic!("two batches did not finish within {PATIENCE:?}");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let (_, _, ea) = wait_bounded(a);
    let (_, _, eb) = wait_bounded(b);
    assert!(
        ra.unwrap().success() && rb.unwrap().success(),
        "both batches exit 0: a: {ea} b: {eb}"
    );
    for (i, first) in first_inode.iter().enumerate() {
        let out = out_dir.join(format!("job{i}.ckpt"));
        let now = std::fs::metadata(&out)
            .unwrap_or_else(|e| panic!("{}: {e}", out.display()))
            .ino();
        assert_eq!(*first, Some(now), "{} was written twice", out.display());
        assert_same_tensors(&input, &out);
    }
    let left = temp_leftovers(&out_dir);
    assert!(left.is_empty(), "temporary files left: {left:?}");
}

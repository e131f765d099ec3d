//! Incremental runs: a small record beside each output (`<output>.cw-fingerprint.json`) says which inputs, job
//! spec and tool version produced it. A rerun skips a job whose record matches and whose outputs are intact.
//!
//! An input's print is its size, its mtime and a *sampled* content hash: sha256 over the size, the first and last
//! MiB and eight 64 KiB blocks spread evenly between them (files up to 4 MiB are hashed whole). Hashing all of a
//! multi-GB input on every run would cost as much as converting it; the sample catches truncation, appends and most
//! rewrites that keep the mtime, while the mtime catches the rest (touching an input re-runs its jobs).
//! Outputs are recorded with their size and sha256; a check compares sizes always and hashes when the outputs are
//! small (up to 16 MiB in all) or when asked to (`verify`).

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::convert::JobOutcome;
use crate::options::JobSpec;

/// Suffix of the record file beside an output.
pub const SUFFIX: &str = ".cw-fingerprint.json";
/// Files up to this size are content-hashed whole.
const WHOLE_FILE_LIMIT: u64 = 4 << 20;
/// Head and tail bytes hashed of a bigger file.
const EDGE: u64 = 1 << 20;
/// Sampled blocks between head and tail, and their size.
const SAMPLES: u64 = 8;
const SAMPLE_LEN: u64 = 64 << 10;
/// Outputs up to this many bytes in all are re-hashed on every check.
const CHEAP_VERIFY: u64 = 16 << 20;

/// Where the record of `output` lives.
pub fn record_path(output: &Path) -> PathBuf {
    let mut name = output
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(SUFFIX);
    output.with_file_name(name)
}

/// The job spec as recorded (paths absolute where they exist).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpecRecord {
    pub model: Option<String>,
    pub input: String,
    pub reversed: bool,
    pub dtype: Option<String>,
    pub n_head: Option<usize>,
    pub hidden_size: Option<usize>,
    pub layers: Option<usize>,
    pub device: Option<String>,
    pub max_shard_size: Option<u64>,
    #[serde(default)]
    pub keep_optimizer: bool,
    #[serde(default)]
    pub strategy: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mlp_layout: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_dict_key: Option<String>,
}

impl SpecRecord {
    pub fn of(spec: &JobSpec) -> SpecRecord {
        SpecRecord {
            model: spec.model.clone(),
            input: absolute(&spec.input).display().to_string(),
            reversed: spec.reversed,
            dtype: spec.dtype.map(|d| d.name().to_string()),
            n_head: spec.n_head,
            hidden_size: spec.hidden_size,
            layers: spec.layers,
            device: spec.device.clone(),
            max_shard_size: spec.max_shard_size,
            keep_optimizer: spec.keep_optimizer,
            strategy: spec
                .strategy
                .as_deref()
                .map(|p| absolute(p).display().to_string()),
            mlp_layout: spec.mlp_layout,
            state_dict_key: spec.state_dict_key.clone(),
        }
    }
}

/// Print of one input file (or directory: then `content` hashes its listing).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputPrint {
    /// Absolute path.
    pub path: String,
    pub bytes: u64,
    pub mtime_s: i64,
    pub mtime_ns: u32,
    /// Sampled content hash (see the module docs).
    pub content: String,
}

/// One output file as recorded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputPrint {
    /// Relative to the record's directory when inside it, else absolute.
    pub path: String,
    pub bytes: u64,
    pub sha256: Option<String>,
}

/// The record beside an output.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprint {
    pub tool: String,
    pub version: String,
    pub spec: SpecRecord,
    pub inputs: Vec<InputPrint>,
    pub outputs: Vec<OutputPrint>,
    /// Output tensors in write order: name and sha256 (empty if not hashed).
    pub tensors: Vec<(String, String)>,
    pub warnings: Vec<String>,
}

/// Whether a job needs to run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Freshness {
    /// Nothing changed: the record (outputs, tensors) stands for the job's result.
    UpToDate(Box<Fingerprint>),
    /// Must run, and why.
    Stale(String),
}

/// How hard [`check`] looks.
#[derive(Clone, Copy, Debug, Default)]
pub struct CheckOptions {
    /// Re-hash every output file, however big.
    pub verify: bool,
    /// The caller needs tensor hashes (golden files): a record without them is stale.
    pub need_tensor_hashes: bool,
}

fn absolute(p: &Path) -> PathBuf {
    p.canonicalize().unwrap_or_else(|_| {
        std::env::current_dir()
            .map(|d| d.join(p))
            .unwrap_or_else(|_| p.to_path_buf())
    })
}

use crate::fsio::hex;

/// Hash `len` bytes of `f` from `offset` into `h`.
fn hash_range(f: &mut File, h: &mut Sha256, offset: u64, len: u64) -> io::Result<()> {
    f.seek(SeekFrom::Start(offset))?;
    let mut buf = vec![0u8; 64 << 10];
    let mut left = len;
    while left > 0 {
        let want = usize::try_from(left.min(buf.len() as u64)).unwrap_or(buf.len());
        let n = f.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "file shrank while hashing",
            ));
        }
        h.update(&buf[..n]);
        left -= n as u64;
    }
    Ok(())
}

/// sha256 of a whole existing file (checking an earlier run's outputs).
pub fn sha256_file(path: &Path) -> io::Result<String> {
    crate::fsio::sha256_file(path).map_err(|e| e.source)
}

/// Sampled content hash of a file of `len` bytes (see the module docs).
fn sampled_hash(path: &Path, len: u64) -> io::Result<String> {
    let mut f = File::open(path)?;
    let mut h = Sha256::new();
    h.update(len.to_le_bytes());
    if len <= WHOLE_FILE_LIMIT {
        hash_range(&mut f, &mut h, 0, len)?;
    } else {
        hash_range(&mut f, &mut h, 0, EDGE)?;
        let span = len - 2 * EDGE - SAMPLE_LEN;
        for k in 1..=SAMPLES {
            hash_range(&mut f, &mut h, EDGE + span * k / (SAMPLES + 1), SAMPLE_LEN)?;
        }
        hash_range(&mut f, &mut h, len - EDGE, EDGE)?;
    }
    Ok(hex(&h.finalize()))
}

/// Print an input path as it is now.
pub fn print_input(path: &Path) -> io::Result<InputPrint> {
    let meta = std::fs::metadata(path)?;
    let (mtime_s, mtime_ns) = match meta.modified()?.duration_since(UNIX_EPOCH) {
        Ok(d) => (
            i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            d.subsec_nanos(),
        ),
        Err(e) => {
            let d = e.duration();
            (
                -i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
                d.subsec_nanos(),
            )
        }
    };
    let (bytes, content) = if meta.is_dir() {
        // A directory input: its listing (names, sizes, mtimes) is its content.
        let mut entries: Vec<(String, u64, u128)> = std::fs::read_dir(path)?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let m = e.metadata().ok()?;
                let t = m
                    .modified()
                    .ok()?
                    .duration_since(UNIX_EPOCH)
                    .ok()?
                    .as_nanos();
                Some((e.file_name().to_string_lossy().into_owned(), m.len(), t))
            })
            .collect();
        entries.sort();
        let mut h = Sha256::new();
        let mut total = 0u64;
        for (n, l, t) in &entries {
            h.update(format!("{n}\0{l}\0{t}\n").as_bytes());
            total = total.saturating_add(*l);
        }
        (total, hex(&h.finalize()))
    } else {
        (meta.len(), sampled_hash(path, meta.len())?)
    };
    Ok(InputPrint {
        path: absolute(path).display().to_string(),
        bytes,
        mtime_s,
        mtime_ns,
        content,
    })
}

/// Build the record of a finished job: its input path and every input the engine read, its outputs, tensors.
pub fn record(spec: &JobSpec, outcome: &JobOutcome) -> io::Result<Fingerprint> {
    let rec_dir = absolute(&record_path(&spec.output))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let mut inputs = vec![print_input(&spec.input)?];
    for (p, _) in &outcome.inputs {
        let pr = print_input(p)?;
        if !inputs.iter().any(|i| i.path == pr.path) {
            inputs.push(pr);
        }
    }
    let mut outputs = Vec::with_capacity(outcome.outputs.len());
    for o in &outcome.outputs {
        let abs = absolute(&o.path);
        let path = abs
            .strip_prefix(&rec_dir)
            .map(Path::to_path_buf)
            .unwrap_or(abs.clone());
        let bytes = std::fs::metadata(&abs)?.len();
        outputs.push(OutputPrint {
            path: path.display().to_string(),
            bytes,
            sha256: o.sha256.clone(),
        });
    }
    Ok(Fingerprint {
        tool: env!("CARGO_PKG_NAME").to_string(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        spec: SpecRecord::of(spec),
        inputs,
        outputs,
        tensors: outcome.tensors.clone(),
        warnings: outcome.warnings.clone(),
    })
}

/// Write the record beside `spec.output` atomically and durably.
pub fn write(spec: &JobSpec, fp: &Fingerprint) -> io::Result<()> {
    let text = serde_json::to_string_pretty(fp).map_err(io::Error::other)?;
    crate::fsio::write_atomic(&record_path(&spec.output), text.as_bytes()).map_err(|e| e.source)
}

/// Remove the record beside `spec.output` (before rerunning a job). A missing record is fine.
pub fn remove(spec: &JobSpec) -> io::Result<()> {
    match std::fs::remove_file(record_path(&spec.output)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// The absolute path of a recorded output.
pub fn output_path(spec: &JobSpec, o: &OutputPrint) -> PathBuf {
    let p = Path::new(&o.path);
    if p.is_absolute() {
        return p.to_path_buf();
    }
    record_path(&spec.output)
        .parent()
        .map(|d| d.join(p))
        .unwrap_or_else(|| p.to_path_buf())
}

/// Decide whether `spec` must run, from the record beside its output.
pub fn check(spec: &JobSpec, opts: CheckOptions) -> Freshness {
    use Freshness::Stale;
    let path = record_path(&spec.output);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Stale("no fingerprint".into()),
        Err(e) => return Stale(format!("{}: {e}", path.display())),
    };
    let fp: Fingerprint = match serde_json::from_str(&text) {
        Ok(f) => f,
        Err(e) => return Stale(format!("{}: unreadable fingerprint: {e}", path.display())),
    };
    if fp.version != env!("CARGO_PKG_VERSION") || fp.tool != env!("CARGO_PKG_NAME") {
        return Stale(format!(
            "made by {} {} (this is {})",
            fp.tool,
            fp.version,
            env!("CARGO_PKG_VERSION")
        ));
    }
    if fp.spec != SpecRecord::of(spec) {
        return Stale("job spec changed".into());
    }
    for i in &fp.inputs {
        match print_input(Path::new(&i.path)) {
            Ok(now) if now == *i => {}
            Ok(_) => return Stale(format!("input {} changed", i.path)),
            Err(e) => return Stale(format!("input {}: {e}", i.path)),
        }
    }
    if fp.outputs.is_empty() {
        return Stale("no outputs recorded".into());
    }
    let total: u64 = fp
        .outputs
        .iter()
        .map(|o| o.bytes)
        .fold(0, u64::saturating_add);
    let rehash = opts.verify || total <= CHEAP_VERIFY;
    for o in &fp.outputs {
        let p = output_path(spec, o);
        match std::fs::metadata(&p) {
            Ok(m) if m.is_file() && m.len() == o.bytes => {}
            Ok(_) => return Stale(format!("output {} changed size", p.display())),
            Err(e) => return Stale(format!("output {}: {e}", p.display())),
        }
        if rehash {
            match (&o.sha256, sha256_file(&p)) {
                (Some(want), Ok(got)) if *want == got => {}
                (None, Ok(_)) if !opts.verify => {}
                (None, Ok(_)) => return Stale(format!("output {}: no hash recorded", p.display())),
                (Some(_), Ok(_)) => return Stale(format!("output {} changed", p.display())),
                (_, Err(e)) => return Stale(format!("output {}: {e}", p.display())),
            }
        }
    }
    if opts.need_tensor_hashes && fp.tensors.iter().any(|(_, h)| h.is_empty()) {
        return Stale("tensor hashes not recorded".into());
    }
    Freshness::UpToDate(Box::new(fp))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::convert::OutputFile;
    use std::time::{Duration, SystemTime};

    fn setup(dir: &Path, input_len: usize) -> (JobSpec, JobOutcome) {
        let input = dir.join("in.bin");
        let data: Vec<u8> = (0..input_len).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(&input, &data).unwrap();
        let output = dir.join("out").join("o.ckpt");
        std::fs::create_dir_all(output.parent().unwrap()).unwrap();
        std::fs::write(&output, b"converted").unwrap();
        let spec = JobSpec {
            input: input.clone(),
            output: output.clone(),
            ..Default::default()
        };
        let outcome = JobOutcome {
            inputs: vec![(input, input_len as u64)],
            outputs: vec![OutputFile {
                path: output.clone(),
                sha256: Some(sha256_file(&output).unwrap()),
                bytes: 9,
            }],
            tensors: vec![("t".into(), "00".into())],
            ..Default::default()
        };
        (spec, outcome)
    }

    fn stale(spec: &JobSpec) -> String {
        match check(spec, CheckOptions::default()) {
            Freshness::Stale(s) => s,
            Freshness::UpToDate(_) => panic!("expected stale"),
        }
    }

    #[test]
    fn skip_then_touch_then_edit() {
        let d = tempfile::tempdir().unwrap();
        let (spec, outcome) = setup(d.path(), 100);
        assert_eq!(stale(&spec), "no fingerprint");
        let fp = record(&spec, &outcome).unwrap();
        assert_eq!(
            fp.inputs.len(),
            1,
            "spec input and engine input deduplicated"
        );
        assert_eq!(fp.outputs[0].path, "o.ckpt");
        write(&spec, &fp).unwrap();
        assert!(record_path(&spec.output).ends_with("out/o.ckpt.cw-fingerprint.json"));
        assert_eq!(
            check(&spec, CheckOptions::default()),
            Freshness::UpToDate(Box::new(fp.clone()))
        );

        // Another spec: stale.
        let mut other = spec.clone();
        other.reversed = true;
        assert_eq!(stale(&other), "job spec changed");

        // Touch the input: stale.
        let f = File::options().write(true).open(&spec.input).unwrap();
        f.set_modified(SystemTime::now() + Duration::from_secs(10))
            .unwrap();
        drop(f);
        assert!(stale(&spec).contains("in.bin changed"));
        write(&spec, &record(&spec, &outcome).unwrap()).unwrap();
        assert!(matches!(
            check(&spec, CheckOptions::default()),
            Freshness::UpToDate(_)
        ));

        // Output damaged (same size): caught by the cheap re-hash.
        std::fs::write(&spec.output, b"CONVERTED").unwrap();
        assert!(stale(&spec).contains("o.ckpt changed"));
        std::fs::write(&spec.output, b"short").unwrap();
        assert!(stale(&spec).contains("changed size"));
        std::fs::remove_file(&spec.output).unwrap();
        assert!(stale(&spec).contains("o.ckpt"));

        remove(&spec).unwrap();
        remove(&spec).unwrap();
        assert_eq!(stale(&spec), "no fingerprint");
    }

    #[test]
    fn content_change_with_same_mtime_is_caught_in_big_files() {
        let d = tempfile::tempdir().unwrap();
        let len = (WHOLE_FILE_LIMIT + 3 * EDGE) as usize;
        let (spec, outcome) = setup(d.path(), len);
        let before = print_input(&spec.input).unwrap();
        write(&spec, &record(&spec, &outcome).unwrap()).unwrap();
        // Change the last byte, restore the mtime.
        let mtime = std::fs::metadata(&spec.input).unwrap().modified().unwrap();
        let mut data = std::fs::read(&spec.input).unwrap();
        let last = data.len() - 1;
        data[last] ^= 0xFF;
        std::fs::write(&spec.input, &data).unwrap();
        File::options()
            .write(true)
            .open(&spec.input)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        let after = print_input(&spec.input).unwrap();
        assert_eq!(
            (before.bytes, before.mtime_s, before.mtime_ns),
            (after.bytes, after.mtime_s, after.mtime_ns)
        );
        assert_ne!(before.content, after.content);
        assert!(stale(&spec).contains("changed"));
    }

    #[test]
    fn tensor_hashes_required_for_golden() {
        let d = tempfile::tempdir().unwrap();
        let (spec, mut outcome) = setup(d.path(), 10);
        outcome.tensors[0].1.clear();
        write(&spec, &record(&spec, &outcome).unwrap()).unwrap();
        assert!(matches!(
            check(&spec, CheckOptions::default()),
            Freshness::UpToDate(_)
        ));
        let opts = CheckOptions {
            need_tensor_hashes: true,
            ..Default::default()
        };
        assert!(matches!(check(&spec, opts), Freshness::Stale(_)));
    }
}

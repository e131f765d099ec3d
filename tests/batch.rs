//! End-to-end tests of `convert-batch` on pure format conversions of fixture files (copied into a tempdir, so
//! touching them never changes the vendored fixtures).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, SystemTime};

use serde_json::Value;

#[path = "common/fixtures.rs"]
mod locate;

/// `tests/fixtures/edge`; a missing fixture fails the test with its path.
fn fixtures() -> PathBuf {
    locate::fixture("edge")
}

fn batch(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_convert-batch"))
        .current_dir(dir)
        .args(args)
        .output()
        .expect("run convert-batch")
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A tiny safetensors file of F32 tensors `(name, values)`.
fn write_safetensors(path: &Path, tensors: &[(&str, &[f32])]) {
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (name, vals) in tensors {
        let start = data.len();
        for v in *vals {
            data.extend_from_slice(&v.to_le_bytes());
        }
        header.insert(
            name.to_string(),
            serde_json::json!({"dtype": "F32", "shape": [vals.len()], "data_offsets": [start, data.len()]}),
        );
    }
    let mut h = serde_json::to_vec(&Value::Object(header)).unwrap();
    while h.len() % 8 != 0 {
        h.push(b' ');
    }
    let mut f = (h.len() as u64).to_le_bytes().to_vec();
    f.extend_from_slice(&h);
    f.extend_from_slice(&data);
    std::fs::write(path, f).unwrap();
}

/// A workspace: fixture copies under `in/`, a manifest `m.toml` of pure conversions, outputs under `out/`.
/// Jobs: st2ckpt, st2bin (both read dtypes.safetensors), ckpt2st, rows2st, w2ckpt (hand-made safetensors), plus
/// `corrupt` when asked.
struct Work {
    dir: tempfile::TempDir,
}

const GOOD: &[&str] = &["st2ckpt", "st2bin", "ckpt2st", "rows2st", "w2ckpt"];

impl Work {
    fn new(fx: &Path, corrupt: bool) -> Work {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("in");
        std::fs::create_dir_all(&input).unwrap();
        for f in [
            "dtypes.safetensors",
            "ms_dtypes.ckpt",
            "ms_sliced_rows.ckpt",
        ] {
            std::fs::copy(locate::require(fx.join(f)), input.join(f)).unwrap();
        }
        write_safetensors(
            &input.join("w.safetensors"),
            &[("a", &[1.0, 2.0]), ("b", &[3.0, 4.0])],
        );
        let mut m = String::from(
            r#"
[defaults]
jobs = 2

[[job]]
name = "st2ckpt"
input = "in/dtypes.safetensors"
output = "out/dtypes.ckpt"

[[job]]
name = "st2bin"
input = "in/dtypes.safetensors"
output = "out/dtypes.bin"

[[job]]
name = "ckpt2st"
input = "in/ms_dtypes.ckpt"
output = "out/ms_dtypes.safetensors"

[[job]]
name = "rows2st"
input = "in/ms_sliced_rows.ckpt"
output = "out/rows.safetensors"

[[job]]
name = "w2ckpt"
input = "in/w.safetensors"
output = "out/w.ckpt"
"#,
        );
        if corrupt {
            // A safetensors header that promises more than the file holds.
            let mut bytes = std::fs::read(fx.join("dtypes.safetensors")).unwrap();
            bytes.truncate(bytes.len() - 40);
            std::fs::write(input.join("corrupt.safetensors"), bytes).unwrap();
            m.push_str(
                "\n[[job]]\nname = \"corrupt\"\ninput = \"in/corrupt.safetensors\"\noutput = \"out/corrupt.ckpt\"\n",
            );
        }
        std::fs::write(dir.path().join("m.toml"), m).unwrap();
        Work { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn run(&self, args: &[&str]) -> Output {
        let mut a = vec!["m.toml", "--no-progress"];
        a.extend_from_slice(args);
        batch(self.path(), &a)
    }

    fn report(&self, name: &str) -> Value {
        let t = std::fs::read_to_string(self.path().join(name)).unwrap();
        serde_json::from_str(&t).unwrap()
    }

    fn touch(&self, rel: &str) {
        let f = std::fs::File::options()
            .write(true)
            .open(self.path().join(rel))
            .unwrap();
        f.set_modified(SystemTime::now() + Duration::from_secs(30))
            .unwrap();
    }
}

fn statuses(report: &Value) -> Vec<(String, String)> {
    report["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| {
            (
                j["name"].as_str().unwrap().to_string(),
                j["status"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn all(names: &[&str], status: &str) -> Vec<(String, String)> {
    names
        .iter()
        .map(|n| (n.to_string(), status.to_string()))
        .collect()
}

/// Every output file under `dir/out`, sorted, with contents (fingerprint records and hidden lock files left out).
fn outputs(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir.join("out"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy();
            !n.ends_with(".cw-fingerprint.json") && !n.starts_with('.')
        })
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn corrupt_input_fails_only_its_job() {
    let fx = fixtures();
    let w = Work::new(&fx, true);
    let o = w.run(&["--report", "r.json", "--junit", "j.xml"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let r = w.report("r.json");
    let mut want = all(GOOD, "ok");
    want.push(("corrupt".into(), "failed".into()));
    assert_eq!(statuses(&r), want, "{}", text(&o));
    let jobs = r["jobs"].as_array().unwrap();
    let corrupt = &jobs[5];
    assert!(
        corrupt["error"]
            .as_str()
            .unwrap()
            .contains("corrupt.safetensors"),
        "the error names the file: {corrupt}"
    );
    assert_eq!(r["summary"]["ok"], 5);
    assert_eq!(r["summary"]["failed"], 1);
    // Each ok job: tensors counted, outputs hashed, the hash is the file's.
    let expected_tensors = [6, 6, 11, 3, 2];
    for (j, n) in jobs.iter().zip(expected_tensors) {
        assert_eq!(j["tensors"], n, "{j}");
        assert_eq!(j["error"], Value::Null);
        for out in j["outputs"].as_array().unwrap() {
            let p = w.path().join(out["path"].as_str().unwrap());
            let got = convert_weight::fingerprint::sha256_file(&p).unwrap();
            assert_eq!(out["sha256"].as_str(), Some(got.as_str()), "{out}");
            assert_eq!(out["bytes"], std::fs::metadata(&p).unwrap().len());
        }
    }
    assert!(!w.path().join("out/corrupt.ckpt").exists());
    let junit = std::fs::read_to_string(w.path().join("j.xml")).unwrap();
    assert!(junit.contains("tests=\"6\" failures=\"1\""), "{junit}");
    assert!(junit.contains("<failure message="), "{junit}");
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("6 jobs: 5 ok, 1 failed"), "{stdout}");
}

#[test]
fn jobs_1_and_jobs_4_write_identical_bytes() {
    let fx = fixtures();
    let a = Work::new(&fx, false);
    let b = Work::new(&fx, false);
    let oa = a.run(&["--jobs", "1"]);
    assert_eq!(oa.status.code(), Some(0), "{}", text(&oa));
    let ob = b.run(&["--jobs", "4"]);
    assert_eq!(ob.status.code(), Some(0), "{}", text(&ob));
    let (xa, xb) = (outputs(a.path()), outputs(b.path()));
    assert_eq!(xa.len(), GOOD.len());
    assert!(xa == xb, "outputs differ between --jobs 1 and --jobs 4");
}

#[test]
fn reruns_skip_and_touching_an_input_reruns_only_its_jobs() {
    let fx = fixtures();
    let w = Work::new(&fx, false);
    let o = w.run(&["--report", "r1.json"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(statuses(&w.report("r1.json")), all(GOOD, "ok"));

    let o = w.run(&["--report", "r2.json"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let r2 = w.report("r2.json");
    assert_eq!(statuses(&r2), all(GOOD, "skipped"));
    assert_eq!(r2["summary"]["skipped"], 5);
    // Skipped jobs still report their outputs.
    assert!(r2["jobs"][0]["outputs"][0]["sha256"].is_string());

    w.touch("in/dtypes.safetensors");
    let o = w.run(&["--report", "r3.json"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let want: Vec<(String, String)> = GOOD
        .iter()
        .map(|n| {
            let s = if n.starts_with("st2") {
                "ok"
            } else {
                "skipped"
            };
            (n.to_string(), s.to_string())
        })
        .collect();
    assert_eq!(statuses(&w.report("r3.json")), want);

    // A damaged output is noticed (small outputs are re-hashed on every check).
    let out = w.path().join("out/w.ckpt");
    let mut bytes = std::fs::read(&out).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x55;
    std::fs::write(&out, bytes).unwrap();
    let o = w.run(&["--report", "r4.json"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let r4 = statuses(&w.report("r4.json"));
    assert_eq!(r4[4], ("w2ckpt".to_string(), "ok".to_string()));
    assert!(r4[..4].iter().all(|s| s.1 == "skipped"), "{r4:?}");

    let o = w.run(&["--report", "r5.json", "--force"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(statuses(&w.report("r5.json")), all(GOOD, "ok"));
}

#[test]
fn check_catches_a_changed_tensor() {
    let fx = fixtures();
    let w = Work::new(&fx, false);
    let o = w.run(&["--write-golden", "golden.json"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let g: Value =
        serde_json::from_str(&std::fs::read_to_string(w.path().join("golden.json")).unwrap())
            .unwrap();
    assert_eq!(g["jobs"].as_object().unwrap().len(), GOOD.len());
    assert_eq!(g["jobs"]["w2ckpt"]["tensors"].as_object().unwrap().len(), 2);

    // Unchanged: passes (skipped jobs are checked from their records).
    let o = w.run(&["--check", "golden.json", "--report", "r1.json"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));

    // Change tensor b of w.safetensors: its job reruns and fails, naming b.
    write_safetensors(
        &w.path().join("in/w.safetensors"),
        &[("a", &[1.0, 2.0]), ("b", &[3.0, 5.0])],
    );
    let o = w.run(&["--check", "golden.json", "--report", "r2.json"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let r = w.report("r2.json");
    let job = &r["jobs"][4];
    assert_eq!(job["name"], "w2ckpt");
    assert_eq!(job["status"], "failed");
    assert_eq!(
        job["error"],
        "output differs from the golden file: 1 changed: b"
    );
    assert!(r["jobs"].as_array().unwrap()[..4]
        .iter()
        .all(|j| j["status"] == "skipped"));
}

#[test]
fn dry_run_writes_nothing() {
    let fx = fixtures();
    let w = Work::new(&fx, false);
    let o = w.run(&["--dry-run", "--report", "r.json"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    for n in GOOD {
        assert!(stdout.contains(&format!("job '{n}'")), "{stdout}");
    }
    assert!(!w.path().join("out").exists());
    assert!(!w.path().join("r.json").exists());
}

#[test]
fn shards_cover_every_job_once_and_merge() {
    // Works whether jobs succeed or fail: the reports list every job of their shard.
    let fx = fixtures();
    let w = Work::new(&fx, true);
    let mut names = Vec::new();
    for k in 1..=3 {
        let rep = format!("s{k}.json");
        let o = w.run(&["--shard", &format!("{k}/3"), "--report", &rep]);
        assert!(matches!(o.status.code(), Some(0 | 1)), "{}", text(&o));
        names.extend(statuses(&w.report(&rep)).into_iter().map(|s| s.0));
    }
    names.sort();
    let mut want: Vec<String> = GOOD.iter().map(|s| s.to_string()).collect();
    want.push("corrupt".into());
    want.sort();
    assert_eq!(names, want);

    let o = batch(
        w.path(),
        &[
            "merge-reports",
            "s1.json",
            "s2.json",
            "s3.json",
            "-o",
            "all.json",
        ],
    );
    assert!(matches!(o.status.code(), Some(0 | 1)), "{}", text(&o));
    let all = w.report("all.json");
    assert_eq!(all["summary"]["jobs"], 6);
    // A shard that never reported: its jobs are added as failed when the manifest is given.
    let o = batch(
        w.path(),
        &[
            "merge-reports",
            "s1.json",
            "s3.json",
            "-o",
            "part.json",
            "--manifest",
            "m.toml",
        ],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let part = w.report("part.json");
    assert_eq!(part["summary"]["jobs"], 6);
    let s2 = statuses(&w.report("s2.json"));
    for (name, status) in statuses(&part) {
        if s2.iter().any(|s| s.0 == name) {
            assert_eq!(status, "failed", "{name}");
        }
    }
    // The same report twice: duplicate job names.
    let o = batch(
        w.path(),
        &["merge-reports", "all.json", "s1.json", "-o", "x.json"],
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("is in both"));

    // auto/N reads the index from the environment (0-based).
    let o = Command::new(env!("CARGO_BIN_EXE_convert-batch"))
        .current_dir(w.path())
        .args([
            "m.toml",
            "--no-progress",
            "--shard",
            "auto/3",
            "--report",
            "a.json",
            "--dry-run",
        ])
        .env("JOB_COMPLETION_INDEX", "1")
        .env_remove("SLURM_ARRAY_TASK_ID")
        .output()
        .unwrap();
    assert!(matches!(o.status.code(), Some(0 | 1)), "{}", text(&o));
    let s2: Vec<String> = statuses(&w.report("s2.json"))
        .into_iter()
        .map(|s| s.0)
        .collect();
    let stdout = String::from_utf8_lossy(&o.stdout);
    for n in &want {
        assert_eq!(
            stdout.contains(&format!("job '{n}'")),
            s2.contains(n),
            "auto/3 with index 1 runs shard 2/3: {stdout}"
        );
    }
}

#[test]
fn bad_manifest_exits_2_with_the_line() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("m.toml"),
        "[[job]]\nname = \"a\"\ninput = \"x.bin\"\noutput = \"y.ckpt\"\n\n[[job]]\nname = \"a\"\ninput = \"z.bin\"\noutput = \"w.ckpt\"\n",
    )
    .unwrap();
    let o = batch(dir.path(), &["m.toml", "--report", "r.json"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("m.toml:7: duplicate job name 'a'"), "{err}");
    assert!(!dir.path().join("r.json").exists());

    std::fs::write(
        dir.path().join("m.toml"),
        "[[job]]\ninput = \"x.bin\"\noutput = \"y.ckpt\"\ncolour = \"red\"\n",
    )
    .unwrap();
    let o = batch(dir.path(), &["m.toml"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("m.toml:4: unknown field `colour`"));

    for args in [
        &["m.toml", "--jobs", "0"][..],
        &["m.toml", "--shard", "5/3"],
        &["m.toml", "--memory-budget", "lots"],
        &[],
    ] {
        let o = batch(dir.path(), args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", text(&o));
    }
}

#[test]
fn plain_progress_lines_when_stderr_is_not_a_terminal() {
    let fx = fixtures();
    let w = Work::new(&fx, true);
    let o = batch(w.path(), &["m.toml", "--jobs", "1"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("convert-batch: [6/6]"), "{err}");
    assert!(err.contains("failed corrupt"), "{err}");
    let o = batch(w.path(), &["m.toml", "--jobs", "1", "--no-progress"]);
    assert!(
        String::from_utf8_lossy(&o.stderr).is_empty(),
        "{}",
        text(&o)
    );
}

// ---------------------------------------------------------------------------------------------------------------
// Issue 9 §4: what a new user hits. These tests make their own inputs (no fixtures needed).

fn weight_cmd(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_convert-weight"))
        .current_dir(dir)
        .args(args)
        .output()
        .expect("run convert-weight")
}

/// A directory with `in/a.safetensors` and `in/b.safetensors` and the manifest text `m` as `jobs.toml`.
fn small_work(m: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("in")).unwrap();
    write_safetensors(
        &dir.path().join("in/a.safetensors"),
        &[("x", &[1.0, 2.0]), ("y", &[3.0])],
    );
    write_safetensors(&dir.path().join("in/b.safetensors"), &[("z", &[4.0])]);
    std::fs::write(dir.path().join("jobs.toml"), m).unwrap();
    dir
}

/// §4.2: an unknown model is refused before anything runs, with `file:line`, exit 2.
#[test]
fn unknown_model_is_refused_before_anything_runs() {
    let d = small_work(
        "[[job]]\nname = \"ok\"\ninput = \"in/b.safetensors\"\noutput = \"out/b.ckpt\"\n\n[[job]]\nname = \"typo\"\nmodel = \"lama\"\ninput = \"in/a.safetensors\"\noutput = \"out/a.ckpt\"\n",
    );
    let o = batch(
        d.path(),
        &["jobs.toml", "--no-progress", "--report", "r.json"],
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("jobs.toml:8: unknown model 'lama'"), "{err}");
    assert!(!d.path().join("out").exists(), "nothing ran");
    assert!(!d.path().join("r.json").exists());
}

/// §4.9: a type error reads in the manifest's words.
#[test]
fn manifest_type_errors_in_the_manifest_words() {
    let d = small_work(
        "[[job]]\ninput = \"in/a.safetensors\"\noutput = \"out/a.ckpt\"\nn_head = \"4\"\n",
    );
    let o = batch(d.path(), &["jobs.toml"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(r#"jobs.toml:4: key 'n_head' must be a positive integer, got the string "4""#),
        "{err}"
    );
    assert!(!err.contains("expected i64"), "{err}");
}

/// §3: `--n_head 0` is refused by the CLI as by the manifest; sizes and dtypes go through the same parsers.
#[test]
fn cli_refuses_what_the_manifest_refuses() {
    let d = small_work("");
    for (args, want) in [
        (&["--n_head", "0"][..], "must be a positive integer, got 0"),
        (&["--layers=-2"], "must be a positive integer"),
        (&["--dtype", "fp8"], "unknown dtype 'fp8'"),
        (&["--device", "tpu"], "unknown device 'tpu'"),
        (&["--max-shard-size", "1.5GB"], "invalid size '1.5GB'"),
    ] {
        let mut a = vec![
            "--input_path",
            "in/a.safetensors",
            "--output_path",
            "out/a.ckpt",
        ];
        a.extend_from_slice(args);
        let o = weight_cmd(d.path(), &a);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", text(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(!d.path().join("out").exists());
    }
}

/// §4.7: every path in a report is absolute, for jobs that ran and for jobs skipped, with a relative manifest.
#[test]
fn report_paths_are_absolute() {
    let d = small_work(
        "[[job]]\nname = \"a\"\ninput = \"in/a.safetensors\"\noutput = \"out/a.ckpt\"\n[[job]]\nname = \"b\"\ninput = \"./in/../in/a.safetensors\"\noutput = \"out/shards/\"\nmax_shard_size = 8\n[[job]]\nname = \"c\"\ninput = \"in/b.safetensors\"\noutput = \"out/c.bin\"\n",
    );
    for (k, status) in [(1, "ok"), (2, "skipped")] {
        let rep = format!("r{k}.json");
        let o = batch(d.path(), &["jobs.toml", "--no-progress", "--report", &rep]);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        let r: Value =
            serde_json::from_str(&std::fs::read_to_string(d.path().join(&rep)).unwrap()).unwrap();
        let (mut n, mut hashed) = (0, 0);
        for j in r["jobs"].as_array().unwrap() {
            assert_eq!(j["status"], status, "{j}");
            for e in j["inputs"]
                .as_array()
                .unwrap()
                .iter()
                .chain(j["outputs"].as_array().unwrap())
            {
                let p = Path::new(e["path"].as_str().unwrap());
                assert!(p.is_absolute(), "run {k}: {}", p.display());
                assert!(p.exists(), "run {k}: {}", p.display());
                assert!(!p.to_string_lossy().contains("/./"), "{}", p.display());
                assert!(!p.to_string_lossy().contains("/../"), "{}", p.display());
                // Output hashes (computed while writing, shards and index included) are the files' hashes.
                if let Some(h) = e.get("sha256").and_then(Value::as_str) {
                    let got = convert_weight::fsio::sha256_file(p).unwrap();
                    assert_eq!(h, got, "{}", p.display());
                    hashed += 1;
                }
                n += 1;
            }
        }
        assert!(n >= 6, "run {k}: {n} paths checked");
        assert!(hashed >= 4, "run {k}: {hashed} output hashes checked");
    }
}

/// §4.8: `verify --help` documents A and B and its own --model/--reversed; no arguments prints the usage.
#[test]
fn verify_help_and_bare_usage() {
    let d = tempfile::tempdir().unwrap();
    let o = weight_cmd(d.path(), &["verify", "--help"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let help = String::from_utf8_lossy(&o.stdout);
    for want in [
        "<A>",
        "<B>",
        "The checkpoint to check",
        "The expected checkpoint",
        "then compare",
        "A is a MindSpore checkpoint",
    ] {
        assert!(help.contains(want), "verify --help lacks {want:?}:\n{help}");
    }
    assert!(
        !help.contains("Convert MindSpore -> torch/HF instead"),
        "convert's help text in verify:\n{help}"
    );
    let o = weight_cmd(d.path(), &[]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("Usage:"), "{err}");
    assert!(err.contains("--input_path"), "{err}");
    assert!(!err.contains("error: missing --input_path"), "{err}");
}

/// §4.11: outputs, shards, index, fingerprints, reports and golden files get the mode of `open(O_CREAT, 0666)`
/// under the umask, not the temporary file's 0600.
#[cfg(unix)]
#[test]
fn outputs_get_the_mode_of_a_plain_create() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let d = small_work(
        "[[job]]\nname = \"a\"\ninput = \"in/a.safetensors\"\noutput = \"out/a.ckpt\"\n[[job]]\nname = \"b\"\ninput = \"in/a.safetensors\"\noutput = \"out/shards/\"\nmax_shard_size = 8\n",
    );
    let umask = 0o027;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_convert-batch"));
    cmd.current_dir(d.path()).args([
        "jobs.toml",
        "--no-progress",
        "--report",
        "rep/r.json",
        "--junit",
        "rep/j.xml",
        "--write-golden",
        "golden.json",
    ]);
    // SAFETY: umask is async-signal-safe; it only sets the child's mask before exec.
    unsafe {
        cmd.pre_exec(move || {
            libc::umask(umask);
            Ok(())
        });
    }
    let o = cmd.output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let mut files = vec![
        d.path().join("rep/r.json"),
        d.path().join("rep/j.xml"),
        d.path().join("golden.json"),
    ];
    for sub in ["out", "out/shards"] {
        for e in std::fs::read_dir(d.path().join(sub)).unwrap() {
            let p = e.unwrap().path();
            if p.is_file() && !p.file_name().unwrap().to_string_lossy().starts_with('.') {
                files.push(p);
            }
        }
    }
    assert!(files.len() >= 8, "{files:?}");
    assert!(files
        .iter()
        .any(|p| p.to_string_lossy().ends_with(".index.json")));
    assert!(files
        .iter()
        .any(|p| p.to_string_lossy().ends_with(".cw-fingerprint.json")));
    for p in &files {
        let mode = std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o666 & !umask, "{}: {mode:o}", p.display());
    }
    // The single-job CLI too.
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_convert-weight"));
    cmd.current_dir(d.path()).args([
        "--input_path",
        "in/b.safetensors",
        "--output_path",
        "single.bin",
    ]);
    // SAFETY: as above.
    unsafe {
        cmd.pre_exec(move || {
            libc::umask(umask);
            Ok(())
        });
    }
    let o = cmd.output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let mode = std::fs::metadata(d.path().join("single.bin"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o666 & !umask);
}

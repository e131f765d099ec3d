//! Many jobs at once: planning, incremental skips, memory admission, failure isolation, progress, shards.
//! One module per concern: [`admission`] (memory budget, first-fit admission), [`progress`] (bars and lines),
//! [`shard`] (which jobs a process runs), [`job`] (the phases of one job: prepare, execute, report).
//!
//! The runner knows neither formats nor models: it drives jobs through an [`Executor`] ([`Engine`] calls
//! [`convert::plan`] and [`convert::run`]; tests use fakes).
//!
//! A run has two phases. First every selected job is checked against its fingerprint (up to date → `skipped`) and
//! planned from headers (a planning error → `failed`), on a rayon pool of `jobs` threads. Then `jobs` worker threads
//! take the planned jobs in manifest order, first fit: a job starts when its planned peak fits in what is left of
//! the memory budget, or when nothing else runs (a job bigger than the whole budget runs alone). The workers are
//! plain threads, not rayon tasks, because they block waiting for admission while the engine itself may use the
//! global rayon pool; a blocked rayon worker could otherwise be handed another job's admission wait by work stealing.

mod admission;
mod job;
mod progress;
mod shard;

use std::any::Any;
use std::io::Write;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use rayon::prelude::*;

use crate::convert::{self, ConvertError, JobOutcome, PlanSummary, RunControl};
use crate::fingerprint::{self, CheckOptions, Freshness};
use crate::golden::Golden;
use crate::manifest::BatchJob;
use crate::options::JobSpec;
use crate::report::{human_bytes, JobReport, Status};

pub use admission::{default_memory_budget, mem_available, peak_rss};
pub use job::{base_report, report_path};
pub use progress::ProgressMode;
pub use shard::{fnv1a, Shard, ShardError};

use admission::{lock, Admission};
use job::{execute, failed, inputs_of, panic_message, prepare, Prepared};
use progress::Progress;

/// Why an executor's step did not produce its result.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ExecError {
    /// It saw the cancel flag and stopped (its temporary files removed).
    #[error("cancelled")]
    Cancelled,
    /// It failed; the whole cause chain on one line.
    #[error("{0}")]
    Failed(String),
}

impl From<ConvertError> for ExecError {
    fn from(e: ConvertError) -> Self {
        match e {
            ConvertError::Cancelled => ExecError::Cancelled,
            e => ExecError::Failed(convert::error_chain(&e)),
        }
    }
}

/// What the runner needs of a conversion engine.
pub trait Executor: Sync {
    /// Plan from headers only (used for dry runs and memory admission).
    fn plan(&self, spec: &JobSpec) -> Result<PlanSummary, ExecError>;
    /// Take the exclusive lock of the job's output (waiting while another process holds it), held until the guard
    /// drops. The runner checks the fingerprint again and runs the job under it, so two `convert-batch` processes
    /// never convert one output at once. Default: no lock.
    fn lock_output(&self, spec: &JobSpec) -> Result<OutputGuard, ExecError> {
        let _ = spec;
        Ok(OutputGuard::default())
    }
    /// Run to completion while holding `guard` (from [`lock_output`](Self::lock_output)); outputs appear
    /// atomically.
    fn run(
        &self,
        spec: &JobSpec,
        ctl: &RunControl,
        guard: &OutputGuard,
    ) -> Result<JobOutcome, ExecError>;
}

/// An executor's output lock (opaque to the runner), released when dropped.
#[derive(Default)]
pub struct OutputGuard(pub Option<Box<dyn Any + Send>>);

/// The real engine: [`convert::plan`], [`convert::lock_output`] and [`convert::run_locked`].
#[derive(Clone, Copy, Debug, Default)]
pub struct Engine;

impl Executor for Engine {
    fn plan(&self, spec: &JobSpec) -> Result<PlanSummary, ExecError> {
        Ok(convert::plan(spec)?)
    }
    fn lock_output(&self, spec: &JobSpec) -> Result<OutputGuard, ExecError> {
        let lock = convert::lock_output(spec)?;
        Ok(OutputGuard(Some(Box::new(lock))))
    }
    fn run(
        &self,
        spec: &JobSpec,
        ctl: &RunControl,
        guard: &OutputGuard,
    ) -> Result<JobOutcome, ExecError> {
        let held = guard
            .0
            .as_ref()
            .and_then(|g| g.downcast_ref::<convert::OutputLock>());
        let ran = match held {
            Some(lock) => convert::run_locked(spec, ctl, lock),
            None => convert::run(spec, ctl),
        };
        Ok(ran?)
    }
}

/// How to run a batch.
#[derive(Clone, Debug)]
pub struct Options {
    /// Jobs running at once (at least 1).
    pub jobs: usize,
    /// Sum of planned peaks allowed to run together (bytes).
    pub memory_budget: u64,
    /// Rerun jobs that are up to date.
    pub force: bool,
    /// Re-hash outputs of up-to-date jobs however big they are.
    pub verify_outputs: bool,
    /// A job whose record lacks tensor hashes reruns (needed to write or check a golden file).
    pub need_tensor_hashes: bool,
    /// Fail any job whose tensors differ from this golden file.
    pub check: Option<Golden>,
    pub progress: ProgressMode,
    /// Set to stop: running jobs stop between tensors, waiting ones do not start.
    pub cancel: Arc<AtomicBool>,
}

impl Options {
    /// How hard the fingerprint check looks under these options.
    pub(crate) fn check_options(&self) -> CheckOptions {
        CheckOptions {
            verify: self.verify_outputs,
            need_tensor_hashes: self.need_tensor_hashes,
        }
    }
}

impl Default for Options {
    fn default() -> Self {
        Options {
            jobs: 1,
            memory_budget: u64::MAX,
            force: false,
            verify_outputs: false,
            need_tensor_hashes: false,
            check: None,
            progress: ProgressMode::Off,
            cancel: Arc::new(AtomicBool::new(false)),
        }
    }
}

/// A finished job: its report line and its output tensors (name, sha256) for golden files.
#[derive(Clone, Debug, PartialEq)]
pub struct JobResult {
    pub report: JobReport,
    pub tensors: Vec<(String, String)>,
}

// ---------------------------------------------------------------------------------------------------------------
// Batches

fn pool(jobs: usize) -> Option<rayon::ThreadPool> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(jobs.max(1))
        .thread_name(|i| format!("cw-plan-{i}"))
        .build()
        .ok()
}

/// A planned job waiting for admission.
struct Admitted {
    /// Index into the jobs.
    index: usize,
    peak: u64,
    plan_secs: f64,
    inputs: Vec<(PathBuf, u64)>,
}

/// Run `jobs` and return one result per job, in the given order. Never stops at a failure.
pub fn run_batch(jobs: &[&BatchJob], exec: &dyn Executor, opts: &Options) -> Vec<JobResult> {
    let n_threads = opts.jobs.max(1);
    let prep = || -> Vec<Prepared> { jobs.par_iter().map(|j| prepare(j, exec, opts)).collect() };
    let prepared = match pool(n_threads) {
        Some(p) => p.install(prep),
        None => prep(),
    };

    let mut results: Vec<Option<JobResult>> = Vec::with_capacity(jobs.len());
    let mut planned: Vec<Admitted> = Vec::new();
    let mut totals = vec![0u64; jobs.len()];
    for (i, p) in prepared.into_iter().enumerate() {
        match p {
            Prepared::Done(r) => results.push(Some(r)),
            Prepared::Planned { plan, plan_secs } => {
                totals[i] = plan.out_bytes;
                planned.push(Admitted {
                    index: i,
                    peak: plan.peak_bytes,
                    plan_secs,
                    inputs: plan.inputs,
                });
                results.push(None);
            }
        }
    }

    let progress = Progress::new(
        opts.progress,
        jobs.iter().map(|j| j.name.clone()).collect(),
        totals,
    );
    for (i, r) in results.iter().enumerate() {
        if let Some(r) = r {
            progress.finished(i, &r.report);
        }
    }
    let peaks: Vec<u64> = planned.iter().map(|p| p.peak).collect();
    let admission = Admission::new(planned.len(), opts.memory_budget);
    let done: Mutex<Vec<(usize, JobResult)>> = Mutex::new(Vec::new());
    let workers = n_threads.min(planned.len());
    // Per-job peak RSS is exact only when jobs never overlap.
    let solo = workers == 1;
    std::thread::scope(|s| {
        for w in 0..workers {
            let (admission, peaks, planned, progress, done) =
                (&admission, &peaks, &planned, &progress, &done);
            let spawned = std::thread::Builder::new()
                .name(format!("cw-job-{w}"))
                .spawn_scoped(s, move || {
                    while let Some((k, admitted)) = admission.next(peaks, &opts.cancel) {
                        let a = &planned[k];
                        let job = jobs[a.index];
                        let mut r = if admitted {
                            progress.started(a.index);
                            let cb = |b: u64| progress.update(a.index, b);
                            let r = execute(job, exec, opts, &cb, a.plan_secs, solo);
                            admission.done(a.peak);
                            r
                        } else {
                            failed(
                                job,
                                Status::Cancelled,
                                "cancelled before start".into(),
                                a.plan_secs,
                            )
                        };
                        if r.report.status != Status::Ok && !a.inputs.is_empty() {
                            // The planned list beats the bare input path (shards, directories).
                            r.report.inputs = inputs_of(&job.spec, &a.inputs);
                        }
                        progress.finished(a.index, &r.report);
                        lock(done).push((a.index, r));
                    }
                });
            if let Err(e) = spawned {
                // Other workers (or none) take the jobs; with none, they are reported below.
                eprintln!("convert-batch: cannot start worker thread {w}: {e}");
            }
        }
    });
    progress.close();
    for (i, r) in lock(&done).drain(..) {
        results[i] = Some(r);
    }
    results
        .into_iter()
        .zip(jobs)
        .map(|(r, j)| {
            r.unwrap_or_else(|| {
                failed(
                    j,
                    Status::Failed,
                    "no worker thread could run this job".into(),
                    0.0,
                )
            })
        })
        .collect()
}

/// `--dry-run`: plan every job and print the plans to `out`; writes no file. Returns whether every plan succeeded.
pub fn dry_run(
    jobs: &[&BatchJob],
    exec: &dyn Executor,
    opts: &Options,
    out: &mut dyn Write,
) -> bool {
    let run = || -> Vec<(Result<PlanSummary, ExecError>, Option<String>)> {
        jobs.par_iter()
            .map(|j| {
                let fresh = if opts.force {
                    Some("--force".to_string())
                } else {
                    match fingerprint::check(&j.spec, opts.check_options()) {
                        Freshness::UpToDate(_) => None,
                        Freshness::Stale(why) => Some(why),
                    }
                };
                let plan =
                    catch_unwind(AssertUnwindSafe(|| exec.plan(&j.spec))).unwrap_or_else(|p| {
                        Err(ExecError::Failed(format!(
                            "panic while planning: {}",
                            panic_message(&*p)
                        )))
                    });
                (plan, fresh)
            })
            .collect()
    };
    let results = match pool(opts.jobs) {
        Some(p) => p.install(run),
        None => run(),
    };
    let mut ok = true;
    for (j, (plan, stale)) in jobs.iter().zip(results) {
        let _ = writeln!(
            out,
            "job '{}' (line {}): {} -> {}",
            j.name,
            j.line,
            j.spec.input.display(),
            j.spec.output.display()
        );
        match stale {
            None => {
                let _ = writeln!(out, "  up to date: would be skipped (use --force to redo)");
            }
            Some(why) => {
                let _ = writeln!(out, "  would run: {why}");
            }
        }
        match plan {
            Ok(p) => {
                for l in &p.lines {
                    let _ = writeln!(out, "  {l}");
                }
                let _ = writeln!(
                    out,
                    "  {} output tensors, {} to write, planned peak {}",
                    p.outputs.len(),
                    human_bytes(p.out_bytes),
                    human_bytes(p.peak_bytes)
                );
            }
            Err(e) => {
                ok = false;
                let _ = writeln!(out, "  FAILED: {e}");
            }
        }
    }
    ok
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::convert::OutputFile;
    use std::collections::HashMap;
    use std::path::Path;
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    /// A fake engine: each job's behaviour comes from its input's file name, and peaks from a table.
    #[derive(Default)]
    struct Fake {
        peaks: HashMap<String, u64>,
        /// Sum of peaks of running jobs, and how many run.
        in_flight: Mutex<(u64, usize)>,
        /// (max sum of peaks when more than one ran, whether a job over budget ever ran with others).
        seen: Mutex<Vec<(u64, usize, String)>>,
        runs: Mutex<Vec<String>>,
        /// Tensor hash to report (changed by the golden test).
        hash: Mutex<String>,
    }

    fn stem(spec: &JobSpec) -> String {
        spec.input
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    impl Executor for Fake {
        fn plan(&self, spec: &JobSpec) -> Result<PlanSummary, ExecError> {
            let s = stem(spec);
            if s.starts_with("badplan") {
                return Err(ExecError::Failed(format!(
                    "{}: not a checkpoint",
                    spec.input.display()
                )));
            }
            Ok(PlanSummary {
                lines: vec![format!("{s} -> {s}  take")],
                outputs: vec![s.clone()],
                out_bytes: 4,
                peak_bytes: self.peaks.get(&s).copied().unwrap_or(1),
                ..Default::default()
            })
        }

        fn run(
            &self,
            spec: &JobSpec,
            ctl: &RunControl,
            _guard: &OutputGuard,
        ) -> Result<JobOutcome, ExecError> {
            let s = stem(spec);
            let peak = self.peaks.get(&s).copied().unwrap_or(1);
            {
                let mut f = lock(&self.in_flight);
                f.0 += peak;
                f.1 += 1;
                lock(&self.seen).push((f.0, f.1, s.clone()));
            }
            std::thread::sleep(Duration::from_millis(15));
            lock(&self.in_flight).0 -= peak;
            lock(&self.in_flight).1 -= 1;
            lock(&self.runs).push(s.clone());
            (ctl.progress)(4);
            if s.starts_with("fail") {
                return Err(ExecError::Failed(format!(
                    "{}: tensor 'x': truncated",
                    spec.input.display()
                )));
            }
            if s.starts_with("panic") {
                panic!("boom in {s}");
            }
            if ctl.cancel.load(Ordering::SeqCst) {
                return Err(ExecError::Cancelled);
            }
            let data = std::fs::read(&spec.input).map_err(|e| ExecError::Failed(e.to_string()))?;
            std::fs::write(&spec.output, &data).map_err(|e| ExecError::Failed(e.to_string()))?;
            Ok(JobOutcome {
                inputs: vec![(spec.input.clone(), data.len() as u64)],
                outputs: vec![OutputFile {
                    path: spec.output.clone(),
                    sha256: Some(
                        fingerprint::sha256_file(&spec.output)
                            .map_err(|e| ExecError::Failed(e.to_string()))?,
                    ),
                    bytes: data.len() as u64,
                }],
                tensors: vec![(s.clone(), lock(&self.hash).clone())],
                bytes_read: data.len() as u64,
                bytes_written: data.len() as u64,
                warnings: vec![],
            })
        }
    }

    /// Jobs `name` reading `<dir>/<name>.in` and writing `<dir>/<name>.out`; input files created.
    fn jobs(dir: &Path, names: &[&str]) -> Vec<BatchJob> {
        names
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let input = dir.join(format!("{n}.in"));
                std::fs::write(&input, n.as_bytes()).unwrap();
                BatchJob {
                    name: n.to_string(),
                    spec: JobSpec {
                        input,
                        output: dir.join(format!("{n}.out")),
                        ..Default::default()
                    },
                    line: i + 1,
                }
            })
            .collect()
    }

    fn statuses(r: &[JobResult]) -> Vec<(String, Status)> {
        r.iter()
            .map(|r| (r.report.name.clone(), r.report.status))
            .collect()
    }

    fn opts(jobs: usize) -> Options {
        Options {
            jobs,
            ..Default::default()
        }
    }

    #[test]
    fn admission_respects_the_memory_budget() {
        let d = tempfile::tempdir().unwrap();
        let names = ["a", "b", "c", "d", "huge", "e", "f", "g"];
        let peaks = [60, 50, 40, 30, 150, 10, 70, 20];
        let fake = Fake {
            peaks: names
                .iter()
                .zip(peaks)
                .map(|(n, p)| (n.to_string(), p))
                .collect(),
            ..Default::default()
        };
        let js = jobs(d.path(), &names);
        let refs: Vec<&BatchJob> = js.iter().collect();
        let o = Options {
            memory_budget: 100,
            ..opts(4)
        };
        let r = run_batch(&refs, &fake, &o);
        assert!(
            r.iter().all(|r| r.report.status == Status::Ok),
            "{:?}",
            statuses(&r)
        );
        let seen = lock(&fake.seen);
        assert_eq!(seen.len(), names.len());
        for (sum, count, name) in seen.iter() {
            if name == "huge" {
                assert_eq!(*count, 1, "the job over budget runs alone");
            } else {
                assert!(*sum <= 100, "{name} started with {sum} bytes in flight");
            }
        }
        assert!(seen.iter().any(|s| s.1 > 1), "small jobs ran concurrently");
    }

    #[test]
    fn failures_and_panics_are_isolated() {
        let d = tempfile::tempdir().unwrap();
        let js = jobs(d.path(), &["ok1", "fail1", "panic1", "badplan1", "ok2"]);
        let refs: Vec<&BatchJob> = js.iter().collect();
        let r = run_batch(&refs, &Fake::default(), &opts(3));
        assert_eq!(
            statuses(&r),
            [
                ("ok1".to_string(), Status::Ok),
                ("fail1".to_string(), Status::Failed),
                ("panic1".to_string(), Status::Failed),
                ("badplan1".to_string(), Status::Failed),
                ("ok2".to_string(), Status::Ok),
            ]
        );
        assert!(r[1]
            .report
            .error
            .as_deref()
            .unwrap()
            .contains("fail1.in: tensor 'x': truncated"));
        assert_eq!(r[2].report.error.as_deref(), Some("panic: boom in panic1"));
        assert!(r[3]
            .report
            .error
            .as_deref()
            .unwrap()
            .contains("not a checkpoint"));
        assert!(d.path().join("ok2.out").exists());
        assert!(!fingerprint::record_path(&d.path().join("fail1.out")).exists());
        let ok = &r[0].report;
        assert_eq!(ok.tensors, 1);
        assert_eq!(ok.outputs[0].bytes, 3);
        assert!(ok.outputs[0].sha256.is_some());
        assert!(ok.peak_rss_bytes.is_some());
    }

    #[test]
    fn reruns_skip_and_touching_reruns_only_its_jobs() {
        let d = tempfile::tempdir().unwrap();
        let js = jobs(d.path(), &["a", "b", "c"]);
        let refs: Vec<&BatchJob> = js.iter().collect();
        let fake = Fake::default();
        run_batch(&refs, &fake, &opts(2));
        assert_eq!(lock(&fake.runs).len(), 3);

        let r = run_batch(&refs, &fake, &opts(2));
        assert!(
            r.iter().all(|r| r.report.status == Status::Skipped),
            "{:?}",
            statuses(&r)
        );
        assert_eq!(r[0].report.outputs[0].bytes, 1);
        assert_eq!(r[0].tensors.len(), 1);
        assert_eq!(lock(&fake.runs).len(), 3);

        let f = std::fs::File::options()
            .write(true)
            .open(&js[1].spec.input)
            .unwrap();
        f.set_modified(std::time::SystemTime::now() + Duration::from_secs(5))
            .unwrap();
        drop(f);
        let r = run_batch(&refs, &fake, &opts(2));
        assert_eq!(
            statuses(&r).into_iter().map(|s| s.1).collect::<Vec<_>>(),
            [Status::Skipped, Status::Ok, Status::Skipped]
        );
        assert_eq!(lock(&fake.runs).len(), 4);

        let forced = Options {
            force: true,
            ..opts(2)
        };
        let r = run_batch(&refs, &fake, &forced);
        assert!(r.iter().all(|r| r.report.status == Status::Ok));
    }

    #[test]
    fn golden_check_fails_changed_jobs() {
        let d = tempfile::tempdir().unwrap();
        let js = jobs(d.path(), &["a", "b"]);
        let refs: Vec<&BatchJob> = js.iter().collect();
        let fake = Fake::default();
        *lock(&fake.hash) = "h1".into();
        let r = run_batch(&refs, &fake, &opts(1));
        let mut g = Golden::new();
        for x in &r {
            g.insert(&x.report.name, &x.tensors);
        }
        // Skipped jobs are checked from their records.
        let check = Options {
            check: Some(g.clone()),
            need_tensor_hashes: true,
            ..opts(1)
        };
        let r = run_batch(&refs, &fake, &check);
        assert!(r.iter().all(|r| r.report.status == Status::Skipped));
        *lock(&fake.hash) = "h2".into();
        let forced = Options {
            force: true,
            ..check
        };
        let r = run_batch(&refs, &fake, &forced);
        assert_eq!(r[0].report.status, Status::Failed);
        assert_eq!(
            r[0].report.error.as_deref(),
            Some("output differs from the golden file: 1 changed: a")
        );
    }

    #[test]
    fn cancelled_jobs_are_reported() {
        let d = tempfile::tempdir().unwrap();
        let js = jobs(d.path(), &["a", "b"]);
        let refs: Vec<&BatchJob> = js.iter().collect();
        let o = opts(1);
        o.cancel.store(true, Ordering::SeqCst);
        let r = run_batch(&refs, &Fake::default(), &o);
        assert!(r.iter().all(|r| r.report.status == Status::Cancelled));
        assert!(!d.path().join("a.out").exists());
    }

    #[test]
    fn dry_run_writes_nothing() {
        let d = tempfile::tempdir().unwrap();
        let js = jobs(d.path(), &["a", "badplan"]);
        let refs: Vec<&BatchJob> = js.iter().collect();
        let mut out = Vec::new();
        let ok = dry_run(&refs, &Fake::default(), &opts(2), &mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(!ok);
        assert!(text.contains("job 'a' (line 1)"), "{text}");
        assert!(text.contains("  a -> a  take"), "{text}");
        assert!(text.contains("FAILED"), "{text}");
        assert!(!d.path().join("a.out").exists());
    }
}

//! Many jobs at once: planning, incremental skips, memory admission, failure isolation, progress, shards.
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

use std::any::Any;
use std::collections::VecDeque;
use std::io::{IsTerminal, Write};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use rayon::prelude::*;

use crate::convert::{self, ConvertError, JobOutcome, JobSpec, PlanSummary, RunControl};
use crate::fingerprint::{self, CheckOptions, Freshness};
use crate::golden::Golden;
use crate::manifest::BatchJob;
use crate::report::{human_bytes, InputEntry, JobReport, OutputEntry, Status};

/// Why a job's run did not produce an outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExecError {
    /// It saw the cancel flag and stopped (its temporary files removed).
    Cancelled,
    /// It failed; the whole cause chain.
    Failed(String),
}

/// What the runner needs of a conversion engine.
pub trait Executor: Sync {
    /// Plan from headers only (used for dry runs and memory admission).
    fn plan(&self, spec: &JobSpec) -> Result<PlanSummary, String>;
    /// Take the exclusive lock of the job's output (waiting while another process holds it), held until the guard
    /// drops. The runner checks the fingerprint again and runs the job under it, so two `convert-batch` processes
    /// never convert one output at once. Default: no lock.
    fn lock_output(&self, spec: &JobSpec) -> Result<OutputGuard, String> {
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
    fn plan(&self, spec: &JobSpec) -> Result<PlanSummary, String> {
        convert::plan(spec).map_err(|e| convert::error_chain(&e))
    }
    fn lock_output(&self, spec: &JobSpec) -> Result<OutputGuard, String> {
        let lock = convert::lock_output(spec).map_err(|e| convert::error_chain(&e))?;
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
        ran.map_err(|e| match e {
            ConvertError::Cancelled => ExecError::Cancelled,
            e => ExecError::Failed(convert::error_chain(&e)),
        })
    }
}

/// What to show on stderr while jobs run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgressMode {
    /// Nothing.
    Off,
    /// A line when a job ends and a status line at most every `interval`.
    Plain { interval: Duration },
    /// indicatif bars: one per running job and one for total bytes.
    Bars,
}

impl ProgressMode {
    /// Bars when stderr is a terminal, plain lines every 10 s otherwise; `Off` when `quiet`.
    pub fn auto(quiet: bool) -> ProgressMode {
        if quiet {
            ProgressMode::Off
        } else if std::io::stderr().is_terminal() {
            ProgressMode::Bars
        } else {
            ProgressMode::Plain {
                interval: Duration::from_secs(10),
            }
        }
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
    fn check_options(&self) -> CheckOptions {
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
// Shards

/// 64-bit FNV-1a: a stable hash (never Rust's randomised one) so every machine picks the same slice.
pub fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// A `--shard` argument: which slice of the jobs this process runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    /// 0-based index, `< count`.
    pub index: u64,
    pub count: u64,
}

impl Shard {
    /// Parse `K/N` (1-based K) or `auto/N`, which reads the 0-based index from `SLURM_ARRAY_TASK_ID` (minus
    /// `SLURM_ARRAY_TASK_MIN` when set) or `JOB_COMPLETION_INDEX` through `env`.
    pub fn parse(s: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Shard, String> {
        let bad = || format!("invalid --shard '{s}': expected K/N (1 <= K <= N) or auto/N");
        let (k, n) = s.split_once('/').ok_or_else(bad)?;
        let count: u64 = n.trim().parse().map_err(|_| bad())?;
        if count == 0 {
            return Err(bad());
        }
        let index = if k.trim() == "auto" {
            let num = |var: &str| -> Result<Option<u64>, String> {
                match env(var) {
                    None => Ok(None),
                    Some(v) => v
                        .trim()
                        .parse::<u64>()
                        .map(Some)
                        .map_err(|_| format!("--shard auto: {var}='{v}' is not a number")),
                }
            };
            match (num("SLURM_ARRAY_TASK_ID")?, num("JOB_COMPLETION_INDEX")?) {
                (Some(id), _) => {
                    let min = num("SLURM_ARRAY_TASK_MIN")?.unwrap_or(0);
                    id.checked_sub(min).ok_or_else(|| {
                        format!("--shard auto: SLURM_ARRAY_TASK_ID {id} is below SLURM_ARRAY_TASK_MIN {min}")
                    })?
                }
                (None, Some(i)) => i,
                (None, None) => {
                    return Err(
                        "--shard auto/N needs SLURM_ARRAY_TASK_ID or JOB_COMPLETION_INDEX in the environment"
                            .into(),
                    )
                }
            }
        } else {
            let k: u64 = k.trim().parse().map_err(|_| bad())?;
            if k == 0 {
                return Err(bad());
            }
            k - 1
        };
        if index >= count {
            return Err(format!(
                "--shard {s}: index {} (0-based {index}) is outside 1..={count}",
                index + 1
            ));
        }
        Ok(Shard { index, count })
    }

    /// Whether the job named `name` belongs to this shard.
    pub fn contains(&self, name: &str) -> bool {
        fnv1a(name) % self.count == self.index
    }

    /// The jobs of this shard, in manifest order.
    pub fn select<'a>(&self, jobs: &'a [BatchJob]) -> Vec<&'a BatchJob> {
        jobs.iter().filter(|j| self.contains(&j.name)).collect()
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Memory

/// `MemAvailable` from /proc/meminfo, in bytes.
pub fn mem_available() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    proc_field_kb(&text, "MemAvailable:")
}

/// The process's peak resident set (VmHWM from /proc/self/status), in bytes.
pub fn peak_rss() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    proc_field_kb(&text, "VmHWM:")
}

/// Reset the process's peak RSS counter (Linux: write 5 to /proc/self/clear_refs). Best effort.
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", b"5").is_ok()
}

fn proc_field_kb(text: &str, key: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(key))?;
    let kb: u64 = line[key.len()..].split_whitespace().next()?.parse().ok()?;
    kb.checked_mul(1024)
}

/// The default memory budget: half of MemAvailable (no limit when it cannot be read).
pub fn default_memory_budget() -> u64 {
    mem_available().map_or(u64::MAX, |m| m / 2)
}

/// First-fit admission of planned jobs under a memory budget.
struct Admission {
    state: Mutex<AdmState>,
    cv: Condvar,
    budget: u64,
}

struct AdmState {
    /// Indices (into the planned jobs) not started yet, in manifest order.
    pending: VecDeque<usize>,
    used: u64,
    running: usize,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Admission {
    fn new(n: usize, budget: u64) -> Admission {
        Admission {
            state: Mutex::new(AdmState {
                pending: (0..n).collect(),
                used: 0,
                running: 0,
            }),
            cv: Condvar::new(),
            budget,
        }
    }

    /// The next job to start (its peak reserved), or `None` when none is left. Returns at once with the first
    /// pending job when `cancel` is set (it will not run).
    fn next(&self, peaks: &[u64], cancel: &AtomicBool) -> Option<(usize, bool)> {
        let mut st = lock(&self.state);
        loop {
            if st.pending.is_empty() {
                return None;
            }
            if cancel.load(Ordering::SeqCst) {
                return st.pending.pop_front().map(|i| (i, false));
            }
            let fits =
                |p: u64, st: &AdmState| st.running == 0 || st.used.saturating_add(p) <= self.budget;
            if let Some(pos) = st.pending.iter().position(|&i| fits(peaks[i], &st)) {
                let i = st.pending.remove(pos)?;
                st.used = st.used.saturating_add(peaks[i]);
                st.running += 1;
                return Some((i, true));
            }
            st = self
                .cv
                .wait_timeout(st, Duration::from_millis(200))
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
        }
    }

    fn done(&self, peak: u64) {
        let mut st = lock(&self.state);
        st.used = st.used.saturating_sub(peak);
        st.running = st.running.saturating_sub(1);
        drop(st);
        self.cv.notify_all();
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Progress

/// The indicatif side: the container, the total bar and one bar per running job.
type Bars = (MultiProgress, ProgressBar, Mutex<Vec<Option<ProgressBar>>>);

struct Progress {
    mode: ProgressMode,
    names: Vec<String>,
    /// Bytes written so far per planned job, and its planned total.
    written: Vec<AtomicU64>,
    totals: Vec<u64>,
    grand_total: u64,
    finished: AtomicUsize,
    running: Mutex<Vec<usize>>,
    last_line: Mutex<Instant>,
    bars: Option<Bars>,
}

impl Progress {
    fn new(mode: ProgressMode, names: Vec<String>, totals: Vec<u64>) -> Progress {
        let grand_total = totals.iter().fold(0u64, |a, &b| a.saturating_add(b));
        let bars = (mode == ProgressMode::Bars).then(|| {
            let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
            let total = multi.add(ProgressBar::new(grand_total));
            if let Ok(style) = ProgressStyle::with_template(
                "{prefix:>12} [{bar:40}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
            ) {
                total.set_style(style.progress_chars("=> "));
            }
            total.set_prefix("total");
            (multi, total, Mutex::new(vec![None; names.len()]))
        });
        Progress {
            mode,
            written: names.iter().map(|_| AtomicU64::new(0)).collect(),
            names,
            totals,
            grand_total,
            finished: AtomicUsize::new(0),
            running: Mutex::new(Vec::new()),
            last_line: Mutex::new(Instant::now()),
            bars,
        }
    }

    fn started(&self, i: usize) {
        lock(&self.running).push(i);
        if let Some((multi, _, bars)) = &self.bars {
            let b = multi.add(ProgressBar::new(self.totals[i]));
            if let Ok(style) =
                ProgressStyle::with_template("{prefix:>12} [{bar:40}] {bytes}/{total_bytes} {msg}")
            {
                b.set_style(style.progress_chars("=> "));
            }
            b.set_prefix("job");
            b.set_message(self.names[i].clone());
            lock(bars)[i] = Some(b);
        }
    }

    fn update(&self, i: usize, bytes: u64) {
        let prev = self.written[i].swap(bytes, Ordering::Relaxed);
        match self.mode {
            ProgressMode::Off => {}
            ProgressMode::Bars => {
                if let Some((_, total, bars)) = &self.bars {
                    if let Some(b) = &lock(bars)[i] {
                        b.set_position(bytes);
                    }
                    total.inc(bytes.saturating_sub(prev));
                }
            }
            ProgressMode::Plain { interval } => {
                let mut last = lock(&self.last_line);
                if last.elapsed() >= interval {
                    *last = Instant::now();
                    drop(last);
                    self.status_line();
                }
            }
        }
    }

    fn status_line(&self) {
        let done: u64 = self
            .written
            .iter()
            .map(|w| w.load(Ordering::Relaxed))
            .fold(0, u64::saturating_add);
        let running: Vec<String> = lock(&self.running)
            .iter()
            .map(|&i| {
                let w = self.written[i].load(Ordering::Relaxed);
                match self.totals[i] {
                    0 => self.names[i].clone(),
                    t => format!("{} {}%", self.names[i], w.saturating_mul(100) / t),
                }
            })
            .collect();
        eprintln!(
            "convert-batch: {}/{} jobs done, {} / {} written; running: {}",
            self.finished.load(Ordering::Relaxed),
            self.names.len(),
            human_bytes(done),
            human_bytes(self.grand_total),
            if running.is_empty() {
                "-".to_string()
            } else {
                running.join(", ")
            }
        );
    }

    fn finished(&self, i: usize, r: &JobReport) {
        let n = self.finished.fetch_add(1, Ordering::Relaxed) + 1;
        lock(&self.running).retain(|&k| k != i);
        let msg = format!(
            "[{n}/{}] {} {} ({:.2} s){}",
            self.names.len(),
            r.status.as_str(),
            r.name,
            r.seconds,
            r.error
                .as_ref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        );
        match (&self.mode, &self.bars) {
            (ProgressMode::Bars, Some((multi, total, bars))) => {
                if let Some(b) = lock(bars)[i].take() {
                    b.finish_and_clear();
                    multi.remove(&b);
                }
                // Jobs that wrote less than planned (or failed) still count as done in the total.
                let w = self.written[i].load(Ordering::Relaxed);
                total.inc(self.totals[i].saturating_sub(w));
                let _ = multi.println(msg);
            }
            (ProgressMode::Plain { .. }, _) => eprintln!("convert-batch: {msg}"),
            _ => {}
        }
    }

    fn close(&self) {
        if let Some((multi, total, _)) = &self.bars {
            total.finish_and_clear();
            let _ = multi.clear();
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Jobs

fn panic_message(p: &(dyn Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic payload".to_string()
    }
}

/// A report entry for `job` with `status` and nothing measured yet.
pub fn base_report(job: &BatchJob, status: Status) -> JobReport {
    JobReport {
        name: job.name.clone(),
        model: job.spec.model.clone(),
        reversed: job.spec.reversed,
        status,
        inputs: Vec::new(),
        outputs: Vec::new(),
        tensors: 0,
        bytes_read: 0,
        bytes_written: 0,
        seconds: 0.0,
        peak_rss_bytes: None,
        warnings: Vec::new(),
        error: None,
    }
}

fn failed(job: &BatchJob, status: Status, error: String, seconds: f64) -> JobResult {
    let mut r = base_report(job, status);
    r.error = Some(error);
    r.seconds = round_secs(seconds);
    r.inputs = inputs_of(&job.spec, &[]);
    JobResult {
        report: r,
        tensors: Vec::new(),
    }
}

/// Seconds to the millisecond, for readable reports.
fn round_secs(s: f64) -> f64 {
    (s * 1000.0).round() / 1000.0
}

fn inputs_of(spec: &JobSpec, listed: &[(PathBuf, u64)]) -> Vec<InputEntry> {
    if listed.is_empty() {
        let bytes = std::fs::metadata(&spec.input).map(|m| m.len()).unwrap_or(0);
        return vec![InputEntry {
            path: spec.input.display().to_string(),
            bytes,
        }];
    }
    listed
        .iter()
        .map(|(p, b)| InputEntry {
            path: p.display().to_string(),
            bytes: *b,
        })
        .collect()
}

/// Apply `--check` to a finished (ok or skipped) job.
fn golden_check(mut r: JobResult, check: Option<&Golden>) -> JobResult {
    if let Some(g) = check {
        if let Err(e) = g.check(&r.report.name, &r.tensors) {
            r.report.status = Status::Failed;
            r.report.error = Some(e);
        }
    }
    r
}

/// A job that did not need to run, reported from its record.
fn skipped(job: &BatchJob, fp: fingerprint::Fingerprint) -> JobResult {
    let mut r = base_report(job, Status::Skipped);
    r.inputs = fp
        .inputs
        .iter()
        .map(|i| InputEntry {
            path: i.path.clone(),
            bytes: i.bytes,
        })
        .collect();
    r.outputs = fp
        .outputs
        .iter()
        .map(|o| OutputEntry {
            path: fingerprint::output_path(&job.spec, o).display().to_string(),
            bytes: o.bytes,
            sha256: o.sha256.clone(),
        })
        .collect();
    r.tensors = fp.tensors.len() as u64;
    r.warnings = fp.warnings.clone();
    JobResult {
        report: r,
        tensors: fp.tensors,
    }
}

/// Phase one of a job: up to date, or planned, or failed.
enum Prepared {
    Done(JobResult),
    Planned { plan: PlanSummary, plan_secs: f64 },
}

fn prepare(job: &BatchJob, exec: &dyn Executor, opts: &Options) -> Prepared {
    if opts.cancel.load(Ordering::SeqCst) {
        return Prepared::Done(failed(
            job,
            Status::Cancelled,
            "cancelled before start".into(),
            0.0,
        ));
    }
    if !opts.force {
        if let Freshness::UpToDate(fp) = fingerprint::check(&job.spec, opts.check_options()) {
            return Prepared::Done(golden_check(skipped(job, *fp), opts.check.as_ref()));
        }
    }
    let t = Instant::now();
    let planned = catch_unwind(AssertUnwindSafe(|| exec.plan(&job.spec)));
    let plan_secs = t.elapsed().as_secs_f64();
    match planned {
        Ok(Ok(plan)) => Prepared::Planned { plan, plan_secs },
        Ok(Err(e)) => Prepared::Done(failed(job, Status::Failed, e, plan_secs)),
        Err(p) => Prepared::Done(failed(
            job,
            Status::Failed,
            format!("panic while planning: {}", panic_message(&*p)),
            plan_secs,
        )),
    }
}

/// Phase two: run an admitted job.
fn execute(
    job: &BatchJob,
    exec: &dyn Executor,
    opts: &Options,
    progress: &(dyn Fn(u64) + Sync),
    plan_secs: f64,
    solo: bool,
) -> JobResult {
    let t = Instant::now();
    let secs = |t: Instant| plan_secs + t.elapsed().as_secs_f64();
    if solo {
        reset_peak_rss();
    }
    let guard = match catch_unwind(AssertUnwindSafe(|| exec.lock_output(&job.spec))) {
        Ok(Ok(g)) => g,
        Ok(Err(e)) => return failed(job, Status::Failed, e, secs(t)),
        Err(p) => {
            let msg = format!("panic while locking the output: {}", panic_message(&*p));
            return failed(job, Status::Failed, msg, secs(t));
        }
    };
    // Another process may have converted it while this one waited for the lock.
    if !opts.force {
        if let Freshness::UpToDate(fp) = fingerprint::check(&job.spec, opts.check_options()) {
            return golden_check(skipped(job, *fp), opts.check.as_ref());
        }
    }
    // The old record no longer describes what the output will be.
    let mut warnings = Vec::new();
    if let Err(e) = fingerprint::remove(&job.spec) {
        warnings.push(format!("could not remove the old fingerprint: {e}"));
    }
    let ctl = RunControl {
        cancel: &opts.cancel,
        progress,
        hash: true,
    };
    let ran = catch_unwind(AssertUnwindSafe(|| exec.run(&job.spec, &ctl, &guard)));
    let seconds = secs(t);
    let outcome = match ran {
        Ok(Ok(o)) => o,
        Ok(Err(ExecError::Cancelled)) => {
            return failed(job, Status::Cancelled, "cancelled".into(), seconds)
        }
        Ok(Err(ExecError::Failed(e))) => {
            let mut r = failed(job, Status::Failed, e, seconds);
            r.report.peak_rss_bytes = peak_rss();
            return r;
        }
        Err(p) => {
            return failed(
                job,
                Status::Failed,
                format!("panic: {}", panic_message(&*p)),
                seconds,
            )
        }
    };
    match fingerprint::record(&job.spec, &outcome).and_then(|fp| fingerprint::write(&job.spec, &fp))
    {
        Ok(()) => {}
        Err(e) => warnings.push(format!(
            "could not write the fingerprint {} (the job will rerun next time): {e}",
            fingerprint::record_path(&job.spec.output).display()
        )),
    }
    let mut r = base_report(job, Status::Ok);
    r.inputs = inputs_of(&job.spec, &outcome.inputs);
    r.outputs = outcome
        .outputs
        .iter()
        .map(|o| OutputEntry {
            path: o.path.display().to_string(),
            bytes: o.bytes,
            sha256: o.sha256.clone(),
        })
        .collect();
    r.tensors = outcome.tensors.len() as u64;
    r.bytes_read = outcome.bytes_read;
    r.bytes_written = outcome.bytes_written;
    r.seconds = round_secs(seconds);
    r.peak_rss_bytes = peak_rss();
    r.warnings = outcome.warnings;
    r.warnings.extend(warnings);
    golden_check(
        JobResult {
            report: r,
            tensors: outcome.tensors,
        },
        opts.check.as_ref(),
    )
}

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
    let run = || -> Vec<(Result<PlanSummary, String>, Option<String>)> {
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
                        Err(format!("panic while planning: {}", panic_message(&*p)))
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
    use std::collections::{HashMap, HashSet};
    use std::path::Path;

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
        fn plan(&self, spec: &JobSpec) -> Result<PlanSummary, String> {
            let s = stem(spec);
            if s.starts_with("badplan") {
                return Err(format!("{}: not a checkpoint", spec.input.display()));
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
    fn shards_cover_every_job_once() {
        let names: Vec<String> = (0..200).map(|i| format!("job-{i}")).collect();
        let js: Vec<BatchJob> = names
            .iter()
            .map(|n| BatchJob {
                name: n.clone(),
                spec: JobSpec::default(),
                line: 1,
            })
            .collect();
        let env = |_: &str| None;
        let mut seen = HashSet::new();
        let mut sizes = Vec::new();
        for k in 1..=3 {
            let s = Shard::parse(&format!("{k}/3"), &env).unwrap();
            let sel = s.select(&js);
            sizes.push(sel.len());
            for j in sel {
                assert!(seen.insert(j.name.clone()), "{} in two shards", j.name);
            }
        }
        assert_eq!(seen.len(), names.len());
        assert!(sizes.iter().all(|&s| s > 40), "unbalanced: {sizes:?}");
        // Stable across processes and platforms.
        assert_eq!(fnv1a("a"), 0xaf63dc4c8601ec8c);
    }

    #[test]
    fn shard_arguments() {
        let none = |_: &str| None;
        let slurm = |k: &str| match k {
            "SLURM_ARRAY_TASK_ID" => Some("4".to_string()),
            "SLURM_ARRAY_TASK_MIN" => Some("3".to_string()),
            _ => None,
        };
        let k8s = |k: &str| (k == "JOB_COMPLETION_INDEX").then(|| "2".to_string());
        assert_eq!(Shard::parse("2/3", &none), Ok(Shard { index: 1, count: 3 }));
        assert_eq!(
            Shard::parse("auto/3", &slurm),
            Ok(Shard { index: 1, count: 3 })
        );
        assert_eq!(
            Shard::parse("auto/3", &k8s),
            Ok(Shard { index: 2, count: 3 })
        );
        for bad in ["0/3", "4/3", "1/0", "x/2", "3", "auto/2"] {
            let env: &dyn Fn(&str) -> Option<String> = if bad == "auto/2" { &k8s } else { &none };
            assert!(Shard::parse(bad, env).is_err(), "{bad}");
        }
        assert!(Shard::parse("auto/3", &none)
            .unwrap_err()
            .contains("SLURM_ARRAY_TASK_ID"));
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

    #[test]
    fn proc_fields() {
        assert_eq!(
            proc_field_kb("VmPeak: 10 kB\nVmHWM:\t  2048 kB\n", "VmHWM:"),
            Some(2048 * 1024)
        );
        assert_eq!(proc_field_kb("VmHWM: x kB\n", "VmHWM:"), None);
    }
}

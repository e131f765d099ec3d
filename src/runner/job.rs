//! The phases of one job: prepare (up to date? plan), execute (lock, run, record), and its report entry.

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Instant;

use super::admission::{peak_rss, reset_peak_rss};
use super::{ExecError, Executor, JobResult, Options};
use crate::convert::{PlanSummary, RunControl};
use crate::fingerprint::{self, Freshness};
use crate::golden::Golden;
use crate::manifest::BatchJob;
use crate::options::JobSpec;
use crate::report::{InputEntry, JobReport, OutputEntry, Status};

pub(super) fn panic_message(p: &(dyn Any + Send)) -> String {
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

pub(super) fn failed(job: &BatchJob, status: Status, error: String, seconds: f64) -> JobResult {
    let mut r = base_report(job, status);
    r.error = Some(error);
    r.seconds = round_secs(seconds);
    r.inputs = inputs_of(&job.spec, &[]);
    JobResult {
        report: r,
        tensors: Vec::new(),
    }
}

/// How a report names a file: absolute, with symbolic links resolved where the file exists, else lexically
/// normalised against the working directory. One convention for inputs and outputs, ran or skipped.
pub fn report_path(p: &Path) -> String {
    if let Ok(c) = p.canonicalize() {
        return c.display().to_string();
    }
    let abs = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(p))
            .unwrap_or_else(|_| p.to_path_buf())
    };
    let mut out = PathBuf::new();
    for c in abs.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other.as_os_str()),
        }
    }
    out.display().to_string()
}

/// Seconds to the millisecond, for readable reports.
fn round_secs(s: f64) -> f64 {
    (s * 1000.0).round() / 1000.0
}

pub(super) fn inputs_of(spec: &JobSpec, listed: &[(PathBuf, u64)]) -> Vec<InputEntry> {
    if listed.is_empty() {
        let bytes = std::fs::metadata(&spec.input).map(|m| m.len()).unwrap_or(0);
        return vec![InputEntry {
            path: report_path(&spec.input),
            bytes,
        }];
    }
    listed
        .iter()
        .map(|(p, b)| InputEntry {
            path: report_path(p),
            bytes: *b,
        })
        .collect()
}

/// Apply `--check` to a finished (ok or skipped) job.
fn golden_check(mut r: JobResult, check: Option<&Golden>) -> JobResult {
    if let Some(g) = check {
        if let Err(e) = g.check(&r.report.name, &r.tensors) {
            r.report.status = Status::Failed;
            r.report.error = Some(e.to_string());
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
            path: report_path(Path::new(&i.path)),
            bytes: i.bytes,
        })
        .collect();
    r.outputs = fp
        .outputs
        .iter()
        .map(|o| OutputEntry {
            path: report_path(&fingerprint::output_path(&job.spec, o)),
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
pub(super) enum Prepared {
    Done(JobResult),
    Planned { plan: PlanSummary, plan_secs: f64 },
}

pub(super) fn prepare(job: &BatchJob, exec: &dyn Executor, opts: &Options) -> Prepared {
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
        Ok(Err(e)) => Prepared::Done(failed(job, Status::Failed, e.to_string(), plan_secs)),
        Err(p) => Prepared::Done(failed(
            job,
            Status::Failed,
            format!("panic while planning: {}", panic_message(&*p)),
            plan_secs,
        )),
    }
}

/// Phase two: run an admitted job.
pub(super) fn execute(
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
        Ok(Err(e)) => return failed(job, Status::Failed, e.to_string(), secs(t)),
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
            path: report_path(&o.path),
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

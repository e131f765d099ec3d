//! `convert-batch`: run a manifest of conversions (see the README's batch-runner section). Argument parsing only;
//! the work is in `convert_weight::runner`.
//!
//! Exit status: 0 every job ok or up to date, 1 a job failed (or differs from the golden file), 2 bad manifest or
//! usage, 130/143 interrupted by SIGINT/SIGTERM (report still written).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, OnceLock};

use clap::{Args, Parser, Subcommand};

use convert_weight::fsio;
use convert_weight::golden::Golden;
use convert_weight::manifest::Manifest;
use convert_weight::options::parse_memory_budget;
use convert_weight::report::{JobReport, Report, Status};
use convert_weight::runner::{self, Engine, Options, ProgressMode, Shard};

#[derive(Parser, Debug)]
#[command(
    name = "convert-batch",
    version,
    about = "Run a TOML manifest of checkpoint conversions concurrently, incrementally, with a report",
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Combine the reports of shards into one (jobs concatenated, summary recomputed).
    MergeReports {
        /// Reports written by `--report`.
        #[arg(required = true)]
        reports: Vec<PathBuf>,
        /// The merged report.
        #[arg(short = 'o', long = "output", required = true)]
        output: PathBuf,
        /// Also write JUnit XML of the merged report.
        #[arg(long)]
        junit: Option<PathBuf>,
        /// The manifest the shards ran: its jobs missing from every report are added as failed (a shard that
        /// never reported).
        #[arg(long)]
        manifest: Option<PathBuf>,
    },
}

#[derive(Args, Debug)]
struct RunArgs {
    /// The manifest (TOML).
    #[arg(required = true)]
    manifest: Option<PathBuf>,
    /// Jobs at once (default: the manifest's `jobs`, else the number of cores).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    jobs: Option<u32>,
    /// Write the JSON report here.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Write JUnit XML here (one testcase per job).
    #[arg(long)]
    junit: Option<PathBuf>,
    /// Plan every job and print the plans; write nothing.
    #[arg(long)]
    dry_run: bool,
    /// Redo jobs that are up to date.
    #[arg(long)]
    force: bool,
    /// Run only slice K of N (1-based), or `auto/N` (index from SLURM_ARRAY_TASK_ID or JOB_COMPLETION_INDEX).
    #[arg(long, value_name = "K/N")]
    shard: Option<String>,
    /// No progress output on stderr.
    #[arg(long)]
    no_progress: bool,
    /// Memory the jobs' planned peaks may use together: a size (`16GiB`, `500MB`) or a percentage of
    /// MemAvailable (`75%`). Default: 50% of MemAvailable.
    #[arg(long, value_name = "SIZE")]
    memory_budget: Option<String>,
    /// Record every output tensor's sha256 per job into this JSON file.
    #[arg(long, value_name = "PATH", conflicts_with = "check")]
    write_golden: Option<PathBuf>,
    /// Fail any job whose output tensors differ from this golden file.
    #[arg(long, value_name = "PATH")]
    check: Option<PathBuf>,
    /// Re-hash the outputs of up-to-date jobs however big they are (default: only when small).
    #[arg(long)]
    verify_outputs: bool,
}

/// Set by the signal handler: the cancel flag every job watches, and the signal number.
static CANCEL: OnceLock<Arc<AtomicBool>> = OnceLock::new();
static SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(sig: libc::c_int) {
    // Only atomics here: async-signal-safe.
    SIGNAL.store(sig, Ordering::SeqCst);
    if let Some(c) = CANCEL.get() {
        c.store(true, Ordering::SeqCst);
    }
}

/// Cancel on SIGINT/SIGTERM; a second signal kills as usual (SA_RESETHAND).
fn install_signal_handlers(cancel: Arc<AtomicBool>) {
    let _ = CANCEL.set(cancel);
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: a zeroed sigaction is valid; the handler only touches atomics.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            sa.sa_flags = libc::SA_RESETHAND;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

fn usage(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("convert-batch: {msg}");
    ExitCode::from(2)
}

/// The table on stdout; a closed stdout (`| head`) is not an error and never stops the report from being written.
fn print_table(report: &Report) {
    use std::io::Write;
    let _ = std::io::stdout()
        .lock()
        .write_all(report.to_table().as_bytes());
}

fn write_outputs(report: &Report, json: Option<&Path>, junit: Option<&Path>) -> bool {
    let mut ok = true;
    for (path, text) in [(json, report.to_json() + "\n"), (junit, report.to_junit())] {
        if let Some(p) = path {
            if let Err(e) = fsio::write_atomic(p, text.as_bytes()) {
                eprintln!("convert-batch: cannot write {e}");
                ok = false;
            }
        }
    }
    ok
}

fn merge(
    reports: &[PathBuf],
    output: &Path,
    junit: Option<&Path>,
    manifest: Option<&Path>,
) -> ExitCode {
    let mut read = Vec::with_capacity(reports.len());
    for p in reports {
        match Report::read(p) {
            Ok(r) => read.push((p.display().to_string(), r)),
            Err(e) => return usage(e),
        }
    }
    let mut merged = match Report::merge(read) {
        Ok(m) => m,
        Err(e) => return usage(e),
    };
    if let Some(mp) = manifest {
        let m = match Manifest::load(mp) {
            Ok(m) => m,
            Err(e) => return usage(e),
        };
        let mut jobs = std::mem::take(&mut merged.jobs);
        for j in &m.jobs {
            if !jobs.iter().any(|r| r.name == j.name) {
                jobs.push(JobReport {
                    error: Some(
                        "in the manifest but in no shard report (did a shard not finish?)".into(),
                    ),
                    ..runner::base_report(j, Status::Failed)
                });
            }
        }
        merged = Report::new(jobs);
    }
    print_table(&merged);
    if !write_outputs(&merged, Some(output), junit) {
        return ExitCode::from(2);
    }
    if merged.all_succeeded() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn run(a: RunArgs) -> ExitCode {
    let Some(manifest_path) = a.manifest else {
        return usage("a manifest is required");
    };
    let manifest = match Manifest::load(&manifest_path) {
        Ok(m) => m,
        Err(e) => return usage(e),
    };
    let selected: Vec<_> = match &a.shard {
        None => manifest.jobs.iter().collect(),
        Some(s) => match Shard::parse(s, &|k| std::env::var(k).ok()) {
            Ok(sh) => sh.select(&manifest.jobs),
            Err(e) => return usage(e),
        },
    };
    let jobs = a
        .jobs
        .map(|j| j as usize)
        .or(manifest.concurrency)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let memory_budget = match &a.memory_budget {
        None => runner::default_memory_budget(),
        Some(s) => {
            let avail = runner::mem_available();
            if s.trim().ends_with('%') && avail.is_none() {
                return usage("--memory-budget N%: MemAvailable cannot be read from /proc/meminfo");
            }
            match parse_memory_budget(s, avail.unwrap_or(u64::MAX)) {
                Ok(b) => b,
                Err(e) => return usage(format!("--memory-budget: {e}")),
            }
        }
    };
    let check = match &a.check {
        None => None,
        Some(p) => match Golden::read(p) {
            Ok(g) => Some(g),
            Err(e) => return usage(e),
        },
    };
    let cancel = Arc::new(AtomicBool::new(false));
    install_signal_handlers(cancel.clone());
    let opts = Options {
        jobs,
        memory_budget,
        force: a.force,
        verify_outputs: a.verify_outputs,
        need_tensor_hashes: a.write_golden.is_some() || check.is_some(),
        check,
        progress: ProgressMode::auto(a.no_progress),
        cancel,
    };

    if a.dry_run {
        let mut out = std::io::stdout().lock();
        let ok = runner::dry_run(&selected, &Engine, &opts, &mut out);
        return if ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        };
    }

    let results = runner::run_batch(&selected, &Engine, &opts);
    let mut failed_io = false;
    if let Some(p) = &a.write_golden {
        let mut g = Golden::new();
        for r in &results {
            if matches!(r.report.status, Status::Ok | Status::Skipped) {
                g.insert(&r.report.name, &r.tensors);
            } else {
                eprintln!(
                    "convert-batch: job '{}' {}: left out of the golden file",
                    r.report.name,
                    r.report.status.as_str()
                );
            }
        }
        if let Err(e) = g.write(p) {
            eprintln!("convert-batch: cannot write the golden file {e}");
            failed_io = true;
        }
    }
    let report = Report::new(results.into_iter().map(|r| r.report).collect());
    print_table(&report);
    if !write_outputs(&report, a.report.as_deref(), a.junit.as_deref()) {
        failed_io = true;
    }
    match SIGNAL.load(Ordering::SeqCst) {
        0 => {}
        sig => {
            let name = if sig == libc::SIGINT {
                "SIGINT"
            } else {
                "SIGTERM"
            };
            eprintln!("convert-batch: interrupted by {name}");
            return ExitCode::from(u8::try_from(128 + sig).unwrap_or(130));
        }
    }
    if report.all_succeeded() && !failed_io {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn main() -> ExitCode {
    // A CUDA build installed beside this one takes over on GPU machines (see src/device.rs).
    convert_weight::device::reexec_cuda_build_if_present();
    let cli = Cli::parse();
    match cli.cmd {
        Some(Cmd::MergeReports {
            reports,
            output,
            junit,
            manifest,
        }) => merge(&reports, &output, junit.as_deref(), manifest.as_deref()),
        None => run(cli.run),
    }
}

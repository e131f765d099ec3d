//! One conversion job: [`open`] the input (headers, config.json) → plan it ([`crate::plan`], headers only) →
//! execute the plan and write the output (atomically) — plus [`verify`], which plans and compares instead of
//! writing. Used by both binaries and the runner.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use sha2::{Digest, Sha256};

use crate::exec::Compute;
use crate::formats::{self, OutputFormat, WriteOptions};
use crate::models::{self, Family, HyperParams, ModelError};
pub use crate::plan::PlanSummary;
use crate::plan::{JobPlan, Mapping, PlanError};
use crate::tensor::{Checkpoint, DType};

pub use crate::options::JobSpec;

/// Errors of one job, with the whole cause chain in `Display` of the chain (see [`error_chain`]).
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error(transparent)]
    Format(#[from] crate::formats::FormatError),
    #[error(transparent)]
    Model(#[from] crate::models::ModelError),
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error("{0}")]
    Usage(String),
    /// Input names that the family's rules do not match: one line naming the input, with a hint when clear.
    #[error("{0}")]
    Unmatched(String),
    #[error("tensor '{tensor}': {msg}")]
    Exec { tensor: String, msg: String },
    #[error("cancelled")]
    Cancelled,
    #[error("{path}: {msg}")]
    Config { path: PathBuf, msg: String },
}

/// Render an error and all its sources on one line: `a: b: c`.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

/// How a running job reports progress and learns it should stop.
pub struct RunControl<'a> {
    /// Set by the caller to stop the job between tensors (its temporary files are removed).
    pub cancel: &'a AtomicBool,
    /// Called with the number of bytes written so far (monotonic).
    pub progress: &'a (dyn Fn(u64) + Sync),
    /// Compute the sha256 of every output tensor and output file (for reports and golden files).
    pub hash: bool,
}

/// One output file of a finished job.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OutputFile {
    pub path: PathBuf,
    /// sha256 of the whole file (with `hash`).
    pub sha256: Option<String>,
    pub bytes: u64,
}

/// What a finished job did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct JobOutcome {
    /// Input files and their sizes.
    pub inputs: Vec<(PathBuf, u64)>,
    pub outputs: Vec<OutputFile>,
    /// Output tensors in write order: (name, sha256 of its bytes with `hash`, else empty).
    pub tensors: Vec<(String, String)>,
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub warnings: Vec<String>,
}

/// Plan a job from headers only: opens the inputs, builds the plan, checks it, writes nothing.
pub fn plan(spec: &JobSpec) -> Result<PlanSummary, ConvertError> {
    Ok(Prepared::new(spec)?.summary())
}

/// Run a job to completion: the output appears atomically at `spec.output` only when complete.
/// Takes the output's lock first (waiting while another process holds it).
pub fn run(spec: &JobSpec, ctl: &RunControl) -> Result<JobOutcome, ConvertError> {
    let lock = lock_output(spec)?;
    run_locked(spec, ctl, &lock)
}

/// [`run`] for a caller that already holds the output's lock (e.g. to check a fingerprint under it first).
pub fn run_locked(
    spec: &JobSpec,
    ctl: &RunControl,
    lock: &OutputLock,
) -> Result<JobOutcome, ConvertError> {
    let mut outcome = Prepared::new(spec)?.execute(ctl)?;
    if let Some(dir) = &lock.created {
        outcome
            .warnings
            .insert(0, format!("created the output directory {}", dir.display()));
    }
    Ok(outcome)
}

/// An exclusive lock on one job's output (a `flock` on a hidden lock file beside it), held until dropped; the
/// lock file is removed on drop. Taking it also removes temporary files that a killed earlier run left.
pub struct OutputLock {
    _file: std::fs::File,
    pub path: PathBuf,
    /// The top-most directory that taking the lock created (the output's directory did not exist).
    pub created: Option<PathBuf>,
}

impl Drop for OutputLock {
    fn drop(&mut self) {
        // Unlink while still holding the lock; waiters re-check the inode after they get it.
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Take the lock of `spec.output`, waiting while another process holds it.
pub fn lock_output(spec: &JobSpec) -> Result<OutputLock, ConvertError> {
    let out = &spec.output;
    let is_dir = out.as_os_str().to_string_lossy().ends_with('/') || out.is_dir();
    let (dir, name) = if is_dir {
        (out.clone(), None)
    } else {
        let dir = match out.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        (
            dir,
            out.file_name().map(|n| n.to_string_lossy().into_owned()),
        )
    };
    // Missing directories are created, and the job says so (a warning): a typo in a path is seen, not silent.
    let created = dir
        .ancestors()
        .take_while(|a| !a.as_os_str().is_empty() && !a.exists())
        .last()
        .map(Path::to_path_buf);
    std::fs::create_dir_all(&dir).map_err(|e| formats::FormatError::io(&dir, e))?;
    let path = dir.join(match &name {
        Some(n) => format!(".{n}.convert-weight.lock"),
        None => ".convert-weight.lock".to_string(),
    });
    let file = loop {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| formats::FormatError::io(&path, e))?;
        flock_exclusive(&file).map_err(|e| formats::FormatError::io(&path, e))?;
        // The holder before us unlinks the lock file when done: make sure ours is still the one at the path.
        use std::os::unix::fs::MetadataExt;
        let ours = file.metadata().map(|m| m.ino()).ok();
        let at_path = std::fs::metadata(&path).map(|m| m.ino()).ok();
        if ours.is_some() && ours == at_path {
            break file;
        }
    };
    // Leftovers of a killed run for this output (or, for a directory output, any in it).
    let prefix = match &name {
        Some(n) => formats::temp_prefix(n),
        None => formats::TEMP_PREFIX.to_string(),
    };
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(&prefix) {
                let p = e.path();
                let _ = if p.is_dir() {
                    std::fs::remove_dir_all(&p)
                } else {
                    std::fs::remove_file(&p)
                };
            }
        }
    }
    Ok(OutputLock {
        _file: file,
        path,
        created,
    })
}

fn flock_exclusive(file: &std::fs::File) -> std::io::Result<()> {
    use std::os::unix::io::AsRawFd;
    loop {
        // SAFETY: flock on a valid, owned file descriptor.
        let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
        if r == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Where and how the output is written.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Target {
    format: OutputFormat,
    path: PathBuf,
    /// HF sharded layout in the directory `path`.
    sharded: bool,
}

/// An opened input: the checkpoint (headers and byte references), the family asked for, and the hyper-parameters
/// that config.json and the flags give.
struct Opened {
    source: Checkpoint,
    family: Option<&'static Family>,
    hp: HyperParams,
    /// The config.json read for hyper-parameters, if any.
    config: Option<PathBuf>,
}

/// A planned job: input opened, plan checked, output decided.
struct Prepared {
    source: Checkpoint,
    plan: JobPlan,
    target: Target,
    opts: WriteOptions,
    device: Option<String>,
    warnings: Vec<String>,
    /// The config.json read for hyper-parameters, if any.
    config: Option<PathBuf>,
}

fn usage(msg: impl Into<String>) -> ConvertError {
    ConvertError::Usage(msg.into())
}

/// The `config.json` beside the weights, if there is one (with its path).
fn read_config(input: &Path) -> Result<Option<(PathBuf, serde_json::Value)>, ConvertError> {
    let dir = if input.is_dir() {
        input.to_path_buf()
    } else {
        input.parent().map(Path::to_path_buf).unwrap_or_default()
    };
    let path = dir.join("config.json");
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path).map_err(|e| ConvertError::Config {
        path: path.clone(),
        msg: e.to_string(),
    })?;
    match serde_json::from_str(&text) {
        Ok(v) => Ok(Some((path, v))),
        Err(e) => Err(ConvertError::Config {
            path,
            msg: format!("not valid JSON: {e}"),
        }),
    }
}

/// Decide the output format and layout from the output path (and whether this is a forward model conversion).
fn target(spec: &JobSpec) -> Result<Target, ConvertError> {
    let out = &spec.output;
    let to_mindspore = spec.model.is_some() && !spec.reversed;
    let is_dir = out.as_os_str().to_string_lossy().ends_with('/') || out.is_dir();
    if is_dir {
        let format = if to_mindspore {
            OutputFormat::Ckpt
        } else {
            OutputFormat::Safetensors
        };
        return Ok(Target {
            format,
            path: out.clone(),
            sharded: true,
        });
    }
    // One rule in every mode: the extension names the format; anything else is refused with a suggestion.
    let Some(format) = OutputFormat::from_extension(out) else {
        let what = match out.extension() {
            Some(e) => format!("unknown extension '.{}'", e.to_string_lossy()),
            None => "no extension".to_string(),
        };
        let usual = match (&spec.model, spec.reversed) {
            (Some(_), false) => "ckpt",
            (Some(_), true) => "bin",
            (None, _) => "safetensors",
        };
        return Err(usage(format!(
            "{}: {what}: the output format comes from the extension: .ckpt (MindSpore), .safetensors, \
             .bin/.pt/.pth (torch), or a directory ending in '/' (HF shards); e.g. {}.{usual}",
            out.display(),
            out.display()
        )));
    };
    let path = out.clone();
    // A file name with `--max-shard-size`: shards named after it beside it (`o.bin` → `o-00001-of-00002.bin` and
    // `o.bin.index.json`; one shard is `o.bin` itself).
    if spec.max_shard_size.is_some() {
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        return Ok(Target {
            format,
            path: dir,
            sharded: true,
        });
    }
    Ok(Target {
        format,
        path,
        sharded: false,
    })
}

/// Refuse to write over an input, or to shard into a directory that holds the inputs.
fn check_not_overwriting(source: &Checkpoint, target: &Target) -> Result<(), ConvertError> {
    let canon = |p: &Path| std::fs::canonicalize(p).ok();
    let inputs: Vec<PathBuf> = source.files.iter().filter_map(|f| canon(f)).collect();
    let Some(out) = canon(&target.path) else {
        return Ok(());
    };
    if inputs.contains(&out) {
        return Err(usage(format!(
            "{}: the output is one of the inputs; refusing to overwrite it",
            target.path.display()
        )));
    }
    if target.sharded && inputs.iter().any(|i| i.parent() == Some(out.as_path())) {
        return Err(usage(format!(
            "{}: the output directory holds the input weights; its shards could overwrite them",
            target.path.display()
        )));
    }
    Ok(())
}

/// Open the input: the checkpoint's headers and, for a model conversion, the family and its hyper-parameters
/// (config.json beside the weights, then the flags).
fn open(spec: &JobSpec) -> Result<Opened, ConvertError> {
    let read = formats::ReadOptions {
        state_dict_key: spec.state_dict_key.clone(),
    };
    // Distributed inputs (rank folders, MindFormers 2.x) take these two options; other inputs ignore them.
    let dist = formats::distributed::Options {
        keep_optimizer: spec.keep_optimizer,
        strategy: spec.strategy.clone(),
    };
    let source = formats::open_input(&spec.input, &read, &dist)?;
    let Some(name) = &spec.model else {
        return Ok(Opened {
            source,
            family: None,
            hp: HyperParams::default(),
            config: None,
        });
    };
    let family = models::find(name)?;
    let (config, hp) = match read_config(&spec.input)? {
        Some((path, cfg)) => (Some(path), HyperParams::from_config(&cfg)),
        None => (None, HyperParams::default()),
    };
    let hp = hp
        .with_flags(spec.n_head, spec.hidden_size, spec.layers)
        .and_then(|hp| hp.with_mlp_layout(spec.mlp_layout))
        .map_err(|e| config_error(&config, e))?;
    Ok(Opened {
        source,
        family: Some(family),
        hp,
        config,
    })
}

/// A model error about hyper-parameters names the config.json they came from, when there is one.
fn config_error(config: &Option<PathBuf>, e: ModelError) -> ConvertError {
    match config {
        Some(p) => ConvertError::Config {
            path: p.clone(),
            msg: e.to_string(),
        },
        None => e.into(),
    }
}

/// Plan the opened input ([`crate::plan`]: the family's rules or the identity, then the dtype policy).
fn plan_job(spec: &JobSpec, opened: &Opened) -> Result<JobPlan, ConvertError> {
    let mapping = match opened.family {
        Some(family) => Mapping::Model {
            family,
            hp: &opened.hp,
            reversed: spec.reversed,
        },
        None => Mapping::Identity,
    };
    JobPlan::new(&opened.source, mapping, spec.dtype).map_err(|e| match e {
        // A hyper-parameter that contradicts the weights: name the config.json it came from.
        PlanError::Model(e @ ModelError::Hyper { .. }) => config_error(&opened.config, e),
        PlanError::Model(ModelError::Unmapped { names, .. }) => match opened.family {
            Some(f) => unmatched(spec, opened, f, &names),
            None => usage("internal error: unmatched names without a family"),
        },
        PlanError::Model(e) => e.into(),
        PlanError::Usage(m) => usage(format!("{}: {m}", spec.input.display())),
        e => e.into(),
    })
}

/// Warnings a plan gives before it runs: dropped inputs and non-tensor entries.
fn plan_warnings(source: &Checkpoint, plan: &JobPlan) -> Vec<String> {
    // What the reader noted first (e.g. which state dict of a training checkpoint was used, and what was left out).
    let mut warnings = source.notes.clone();
    warnings.extend(plan.drop_warnings());
    if !source.others.is_empty() {
        let names: Vec<&str> = source.others.iter().map(|o| o.name.as_str()).collect();
        warnings.push(format!(
            "{} non-tensor entr{} not converted: {}",
            names.len(),
            if names.len() == 1 { "y" } else { "ies" },
            names.join(", ")
        ));
    }
    warnings
}

/// Write options: the safetensors metadata (our `format`, and the source's own entries where the target can carry
/// them; warnings say what could not be carried), shard size and names.
fn write_options(
    spec: &JobSpec,
    source: &Checkpoint,
    target: &Target,
    plan: &JobPlan,
) -> (WriteOptions, Option<String>) {
    let own = [("format".to_string(), names_format(spec, source).to_string())];
    let names: Vec<&str> = plan.outs.iter().map(|o| o.info.name.as_str()).collect();
    let (metadata, warning) =
        formats::carried_metadata(target.format, &source.metadata, &own, &names);
    let opts = WriteOptions {
        metadata,
        max_shard_size: spec.max_shard_size,
        shard_name: shard_name(spec),
        ..WriteOptions::default()
    };
    (opts, warning)
}

/// The single-file name that the shards of a `--max-shard-size` output given as a file path are named after.
fn shard_name(spec: &JobSpec) -> Option<String> {
    let is_dir = spec.output.as_os_str().to_string_lossy().ends_with('/') || spec.output.is_dir();
    if spec.max_shard_size.is_none() || is_dir {
        return None;
    }
    spec.output
        .file_name()
        .and_then(|n| n.to_str())
        .map(str::to_string)
}

/// The safetensors `format` metadata of an output says whose tensor names it holds, one rule for every mode: `ms`
/// for MindSpore names (a forward model conversion, or a pure conversion of MindSpore names: a MindSpore checkpoint,
/// or a safetensors file that says `ms`), `pt` for HF/torch names (a reverse conversion, or a pure conversion of
/// anything else).
fn names_format(spec: &JobSpec, source: &Checkpoint) -> &'static str {
    match (&spec.model, spec.reversed) {
        (Some(_), false) => "ms",
        (Some(_), true) => "pt",
        (None, _) if is_mindspore(source) => "ms",
        (None, _) => "pt",
    }
}

/// Whether a checkpoint holds MindSpore names: a MindSpore ckpt, or a file whose `format` metadata says `ms`.
fn is_mindspore(source: &Checkpoint) -> bool {
    source.format.contains("mindspore")
        || source
            .metadata
            .iter()
            .any(|(k, v)| k == "format" && v == "ms")
}

/// The one-line error for input names that match no rule: the input, the count, the first few names, and a hint
/// when one is clear.
fn unmatched(spec: &JobSpec, opened: &Opened, family: &Family, names: &[String]) -> ConvertError {
    let infos = opened.source.infos();
    let mut msg = format!(
        "{}: {} of {} tensor names match no rule of --model {}{}: {}",
        spec.input.display(),
        names.len(),
        infos.len(),
        family.name,
        if spec.reversed { " --reversed" } else { "" },
        models::first_names(names, 3)
    );
    let current = infos.len() - names.len();
    if let Some(h) = unmatched_hint(&opened.source, family, spec.reversed, current) {
        msg.push_str("; hint: ");
        msg.push_str(&h);
    }
    ConvertError::Unmatched(msg)
}

/// A hint for names that do not match: the family and direction whose rules accept the most names, when they
/// accept clearly more than the one asked for (and at least 90% of the names); else what the file format says.
fn unmatched_hint(
    source: &Checkpoint,
    family: &Family,
    reversed: bool,
    current: usize,
) -> Option<String> {
    let infos = source.infos();
    let n = infos.len();
    let others = || models::registry().iter().filter(|f| f.name != family.name);
    // In order of preference on ties: the other direction of the same family, other families.
    let candidates = std::iter::once((family, !reversed))
        .chain(others().map(|f| (*f, reversed)))
        .chain(others().map(|f| (*f, !reversed)));
    let mut best: Option<(&Family, bool, usize)> = None;
    for (f, r) in candidates {
        let c = models::planner::matched(f, &infos, r);
        if best.is_none_or(|b| c > b.2) {
            best = Some((f, r, c));
        }
    }
    let ms = is_mindspore(source);
    if let Some((f, r, c)) = best.filter(|b| b.2 > current && b.2 * 10 >= n * 9) {
        return Some(if f.name == family.name {
            match (r, ms) {
                (true, true) => "this is a MindSpore checkpoint: add --reversed".to_string(),
                (true, false) => "these are MindSpore names: add --reversed".to_string(),
                (false, _) => "these are HF/torch names: drop --reversed".to_string(),
            }
        } else {
            let dir = match (r == reversed, r) {
                (true, _) => "",
                (false, true) => " --reversed",
                (false, false) => " without --reversed",
            };
            format!("the names fit --model {}{dir} ({c} of {n})", f.name)
        });
    }
    // No family fits clearly: the file format still tells the direction.
    if ms && !reversed {
        Some("this is a MindSpore checkpoint: add --reversed".to_string())
    } else if reversed && !ms && source.format.contains("torch") {
        Some("this is a torch file, not a MindSpore checkpoint: drop --reversed".to_string())
    } else {
        None
    }
}

impl Prepared {
    fn new(spec: &JobSpec) -> Result<Prepared, ConvertError> {
        let opened = open(spec)?;
        let plan = plan_job(spec, &opened)?;
        let Opened { source, config, .. } = opened;
        let mut warnings = plan_warnings(&source, &plan);
        let (target, opts) = if spec.output.as_os_str().is_empty() {
            // Planning only (verify): no output.
            let none = Target {
                format: OutputFormat::Safetensors,
                path: PathBuf::new(),
                sharded: false,
            };
            (none, WriteOptions::default())
        } else {
            let target = target(spec)?;
            check_not_overwriting(&source, &target)?;
            let (opts, warn) = write_options(spec, &source, &target, &plan);
            warnings.extend(warn);
            (target, opts)
        };
        Ok(Prepared {
            source,
            plan,
            target,
            opts,
            device: spec.device.clone(),
            warnings,
            config,
        })
    }

    /// Files the job read: the weights, and the config.json that gave hyper-parameters (so a fingerprint sees
    /// an edit to either).
    fn inputs(&self) -> Vec<(PathBuf, u64)> {
        self.source
            .files
            .iter()
            .chain(&self.config)
            .map(|f| {
                (
                    f.clone(),
                    std::fs::metadata(f).map(|m| m.len()).unwrap_or(0),
                )
            })
            .collect()
    }

    fn summary(&self) -> PlanSummary {
        self.plan.summary(&self.source, self.inputs())
    }

    /// Evaluate output `idx` (into `scratch`'s allocation when computed), check its size, hash it on request.
    fn evaluate<'a>(
        &'a self,
        compute: &Compute,
        idx: usize,
        scratch: Vec<u8>,
        hash: bool,
    ) -> Result<(usize, crate::exec::Evaluated<'a>, Option<String>), ConvertError> {
        let item = &self.plan.items[idx];
        let out = &self.plan.outs[idx];
        let exec_err = |msg: String| ConvertError::Exec {
            tensor: item.name.clone(),
            msg,
        };
        let ev = compute
            .eval_reusing(&item.expr, &self.source.tensors, scratch)
            .map_err(|e| exec_err(e.0))?;
        if ev.bytes.len() != out.info.nbytes() {
            return Err(exec_err(format!(
                "produced {} bytes, expected {} for {} {:?}",
                ev.bytes.len(),
                out.info.nbytes(),
                out.info.dtype,
                out.info.shape
            )));
        }
        let h = hash.then(|| hex(&Sha256::digest(&ev.bytes)));
        Ok((idx, ev, h))
    }

    fn execute(self, ctl: &RunControl) -> Result<JobOutcome, ConvertError> {
        let compute = Compute::from_spec(self.device.as_deref()).map_err(|e| usage(e.0))?;
        // Output files are hashed while they are written (never read back), on this thread.
        let hashing = ctl.hash.then(crate::fsio::HashScope::enter);
        let mut writer = if self.target.sharded {
            formats::sharded::writer(
                self.target.format,
                &self.target.path,
                &self.plan.outs,
                &self.opts,
            )?
        } else {
            formats::create_single_writer(
                self.target.format,
                &self.target.path,
                &self.plan.outs,
                &self.opts,
            )?
        };
        let mut hashes: Vec<Option<String>> = vec![None; self.plan.outs.len()];
        let mut written = 0u64;
        let mut overflowed = 0u64;
        // Bytes read: every source tensor the plan uses, once (a fused or split tensor is read once; an FP8
        // weight counts its own bytes, not the wider bytes it dequantises to). Added as each output is written.
        let mut first_use = vec![true; self.source.tensors.len()];
        let read_by_item: Vec<u64> = self
            .plan
            .items
            .iter()
            .map(|item| {
                let mut ins = Vec::new();
                item.expr.inputs(&mut ins);
                ins.into_iter()
                    .filter(|&i| std::mem::replace(&mut first_use[i], false))
                    .map(|i| self.source.tensors[i].info.nbytes() as u64)
                    .sum()
            })
            .collect();
        let mut read = 0u64;
        let order = writer.order();
        // Two stages overlap: a producer thread evaluates tensor k+1 (and hashes it) while this thread writes
        // tensor k. The rendezvous channel keeps at most two computed tensors alive; written buffers go back to
        // the producer for reuse, so computed tensors do not fault in fresh pages each time.
        std::thread::scope(|scope| -> Result<(), ConvertError> {
            type Produced<'a> = (usize, crate::exec::Evaluated<'a>, Option<String>);
            let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Produced, ConvertError>>(0);
            let (recycle_tx, recycle_rx) = std::sync::mpsc::channel::<Vec<u8>>();
            let order_ref = &order;
            let compute = &compute;
            let this = &self;
            scope.spawn(move || {
                for &idx in order_ref {
                    if ctl.cancel.load(Ordering::Relaxed) {
                        return;
                    }
                    let scratch = recycle_rx.try_recv().unwrap_or_default();
                    let r = this.evaluate(compute, idx, scratch, ctl.hash);
                    let failed = r.is_err();
                    if tx.send(r).is_err() || failed {
                        return;
                    }
                }
            });
            for _ in 0..order.len() {
                if ctl.cancel.load(Ordering::Relaxed) {
                    return Err(ConvertError::Cancelled);
                }
                let Ok(produced) = rx.recv() else {
                    if ctl.cancel.load(Ordering::Relaxed) {
                        return Err(ConvertError::Cancelled);
                    }
                    return Err(usage("internal error: the evaluator stopped early"));
                };
                let (idx, ev, hash) = produced?;
                hashes[idx] = hash;
                overflowed += ev.overflowed;
                read += read_by_item[idx];
                writer.write(idx, &ev.bytes)?;
                written += ev.bytes.len() as u64;
                (ctl.progress)(written);
                if let std::borrow::Cow::Owned(buf) = ev.bytes {
                    let _ = recycle_tx.send(buf);
                }
            }
            Ok(())
        })?;
        let files = writer.finish()?;
        let mut warnings = self.warnings.clone();
        if overflowed > 0 {
            warnings.push(format!(
                "{overflowed} finite value(s) overflowed to infinity in a narrowing cast"
            ));
        }
        // Tied copies that the writer shared were not evaluated: their hash is their original's.
        for i in 0..hashes.len() {
            if hashes[i].is_none() {
                if let Some(t) = self.plan.outs[i].tied_to {
                    hashes[i] = hashes[t].clone();
                }
            }
        }
        let mut outputs = Vec::new();
        let mut bytes_written = 0;
        for path in files {
            let bytes = std::fs::metadata(&path)
                .map_err(|e| formats::FormatError::io(&path, e))?
                .len();
            bytes_written += bytes;
            let sha256 = match &hashing {
                None => None,
                Some(scope) => match scope.take(&path) {
                    Some(d) => Some(d),
                    // No streamed digest (a writer rewrote bytes in a way fsio could not follow, e.g. a zip64
                    // entry of 4 GiB or more): this one file is hashed from disk.
                    None => Some(file_sha256(&path)?),
                },
            };
            outputs.push(OutputFile {
                path,
                sha256,
                bytes,
            });
        }
        let tensors = self
            .plan
            .items
            .iter()
            .zip(hashes)
            .map(|(i, h)| (i.name.clone(), h.unwrap_or_default()))
            .collect();
        Ok(JobOutcome {
            inputs: self.inputs(),
            outputs,
            tensors,
            bytes_read: read,
            bytes_written,
            warnings,
        })
    }
}

/// Lower-case hex of a digest.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// sha256 of a whole file, streamed.
pub fn file_sha256(path: &Path) -> Result<String, ConvertError> {
    let map = formats::map_file(path)?;
    Ok(hex(&Sha256::digest(&map[..])))
}

/// Parse the user-facing `--dtype` (`fp32`, `fp16`, `bf16`).
pub fn parse_dtype(s: &str) -> Result<DType, ConvertError> {
    DType::from_cli(s).ok_or_else(|| usage(format!("--dtype {s}: expected fp32, fp16 or bf16")))
}

/// One difference found by [`verify`].
pub type Difference = String;

/// Compare checkpoint `spec.input` — mapped through `spec.model` (and `--dtype`) when given — with the checkpoint
/// at `expected`, tensor by tensor. Returns the differences (empty when identical).
pub fn verify(spec: &JobSpec, expected: &Path) -> Result<Vec<Difference>, ConvertError> {
    let mut spec = spec.clone();
    spec.output = PathBuf::new();
    let prepared = Prepared::new(&spec)?;
    let other = formats::open_model(expected)?;
    let compute = Compute::from_spec(spec.device.as_deref()).map_err(|e| usage(e.0))?;
    let mut diffs = Vec::new();
    let mut by_name: HashMap<&str, usize> = HashMap::new();
    for (k, t) in other.tensors.iter().enumerate() {
        by_name.insert(t.info.name.as_str(), k);
    }
    for (item, out) in prepared.plan.items.iter().zip(&prepared.plan.outs) {
        let Some(&k) = by_name.get(item.name.as_str()) else {
            diffs.push(format!("{}: only in {}", item.name, spec.input.display()));
            continue;
        };
        by_name.remove(item.name.as_str());
        let theirs = &other.tensors[k];
        if theirs.info.dtype != out.info.dtype || theirs.info.shape != out.info.shape {
            diffs.push(format!(
                "{}: {} {:?} vs {} {:?}",
                item.name, out.info.dtype, out.info.shape, theirs.info.dtype, theirs.info.shape
            ));
            continue;
        }
        let ours = compute
            .eval(&item.expr, &prepared.source.tensors)
            .map_err(|e| ConvertError::Exec {
                tensor: item.name.clone(),
                msg: e.0,
            })?;
        let theirs = theirs.data.bytes();
        if ours.bytes.as_ref() != theirs.as_ref() {
            let elem = out.info.dtype.size().max(1);
            let differing = ours
                .bytes
                .chunks(elem)
                .zip(theirs.chunks(elem))
                .filter(|(a, b)| a != b)
                .count();
            diffs.push(format!(
                "{}: values differ in {differing} of {} elements",
                item.name,
                out.info.numel()
            ));
        }
    }
    let mut rest: Vec<&str> = by_name.into_keys().collect();
    rest.sort_unstable();
    for name in rest {
        diffs.push(format!("{name}: only in {}", expected.display()));
    }
    Ok(diffs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::OutTensor;
    use crate::tensor::TensorInfo;

    fn spec(model: Option<&str>, reversed: bool, out: &str) -> JobSpec {
        JobSpec {
            model: model.map(String::from),
            reversed,
            output: PathBuf::from(out),
            ..JobSpec::default()
        }
    }

    /// §4 item 5: one rule in every mode — the extension names the format; an unknown or missing one is refused
    /// (before: forward wrote `x.txt.ckpt`, reverse a torch zip named `x.txt`, a pure conversion refused).
    #[test]
    fn output_format_follows_the_extension_in_every_mode() {
        let t = |m, r, o| target(&spec(m, r, o)).map(|t| (t.format, t.path, t.sharded));
        for (m, r) in [(Some("llama"), false), (Some("llama"), true), (None, false)] {
            for bad in ["x/out.txt", "x/out"] {
                let e = t(m, r, bad).unwrap_err().to_string();
                assert!(e.starts_with(bad) && e.contains(".ckpt (MindSpore)"), "{e}");
            }
            assert_eq!(
                t(m, r, "x/out.ckpt").unwrap(),
                (OutputFormat::Ckpt, PathBuf::from("x/out.ckpt"), false)
            );
            assert_eq!(t(m, r, "a.pth").unwrap().0, OutputFormat::Torch);
            assert_eq!(
                t(m, r, "a.safetensors").unwrap().0,
                OutputFormat::Safetensors
            );
        }
        // the suggestion is the mode's usual extension
        let e = |m, r| t(m, r, "y.txt").unwrap_err().to_string();
        assert!(e(Some("llama"), false).ends_with("e.g. y.txt.ckpt"));
        assert!(e(Some("llama"), true).ends_with("e.g. y.txt.bin"));
        assert!(e(None, false).ends_with("e.g. y.txt.safetensors"));
        assert!(e(None, false).contains("unknown extension '.txt'"));
        let d = t(Some("llama"), true, "hf/").unwrap();
        assert_eq!((d.0, d.2), (OutputFormat::Safetensors, true));
        let mut s = spec(None, false, "o/model.bin");
        s.max_shard_size = Some(100);
        let t = target(&s).unwrap();
        assert_eq!(
            (t.format, t.path, t.sharded),
            (OutputFormat::Torch, PathBuf::from("o"), true)
        );
    }

    /// Write a small checkpoint of f32 tensors (contents: zeros) with the given names and shapes.
    fn write_ckpt(
        path: &Path,
        format: OutputFormat,
        tensors: &[(&str, &[usize])],
        meta: &[(&str, &str)],
    ) {
        let outs: Vec<OutTensor> = tensors
            .iter()
            .map(|(n, s)| OutTensor {
                info: TensorInfo::new(*n, DType::F32, s.to_vec()),
                tied_to: None,
            })
            .collect();
        let opts = WriteOptions {
            metadata: meta
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..WriteOptions::default()
        };
        let mut w = formats::create_single_writer(format, path, &outs, &opts).unwrap();
        for i in w.order() {
            w.write(i, &vec![0u8; outs[i].info.nbytes()]).unwrap();
        }
        w.finish().unwrap();
    }

    fn run_job(spec: &JobSpec) -> Result<JobOutcome, ConvertError> {
        let cancel = AtomicBool::new(false);
        let ctl = RunControl {
            cancel: &cancel,
            progress: &|_| {},
            hash: false,
        };
        run(spec, &ctl)
    }

    fn job(model: Option<&str>, reversed: bool, input: &Path, output: &Path) -> JobSpec {
        JobSpec {
            model: model.map(String::from),
            reversed,
            input: input.to_path_buf(),
            output: output.to_path_buf(),
            ..JobSpec::default()
        }
    }

    const GLM: &[(&str, &[usize])] = &[
        ("transformer.word_embeddings.weight", &[8, 4]),
        ("transformer.layers.0.input_layernorm.weight", &[4]),
        ("transformer.layers.0.input_layernorm.bias", &[4]),
        (
            "transformer.layers.0.attention.query_key_value.weight",
            &[12, 4],
        ),
        ("transformer.layers.0.attention.dense.weight", &[4, 4]),
        ("transformer.final_layernorm.weight", &[4]),
    ];
    const LLAMA: &[(&str, &[usize])] = &[
        ("model.embed_tokens.weight", &[8, 4]),
        ("model.layers.0.self_attn.q_proj.weight", &[4, 4]),
        ("model.layers.0.self_attn.k_proj.weight", &[4, 4]),
        ("model.layers.0.input_layernorm.weight", &[4]),
        ("model.norm.weight", &[4]),
    ];
    const LLAMA_MS: &[(&str, &[usize])] = &[
        ("model.tok_embeddings.embedding_weight", &[8, 4]),
        ("model.layers.0.attention.wq.weight", &[4, 4]),
        ("model.norm_out.weight", &[4]),
    ];

    /// §4 item 1: names that match no rule give one line naming the input, the count, the first few names and a
    /// hint (before: every name on one long line, no file, no hint).
    #[test]
    fn unmatched_names_name_the_input_and_hint() {
        let dir = tempfile::tempdir().unwrap();
        let glm = dir.path().join("glm.safetensors");
        write_ckpt(&glm, OutputFormat::Safetensors, GLM, &[]);
        let out = dir.path().join("o.ckpt");
        let e = error_chain(&plan(&job(Some("llama"), false, &glm, &out)).unwrap_err());
        assert_eq!(e.lines().count(), 1, "{e}");
        assert!(
            e.starts_with(&format!(
                "{}: 6 of 6 tensor names match no rule of --model llama: ",
                glm.display()
            )),
            "{e}"
        );
        assert!(
            e.contains(": transformer.") && e.contains(" and 3 more; "),
            "{e}"
        );
        assert!(
            e.ends_with("hint: the names fit --model glm (6 of 6)"),
            "{e}"
        );
        assert!(e.len() < 300, "{e}");
        // a torch/HF checkpoint with --reversed
        let hf = dir.path().join("llama.bin");
        write_ckpt(&hf, OutputFormat::Torch, LLAMA, &[]);
        let e = error_chain(&plan(&job(Some("llama"), true, &hf, &out)).unwrap_err());
        assert!(
            e.ends_with("hint: these are HF/torch names: drop --reversed"),
            "{e}"
        );
        // a MindSpore checkpoint without --reversed
        let ms = dir.path().join("llama.ckpt");
        write_ckpt(&ms, OutputFormat::Ckpt, LLAMA_MS, &[]);
        let e = error_chain(&plan(&job(Some("llama"), false, &ms, &out)).unwrap_err());
        assert!(
            e.ends_with("hint: this is a MindSpore checkpoint: add --reversed"),
            "{e}"
        );
        // names no family knows, in a MindSpore file: the format still tells the direction
        let odd = dir.path().join("odd.ckpt");
        write_ckpt(&odd, OutputFormat::Ckpt, &[("foo.bar", &[2])], &[]);
        let e = error_chain(&plan(&job(Some("gpt"), false, &odd, &out)).unwrap_err());
        assert!(
            e.ends_with("hint: this is a MindSpore checkpoint: add --reversed"),
            "{e}"
        );
        // no clear hint: none given
        let st = dir.path().join("odd.safetensors");
        write_ckpt(&st, OutputFormat::Safetensors, &[("foo.bar", &[2])], &[]);
        let e = error_chain(&plan(&job(Some("gpt"), false, &st, &out)).unwrap_err());
        assert!(!e.contains("hint"), "{e}");
    }

    /// §4 item 6: a missing output directory is created, and the job says so in a warning (before: silently).
    #[test]
    fn a_created_output_directory_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("in.safetensors");
        write_ckpt(&input, OutputFormat::Safetensors, LLAMA, &[]);
        let out = dir.path().join("typo/deeper/out.ckpt");
        let outcome = run_job(&job(None, false, &input, &out)).unwrap();
        assert!(out.is_file());
        assert_eq!(
            outcome.warnings.first().map(String::as_str),
            Some(
                format!(
                    "created the output directory {}",
                    dir.path().join("typo").display()
                )
                .as_str()
            )
        );
        // an existing directory: no warning
        let again = run_job(&job(None, false, &input, &dir.path().join("typo/x.ckpt"))).unwrap();
        assert!(again.warnings.is_empty(), "{:?}", again.warnings);
    }

    fn st_format(path: &Path) -> Option<String> {
        let ck = formats::safetensors::read(path).unwrap();
        ck.metadata
            .iter()
            .find(|(k, _)| k == "format")
            .map(|(_, v)| v.clone())
    }

    /// §4 item 10: safetensors `format` metadata says whose names the file holds, in every mode (before: a pure
    /// `.ckpt` → `.safetensors` wrote `pt` over MindSpore names).
    #[test]
    fn safetensors_format_metadata_follows_the_names() {
        let dir = tempfile::tempdir().unwrap();
        let (ms, hf) = (dir.path().join("m.ckpt"), dir.path().join("h.bin"));
        write_ckpt(&ms, OutputFormat::Ckpt, LLAMA_MS, &[]);
        write_ckpt(&hf, OutputFormat::Torch, LLAMA, &[]);
        let st_ms = dir.path().join("st_ms.safetensors");
        write_ckpt(
            &st_ms,
            OutputFormat::Safetensors,
            LLAMA_MS,
            &[("format", "ms")],
        );
        for (k, (model, reversed, input, want)) in [
            (None, false, &ms, "ms"),
            (None, false, &hf, "pt"),
            (None, false, &st_ms, "ms"),
            (Some("llama"), false, &hf, "ms"),
            (Some("llama"), true, &ms, "pt"),
        ]
        .into_iter()
        .enumerate()
        {
            let out = dir.path().join(format!("o{k}.safetensors"));
            run_job(&job(model, reversed, input, &out)).unwrap();
            assert_eq!(st_format(&out).as_deref(), Some(want), "case {k}");
        }
    }

    #[test]
    fn error_chain_joins_causes_once() {
        let e = ConvertError::Format(formats::FormatError::io(
            Path::new("f.bin"),
            std::io::Error::other("disk on fire"),
        ));
        assert_eq!(error_chain(&e), "f.bin: disk on fire");
    }
}

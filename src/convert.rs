//! One conversion job: source → plan (headers only) → executor → sink. Used by both binaries and the runner.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use sha2::{Digest, Sha256};

use crate::exec::Compute;
use crate::formats::{self, OutTensor, OutputFormat, WriteOptions};
use crate::models::{self, HyperParams};
use crate::ops::{Expr, Plan, PlanItem};
use crate::tensor::{Checkpoint, DType, TensorInfo};

pub use crate::options::JobSpec;

/// Errors of one job, with the whole cause chain in `Display` of the chain (see [`error_chain`]).
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error(transparent)]
    Format(#[from] crate::formats::FormatError),
    #[error(transparent)]
    Model(#[from] crate::models::ModelError),
    #[error("{0}")]
    Usage(String),
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

/// What planning (headers only) tells before running: used for dry runs and memory admission.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PlanSummary {
    pub inputs: Vec<(PathBuf, u64)>,
    /// One line per output tensor: `source names -> target name  op  dtype shape`.
    pub lines: Vec<String>,
    /// Output tensor names in write order.
    pub outputs: Vec<String>,
    /// Total bytes of the output tensors.
    pub out_bytes: u64,
    /// Planned peak of memory the job itself holds (bytes): about the two largest buffers in flight.
    pub peak_bytes: u64,
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
    _lock: &OutputLock,
) -> Result<JobOutcome, ConvertError> {
    Prepared::new(spec)?.execute(ctl)
}

/// An exclusive lock on one job's output (a `flock` on a hidden lock file beside it), held until dropped; the
/// lock file is removed on drop. Taking it also removes temporary files that a killed earlier run left.
pub struct OutputLock {
    _file: std::fs::File,
    pub path: PathBuf,
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
    Ok(OutputLock { _file: file, path })
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

/// A planned job: source opened (headers), plan checked, output decided.
struct Prepared {
    source: Checkpoint,
    items: Vec<PlanItem>,
    outs: Vec<OutTensor>,
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
    let (format, path) = match OutputFormat::from_extension(out) {
        Some(f) => (f, out.clone()),
        // Like the reference: a MindSpore output gets `.ckpt` appended, a reversed one is a torch file.
        None if to_mindspore => {
            let mut p = out.clone().into_os_string();
            p.push(".ckpt");
            (OutputFormat::Ckpt, PathBuf::from(p))
        }
        None if spec.model.is_some() => (OutputFormat::Torch, out.clone()),
        None => {
            return Err(usage(format!(
                "{}: cannot tell the output format: use .ckpt, .bin/.pt/.pth, .safetensors or a directory",
                out.display()
            )))
        }
    };
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

/// `names[#i]` rendering of an expression for dry runs.
fn render(expr: &Expr, infos: &[TensorInfo]) -> String {
    match expr {
        Expr::Input(i) => infos.get(*i).map_or("?".into(), |t| t.name.clone()),
        Expr::Reshape(s, shape) => format!("reshape({}, {shape:?})", render(s, infos)),
        Expr::Narrow {
            src,
            dim,
            start,
            len,
        } => format!(
            "narrow({}, dim={dim}, {start}..{})",
            render(src, infos),
            start + len
        ),
        Expr::Transpose(s) => format!("transpose({})", render(s, infos)),
        Expr::Concat(parts, dim) => format!(
            "concat([{}], dim={dim})",
            parts
                .iter()
                .map(|p| render(p, infos))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Expr::Cast(s, d) => format!("cast({}, {d})", render(s, infos)),
        Expr::Zeros(shape, d) => format!("zeros({shape:?}, {d})"),
    }
}

impl Prepared {
    fn new(spec: &JobSpec) -> Result<Prepared, ConvertError> {
        let dist = formats::distributed::Options {
            keep_optimizer: spec.keep_optimizer,
            strategy: spec.strategy.clone(),
        };
        let source = formats::open_model_with(&spec.input, &dist)?;
        let infos = source.infos();
        let mut warnings = Vec::new();
        let mut config = None;
        let plan = match &spec.model {
            Some(name) => {
                let family = models::find(name)?;
                let hp = match read_config(&spec.input)? {
                    Some((path, cfg)) => {
                        config = Some(path);
                        HyperParams::from_config(&cfg)
                    }
                    None => HyperParams::default(),
                }
                .with_flags(spec.n_head, spec.hidden_size, spec.layers)
                .map_err(|e| match &config {
                    Some(p) => ConvertError::Config {
                        path: p.clone(),
                        msg: e.to_string(),
                    },
                    None => e.into(),
                })?;
                let planned = if spec.reversed {
                    family.reverse(&infos, &hp)
                } else {
                    family.forward(&infos, &hp)
                };
                // A hyper-parameter that contradicts the weights: name the config.json it came from.
                match (planned, &config) {
                    (Err(e @ models::ModelError::Hyper { .. }), Some(p)) => {
                        return Err(ConvertError::Config {
                            path: p.clone(),
                            msg: e.to_string(),
                        })
                    }
                    (r, _) => r?,
                }
            }
            None => Plan {
                items: infos
                    .iter()
                    .enumerate()
                    .map(|(i, t)| PlanItem::new(t.name.clone(), Expr::Input(i)))
                    .collect(),
                dropped: Vec::new(),
            },
        };
        if plan.items.is_empty() {
            return Err(usage(format!(
                "{}: nothing to convert ({} input tensors, {} dropped by rules); refusing to write an empty checkpoint",
                spec.input.display(),
                infos.len(),
                plan.dropped.len()
            )));
        }
        for d in &plan.dropped {
            warnings.push(format!("dropped '{}': {}", d.name, d.rule));
        }
        if !source.others.is_empty() {
            let names: Vec<&str> = source.others.iter().map(|o| o.name.as_str()).collect();
            warnings.push(format!(
                "{} non-tensor entr{} not converted: {}",
                names.len(),
                if names.len() == 1 { "y" } else { "ies" },
                names.join(", ")
            ));
        }
        let mut items = plan.items;
        if let Some(to) = spec.dtype {
            if !to.is_float() {
                return Err(usage(format!("--dtype {to}: only fp32, fp16 and bf16")));
            }
        }
        crate::plan::apply_dtype(&mut items, &infos, spec.dtype)
            .map_err(|(tensor, e)| ConvertError::Exec { tensor, msg: e.0 })?;
        let outs = out_tensors(&source, &items)?;
        if spec.output.as_os_str().is_empty() {
            // Planning only (verify): no output.
            return Ok(Prepared {
                source,
                items,
                outs,
                target: Target {
                    format: OutputFormat::Safetensors,
                    path: PathBuf::new(),
                    sharded: false,
                },
                opts: WriteOptions::default(),
                device: spec.device.clone(),
                warnings,
                config,
            });
        }
        let target = target(spec)?;
        check_not_overwriting(&source, &target)?;
        let to_mindspore = spec.model.is_some() && !spec.reversed;
        let opts = WriteOptions {
            metadata: vec![(
                "format".to_string(),
                if to_mindspore { "ms" } else { "pt" }.to_string(),
            )],
            max_shard_size: spec.max_shard_size,
            ..WriteOptions::default()
        };
        Ok(Prepared {
            source,
            items,
            outs,
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
        let infos = self.source.infos();
        let lines = self
            .items
            .iter()
            .zip(&self.outs)
            .map(|(item, out)| {
                format!(
                    "{} <- {}  {} {:?}",
                    item.name,
                    render(&item.expr, &infos),
                    out.info.dtype,
                    out.info.shape
                )
            })
            .collect();
        let out_bytes = self.outs.iter().map(|o| o.info.nbytes() as u64).sum();
        // Memory the job itself holds: a borrowed tensor costs nothing beyond the map; a computed one holds its
        // materialised inputs, the candle result and the output buffer, about three times its size.
        let largest_computed = self
            .items
            .iter()
            .zip(&self.outs)
            .filter(|(i, _)| i.expr.as_plain_input().is_none())
            .map(|(_, o)| 3 * o.info.nbytes() as u64)
            .max()
            .unwrap_or(0);
        PlanSummary {
            inputs: self.inputs(),
            lines,
            outputs: self.items.iter().map(|i| i.name.clone()).collect(),
            out_bytes,
            peak_bytes: largest_computed + (16 << 20),
        }
    }

    /// Evaluate output `idx` (into `scratch`'s allocation when computed), check its size, hash it on request.
    fn evaluate<'a>(
        &'a self,
        compute: &Compute,
        idx: usize,
        scratch: Vec<u8>,
        hash: bool,
    ) -> Result<(usize, crate::exec::Evaluated<'a>, Option<String>), ConvertError> {
        let item = &self.items[idx];
        let out = &self.outs[idx];
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
                &self.outs,
                &self.opts,
            )?
        } else {
            formats::create_single_writer(
                self.target.format,
                &self.target.path,
                &self.outs,
                &self.opts,
            )?
        };
        let mut hashes: Vec<Option<String>> = vec![None; self.outs.len()];
        let mut written = 0u64;
        let mut overflowed = 0u64;
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
                read += ev.bytes.len() as u64;
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
                if let Some(t) = self.outs[i].tied_to {
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

/// Output headers, with tied copies marked: a plain copy of a source tensor already written (or of one it is
/// tied to) shares that output.
fn out_tensors(source: &Checkpoint, items: &[PlanItem]) -> Result<Vec<OutTensor>, ConvertError> {
    let infos = source.infos();
    let mut first_copy: HashMap<usize, usize> = HashMap::new();
    let mut seen_names: HashMap<&str, usize> = HashMap::new();
    let mut outs = Vec::with_capacity(items.len());
    for (k, item) in items.iter().enumerate() {
        if let Some(prev) = seen_names.insert(item.name.as_str(), k) {
            return Err(ConvertError::Exec {
                tensor: item.name.clone(),
                msg: format!("the plan writes this name twice (outputs #{prev} and #{k})"),
            });
        }
        let (dtype, shape) = item.expr.infer(&infos).map_err(|e| ConvertError::Exec {
            tensor: item.name.clone(),
            msg: e.0,
        })?;
        let tied_to = match item.expr {
            Expr::Input(i) => {
                let root = source.tensors[i].tied_to.unwrap_or(i);
                match first_copy.get(&root) {
                    Some(&o) => Some(o),
                    None => {
                        first_copy.insert(root, k);
                        None
                    }
                }
            }
            _ => None,
        };
        outs.push(OutTensor {
            info: TensorInfo::new(item.name.clone(), dtype, shape),
            tied_to,
        });
    }
    Ok(outs)
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
    for (item, out) in prepared.items.iter().zip(&prepared.outs) {
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

    fn spec(model: Option<&str>, reversed: bool, out: &str) -> JobSpec {
        JobSpec {
            model: model.map(String::from),
            reversed,
            output: PathBuf::from(out),
            ..JobSpec::default()
        }
    }

    #[test]
    fn output_format_follows_the_path() {
        let t = |m, r, o| target(&spec(m, r, o)).map(|t| (t.format, t.path, t.sharded));
        assert_eq!(
            t(Some("llama"), false, "x/out").unwrap(),
            (OutputFormat::Ckpt, PathBuf::from("x/out.ckpt"), false)
        );
        assert_eq!(
            t(Some("llama"), true, "x/out").unwrap(),
            (OutputFormat::Torch, PathBuf::from("x/out"), false)
        );
        assert_eq!(t(None, false, "a.pth").unwrap().0, OutputFormat::Torch);
        assert_eq!(
            t(None, false, "a.safetensors").unwrap().0,
            OutputFormat::Safetensors
        );
        assert!(t(None, false, "a.weird").is_err());
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

    #[test]
    fn error_chain_joins_causes_once() {
        let e = ConvertError::Format(formats::FormatError::io(
            Path::new("f.bin"),
            std::io::Error::other("disk on fire"),
        ));
        assert_eq!(error_chain(&e), "f.bin: disk on fire");
    }
}

//! One conversion job: source → plan (headers only) → executor → sink. Used by both binaries and the runner.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use crate::tensor::DType;

/// Everything that defines one conversion (a `convert-weight` call or one `[[job]]` of a manifest).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct JobSpec {
    /// Model family key or alias; `None` means a pure format conversion.
    pub model: Option<String>,
    pub input: PathBuf,
    pub output: PathBuf,
    pub reversed: bool,
    /// Cast floating tensors to this dtype.
    pub dtype: Option<DType>,
    pub n_head: Option<usize>,
    pub hidden_size: Option<usize>,
    pub layers: Option<usize>,
    /// `cpu`, `cuda`, `cuda:N` or `auto` (`None` = auto).
    pub device: Option<String>,
    /// Split the output into HF shards of at most this many bytes.
    pub max_shard_size: Option<u64>,
}

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
    Err(ConvertError::Usage(format!(
        "{}: conversion engine not implemented yet",
        spec.input.display()
    )))
}

/// Run a job to completion: the output appears atomically at `spec.output` only when complete.
pub fn run(spec: &JobSpec, ctl: &RunControl) -> Result<JobOutcome, ConvertError> {
    let _ = ctl;
    Err(ConvertError::Usage(format!(
        "{}: conversion engine not implemented yet",
        spec.input.display()
    )))
}

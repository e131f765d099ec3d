//! `convert-weight`: one conversion (the reference tool's flags), plus `inspect` and `verify`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;

use clap::{Args, Parser, Subcommand};
use convert_weight::convert::{self, error_chain, RunControl};
use convert_weight::inspect;
use convert_weight::models;
use convert_weight::options::{self, JobSpec};
use convert_weight::tensor::DType;

#[derive(Parser, Debug)]
#[command(
    name = "convert-weight",
    version,
    about = "Convert LLM weights between PyTorch/HuggingFace and MindSpore",
    args_conflicts_with_subcommands = true,
    arg_required_else_help = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    convert: ConvertArgs,
    /// List the model families, their aliases and what each needs.
    #[arg(long = "list-models", alias = "list_models")]
    list_models: bool,
    /// Print the plan (source names -> target names, op, dtype, shape) from headers only; write nothing.
    #[arg(long = "dry-run", alias = "dry_run")]
    dry_run: bool,
}

/// Options shared by a conversion and `verify`'s mapping of A; one parser each (see `convert_weight::options`).
#[derive(Args, Debug, Clone)]
struct TuneArgs {
    /// Cast floating tensors: fp32, fp16 or bf16 (integer and bool tensors keep their dtype).
    #[arg(long, value_parser = options::parse_dtype)]
    dtype: Option<DType>,
    /// Attention heads (overrides config.json; a contradiction is an error).
    #[arg(long = "n_head", alias = "n-head", value_parser = options::parse_positive)]
    n_head: Option<usize>,
    /// Hidden size (overrides config.json; a contradiction is an error).
    #[arg(long = "hidden_size", alias = "hidden-size", value_parser = options::parse_positive)]
    hidden_size: Option<usize>,
    /// Number of layers (overrides config.json; a contradiction is an error).
    #[arg(long, value_parser = options::parse_positive)]
    layers: Option<usize>,
    /// Compute device: cpu, cuda, cuda:N or auto (CUDA when built with `--features cuda` and a GPU is present).
    #[arg(long, value_parser = options::parse_device)]
    device: Option<String>,
    /// MindFormers 2.x gate/up (`linear_fc1`) layout: interleaved (2.1.0, the default) or contiguous (2.0.0).
    #[arg(long = "mlp-layout", alias = "mlp_layout", value_parser = options::parse_mlp_layout)]
    mlp_layout: Option<bool>,
}

#[derive(Args, Debug, Clone)]
struct ModelArgs {
    /// Model family (see --list-models). Without it: a pure format conversion.
    #[arg(long)]
    model: Option<String>,
    /// Convert MindSpore -> torch/HF instead of torch/HF -> MindSpore.
    #[arg(long)]
    reversed: bool,
    #[command(flatten)]
    tune: TuneArgs,
}

/// `verify`'s view of A: how A is mapped before the comparison.
#[derive(Args, Debug, Clone)]
struct VerifyModelArgs {
    /// Map A's tensor names and layouts through this family first (as a conversion of A would), then compare
    /// with B. Without it, A and B are compared name by name as they are.
    #[arg(long)]
    model: Option<String>,
    /// With --model: A is a MindSpore checkpoint and B its torch/HF counterpart (map A MindSpore -> HF).
    /// Without: A is torch/HF and B MindSpore.
    #[arg(long)]
    reversed: bool,
    #[command(flatten)]
    tune: TuneArgs,
}

#[derive(Args, Debug)]
struct ConvertArgs {
    /// Input: a weight file, one shard, an index json or a directory.
    #[arg(long = "input_path", alias = "input-path")]
    input_path: Option<PathBuf>,
    /// Output file (.ckpt, .bin/.pt/.pth, .safetensors) or directory (HF shards).
    #[arg(long = "output_path", alias = "output-path")]
    output_path: Option<PathBuf>,
    /// Split the output into HF shards of at most this size: KB/MB/GB powers of 1000, KiB/MiB/GiB powers of 1024,
    /// a lower-case final b means bits (HF: 5Gb = 625 MB), bare digits are bytes.
    #[arg(long = "max-shard-size", alias = "max_shard_size", value_parser = options::parse_size)]
    max_shard_size: Option<u64>,
    /// Distributed input: keep optimizer state (adam_m/adam_v, accu_grads, global_step...) instead of dropping it.
    #[arg(long = "keep-optimizer", alias = "keep_optimizer")]
    keep_optimizer: bool,
    /// Distributed MindSpore input: the strategy file or per-stage folder (default: the one `*strategy*` entry of
    /// the input folder).
    #[arg(long)]
    strategy: Option<PathBuf>,
    /// torch training checkpoints: read the state dict under this key (`ema`, or nested as `outer/inner`) instead
    /// of the one chosen by its usual name (`state_dict`, `model_state_dict`, `model`...).
    #[arg(long = "state-dict-key", alias = "state_dict_key")]
    state_dict_key: Option<String>,
    #[command(flatten)]
    model: ModelArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// List a checkpoint's tensors from its headers.
    Inspect {
        /// A weight file, a shard, an index json or a directory.
        path: PathBuf,
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
        /// Add the sha256 of every tensor's raw bytes.
        #[arg(long)]
        hash: bool,
    },
    /// Compare two checkpoints tensor by tensor: A (mapped through --model when given) against B. Prints
    /// `identical` and exits 0, or one line per difference and exits 1.
    Verify {
        /// The checkpoint to check: a weight file, a shard, an index json or a directory (the source of a
        /// conversion when --model is given).
        #[arg(value_name = "A")]
        a: PathBuf,
        /// The expected checkpoint (for example the output of a conversion of A).
        #[arg(value_name = "B")]
        b: PathBuf,
        #[command(flatten)]
        model: VerifyModelArgs,
    },
    /// Cut a full checkpoint (MindSpore names) into a distributed layout: the per-rank files of a MindSpore
    /// strategy (--strategy), or a MindFormers 2.x layout (--tp/--pp/--ep). Nothing is written on any error.
    Split {
        /// The full checkpoint: a weight file, a shard, an index json or a directory.
        source: PathBuf,
        /// The output folder (must not exist, or be empty).
        out: PathBuf,
        /// MindSpore strategy file or per-stage folder: writes rank_N/checkpoint_N.<format> and the strategy.
        #[arg(long, required_unless_present = "tp", conflicts_with_all = ["tp", "pp", "ep"])]
        strategy: Option<PathBuf>,
        /// Rank file format with --strategy: ckpt or safetensors.
        #[arg(long, default_value = "ckpt", value_parser = ["ckpt", "safetensors"])]
        format: String,
        /// MindFormers 2.x layout: tensor parallel size.
        #[arg(long, value_parser = options::parse_positive)]
        tp: Option<usize>,
        /// MindFormers 2.x layout: pipeline parallel size.
        #[arg(long, default_value_t = 1, value_parser = options::parse_positive)]
        pp: usize,
        /// MindFormers 2.x layout: expert parallel size.
        #[arg(long, default_value_t = 1, value_parser = options::parse_positive)]
        ep: usize,
        /// Layers split evenly over the pipeline stages (default: from the tensor names).
        #[arg(long, value_parser = options::parse_positive)]
        layers: Option<usize>,
        /// MindFormers 2.x: the iteration folder written (iteration_NNNNNNNN).
        #[arg(long, default_value_t = 1)]
        iteration: u64,
    },
}

fn spec_from(
    model: Option<String>,
    reversed: bool,
    t: &TuneArgs,
    input: PathBuf,
    output: PathBuf,
) -> JobSpec {
    JobSpec {
        model,
        input,
        output,
        reversed,
        dtype: t.dtype,
        n_head: t.n_head,
        hidden_size: t.hidden_size,
        layers: t.layers,
        device: t.device.clone(),
        mlp_layout: t.mlp_layout,
        ..JobSpec::default()
    }
}

fn run(cli: Cli) -> Result<ExitCode, String> {
    let chain = |e: convert::ConvertError| error_chain(&e);
    if cli.list_models {
        for f in models::registry() {
            let name = if f.aliases().is_empty() {
                f.name().to_string()
            } else {
                format!("{} (alias {})", f.name(), f.aliases().join(", "))
            };
            println!("{name:<36} {:<6} {}", f.generation.as_str(), f.describe());
        }
        return Ok(ExitCode::SUCCESS);
    }
    match cli.command {
        Some(Command::Inspect { path, json, hash }) => {
            let out = inspect::inspect(&path, json, hash).map_err(|e| error_chain(&e))?;
            print!("{out}");
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Split {
            source,
            out,
            strategy,
            format,
            tp,
            pp,
            ep,
            layers,
            iteration,
        }) => {
            use convert_weight::formats::{distributed::split, OutputFormat};
            let target = match (strategy, tp) {
                (Some(path), _) => split::Target::Strategy {
                    path,
                    format: if format == "safetensors" {
                        OutputFormat::Safetensors
                    } else {
                        OutputFormat::Ckpt
                    },
                },
                (None, Some(tp)) => split::Target::MindFormers {
                    layout: split::MfLayout {
                        tp,
                        pp,
                        ep,
                        iteration,
                    },
                    layers,
                },
                (None, None) => return Err("split: give --strategy or --tp/--pp/--ep".into()),
            };
            let written = split::run(&source, &out, &target).map_err(|e| error_chain(&e))?;
            eprintln!("wrote {} files under {}", written.len(), out.display());
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Verify { a, b, model }) => {
            let spec = spec_from(model.model, model.reversed, &model.tune, a, PathBuf::new());
            let diffs = convert::verify(&spec, &b).map_err(chain)?;
            if diffs.is_empty() {
                println!("identical");
                Ok(ExitCode::SUCCESS)
            } else {
                for d in &diffs {
                    println!("{d}");
                }
                eprintln!("{} difference(s)", diffs.len());
                Ok(ExitCode::from(1))
            }
        }
        None => {
            let c = cli.convert;
            let input = c.input_path.ok_or("missing --input_path")?;
            let output = if cli.dry_run {
                c.output_path.unwrap_or_default()
            } else {
                c.output_path.ok_or("missing --output_path")?
            };
            let mut spec = spec_from(
                c.model.model,
                c.model.reversed,
                &c.model.tune,
                input,
                output,
            );
            spec.max_shard_size = c.max_shard_size;
            spec.keep_optimizer = c.keep_optimizer;
            spec.strategy = c.strategy;
            spec.state_dict_key = c.state_dict_key;
            if cli.dry_run {
                let plan = convert::plan(&spec).map_err(chain)?;
                for line in &plan.lines {
                    println!("{line}");
                }
                eprintln!(
                    "{} tensors, {} bytes; nothing written (dry run)",
                    plan.outputs.len(),
                    plan.out_bytes
                );
                return Ok(ExitCode::SUCCESS);
            }
            let cancel = AtomicBool::new(false);
            let ctl = RunControl {
                cancel: &cancel,
                progress: &|_| {},
                hash: false,
            };
            let outcome = convert::run(&spec, &ctl).map_err(chain)?;
            for w in &outcome.warnings {
                eprintln!("warning: {w}");
            }
            for o in &outcome.outputs {
                eprintln!("wrote {} ({} bytes)", o.path.display(), o.bytes);
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn main() -> ExitCode {
    // A CUDA build installed beside this one takes over on GPU machines (see src/device.rs).
    convert_weight::device::reexec_cuda_build_if_present();
    // Listings piped into `head` end quietly, as with any Unix tool (Rust ignores SIGPIPE, so `println!` would
    // panic on the closed pipe). Outputs are never written to stdout, so nothing is left half-written.
    #[cfg(unix)]
    // SAFETY: restoring the default disposition of one signal before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            // Usage errors (and no arguments at all: the usage is printed) exit 2, help and version 0.
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    match run(cli) {
        Ok(code) => code,
        Err(msg) => {
            eprintln!("error: {msg}");
            ExitCode::from(1)
        }
    }
}

//! `convert-weight`: one conversion (the reference tool's flags), plus `inspect` and `verify`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;

use clap::{Args, Parser, Subcommand};
use convert_weight::convert::{self, error_chain, JobSpec, RunControl};
use convert_weight::formats::sharded::parse_size;
use convert_weight::inspect;
use convert_weight::models;

#[derive(Parser, Debug)]
#[command(
    name = "convert-weight",
    version,
    about = "Convert LLM weights between PyTorch/HuggingFace and MindSpore",
    args_conflicts_with_subcommands = true
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

#[derive(Args, Debug, Clone)]
struct ModelArgs {
    /// Model family (see --list-models). Without it: a pure format conversion.
    #[arg(long)]
    model: Option<String>,
    /// Convert MindSpore -> torch/HF instead of torch/HF -> MindSpore.
    #[arg(long)]
    reversed: bool,
    /// Cast floating tensors: fp32, fp16 or bf16 (integer and bool tensors keep their dtype).
    #[arg(long)]
    dtype: Option<String>,
    /// Attention heads (overrides config.json; a contradiction is an error).
    #[arg(long = "n_head", alias = "n-head")]
    n_head: Option<usize>,
    /// Hidden size (overrides config.json; a contradiction is an error).
    #[arg(long = "hidden_size", alias = "hidden-size")]
    hidden_size: Option<usize>,
    /// Number of layers (overrides config.json; a contradiction is an error).
    #[arg(long)]
    layers: Option<usize>,
    /// Compute device: cpu, cuda, cuda:N or auto (CUDA when built with `--features cuda` and a GPU is present).
    #[arg(long)]
    device: Option<String>,
}

#[derive(Args, Debug)]
struct ConvertArgs {
    /// Input: a weight file, one shard, an index json or a directory.
    #[arg(long = "input_path", alias = "input-path")]
    input_path: Option<PathBuf>,
    /// Output file (.ckpt, .bin/.pt/.pth, .safetensors) or directory (HF shards).
    #[arg(long = "output_path", alias = "output-path")]
    output_path: Option<PathBuf>,
    /// Split the output into HF shards of at most this size (500KB, 5GB, 10MiB...).
    #[arg(long = "max-shard-size", alias = "max_shard_size")]
    max_shard_size: Option<String>,
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
    /// Compare two checkpoints tensor by tensor (A mapped through --model when given); exit 1 on any difference.
    Verify {
        a: PathBuf,
        b: PathBuf,
        #[command(flatten)]
        model: ModelArgs,
    },
}

fn spec_from(m: &ModelArgs, input: PathBuf, output: PathBuf) -> Result<JobSpec, String> {
    let dtype = match &m.dtype {
        Some(d) if !d.is_empty() => Some(convert::parse_dtype(d).map_err(|e| e.to_string())?),
        _ => None,
    };
    Ok(JobSpec {
        model: m.model.clone(),
        input,
        output,
        reversed: m.reversed,
        dtype,
        n_head: m.n_head,
        hidden_size: m.hidden_size,
        layers: m.layers,
        device: m.device.clone(),
        max_shard_size: None,
    })
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
            println!("{name:<28}{}", f.describe());
        }
        return Ok(ExitCode::SUCCESS);
    }
    match cli.command {
        Some(Command::Inspect { path, json, hash }) => {
            let out = inspect::inspect(&path, json, hash).map_err(|e| error_chain(&e))?;
            print!("{out}");
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Verify { a, b, model }) => {
            let spec = spec_from(&model, a, PathBuf::new())?;
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
            let mut spec = spec_from(&c.model, input, output)?;
            if let Some(s) = &c.max_shard_size {
                spec.max_shard_size =
                    Some(parse_size(s).map_err(|e| format!("--max-shard-size {s}: {e}"))?);
            }
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
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 1 } else { 0 };
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

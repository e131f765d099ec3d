//! Split a full checkpoint into a distributed layout (library API of `formats::distributed::split`; the CLI
//! subcommand will be a thin layer over the same calls).
//!
//! ```text
//! cargo run --example distributed_split -- SOURCE OUT --strategy STRATEGY_FILE_OR_DIR [--format ckpt|safetensors]
//! cargo run --example distributed_split -- SOURCE OUT --mindformers TP PP EP --layers N [--placement llama-ms]
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use convert_weight::formats::distributed::split;
use convert_weight::formats::strategy::Strategy;
use convert_weight::formats::{open_model, OutputFormat};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(n) => {
            println!("wrote {n} files");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

fn run(args: &[String]) -> Result<usize, String> {
    let [src, out, rest @ ..] = args else {
        return Err(
            "usage: SOURCE OUT (--strategy S [--format F] | --mindformers TP PP EP --layers N)"
                .into(),
        );
    };
    let source = open_model(&PathBuf::from(src)).map_err(|e| e.to_string())?;
    let out = PathBuf::from(out);
    let num = |s: Option<&String>| -> Result<usize, String> {
        s.ok_or("missing number")?
            .parse()
            .map_err(|e| format!("{e}"))
    };
    let (plan, meta) = match rest.first().map(String::as_str) {
        Some("--strategy") => {
            let st = Strategy::read(&PathBuf::from(
                rest.get(1).ok_or("--strategy needs a path")?,
            ))
            .map_err(|e| e.to_string())?;
            let fmt = match rest.get(3).map(String::as_str) {
                Some("safetensors") => OutputFormat::Safetensors,
                _ => OutputFormat::Ckpt,
            };
            (
                split::plan_mindspore(&source, &st, fmt).map_err(|e| e.to_string())?,
                vec![],
            )
        }
        Some("--mindformers") => {
            let layout = split::MfLayout {
                tp: num(rest.get(1))?,
                pp: num(rest.get(2))?,
                ep: num(rest.get(3))?,
                iteration: 1,
            };
            let layers = num(rest.get(5))?;
            let mcore = split::mcore_placement(layers, layout.pp);
            // `--placement llama-ms`: the MindSpore llama names of the vendored fixture (wq/wk/wv/w1/w3 and the
            // embeddings column-parallel, wo/w2 row-parallel).
            let llama = move |t: &convert_weight::tensor::TensorInfo| {
                let n = &t.name;
                let col = [
                    "wq.",
                    "wk.",
                    "wv.",
                    "w1.",
                    "w3.",
                    "embedding_weight",
                    "lm_head",
                ];
                let per = layers.div_ceil(layout.pp).max(1);
                let stage = n
                    .split("layers.")
                    .nth(1)
                    .and_then(|r| r.split('.').next()?.parse::<usize>().ok())
                    .map_or(
                        if n.contains("norm_out") || n.contains("lm_head") {
                            layout.pp - 1
                        } else {
                            0
                        },
                        |i| (i / per).min(layout.pp - 1),
                    );
                split::Placement {
                    stage,
                    tp_axis: if col.iter().any(|c| n.contains(c)) {
                        Some(0)
                    } else if n.contains("wo.") || n.contains("w2.") {
                        Some(1)
                    } else {
                        None
                    },
                    ep_axis: None,
                }
            };
            let place: &dyn Fn(&convert_weight::tensor::TensorInfo) -> split::Placement =
                if rest.get(7).map(String::as_str) == Some("llama-ms") {
                    &llama
                } else {
                    &mcore
                };
            (
                split::plan_mindformers(&source, layout, place).map_err(|e| e.to_string())?,
                vec![("format".to_string(), "ms".to_string())],
            )
        }
        _ => return Err("give --strategy or --mindformers".into()),
    };
    split::write(&source, &plan, &out, &meta)
        .map(|w| w.len())
        .map_err(|e| e.to_string())
}

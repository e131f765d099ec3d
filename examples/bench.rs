//! Performance benchmark: converts synthetic checkpoints with real 7B shapes (hidden 4096, intermediate 11008,
//! vocab 32000, 32 heads; the layer count scales with `--size`) and compares every case with `cp` of the same input,
//! measured in the same run. Prints one markdown table: case, median seconds, GB/s, ratio to `cp`, peak RSS
//! (`VmHWM`), peak anonymous memory and its ratio to the largest tensor, and the issue's target.
//!
//! ```text
//! cargo build --release && cargo run --release --example bench -- --size 2GiB
//! ```
//!
//! Each case runs the release `convert-weight` (or `convert-batch`) binary as a child process: wall time around the
//! child, its peak RSS from `wait4`'s `ru_maxrss`, and `RssAnon`/`RssFile` sampled from `/proc/<pid>/status` every
//! 2 ms (file pages of the read-only input map are page cache the kernel may drop, not memory the process holds).
//! Every case runs once untimed first (warm page cache), then `--runs` times; `sync` runs between runs, outside
//! the timing. Inputs are generated with the project's own writers, streamed tensor by tensor, and cached in
//! `--cache` (default `target/bench-cache`). The program exits non-zero only when a conversion fails, never
//! because a case is slow.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use convert_weight::formats::{self, sharded::parse_size, OutTensor, OutputFormat, WriteOptions};
use convert_weight::tensor::{DType, TensorInfo};
use rayon::prelude::*;
use serde_json::json;

const HIDDEN: usize = 4096;
const INTER: usize = 11008;
const VOCAB: usize = 32000;
const HEADS: usize = 32;
const MIB: u64 = 1 << 20;

// MoE case: Qwen3-30B-A3B shapes (hidden 2048, 32 heads, 4 KV heads, head_dim 128, expert ffn 768, 128 experts);
// the expert count shrinks for small `--size` (see `moe_experts`).
const MOE_H: usize = 2048;
const MOE_HEADS: usize = 32;
const MOE_KV: usize = 4;
const MOE_HD: usize = 128;
const MOE_FFN: usize = 768;
const MOE_MAX_EXPERTS: usize = 128;
/// Routed experts of the MoE input (set once from `--size` before any input is made).
static MOE_EXPERTS: std::sync::atomic::AtomicUsize =
    std::sync::atomic::AtomicUsize::new(MOE_MAX_EXPERTS);

// FP8 case: DeepSeek-V3-style MLA + dense MLP layers with F8_E4M3 weights and F32 128x128 `weight_scale_inv`
// block scales, scaled down (hidden 2048, 16 heads, q_lora 512, kv_lora 256, nope 128, rope 64, v 128, ffn 5632;
// kv_a has 320 rows: a partial edge block).
const DS_H: usize = 2048;
const DS_HEADS: usize = 16;
const DS_QL: usize = 512;
const DS_KVL: usize = 256;
const DS_NOPE: usize = 128;
const DS_ROPE: usize = 64;
const DS_V: usize = 128;
const DS_FFN: usize = 5632;

/// Experts that keep one MoE layer near `size` (4..=128).
fn moe_experts(size: u64) -> usize {
    let per_expert = (3 * MOE_FFN * MOE_H * 2) as u64;
    ((size / per_expert) as usize).clamp(4, MOE_MAX_EXPERTS)
}

fn experts() -> usize {
    MOE_EXPERTS.load(Ordering::Relaxed)
}

#[derive(Parser, Debug)]
#[command(
    about = "Benchmark convert-weight against cp and the Python way on synthetic 7B-shaped checkpoints"
)]
struct Args {
    /// Approximate size of each synthetic checkpoint (fp16); sets the layer count.
    #[arg(long, default_value = "2GiB")]
    size: String,
    /// Where generated inputs are cached between runs (outputs go to its `out/`, removed after each run).
    #[arg(long)]
    cache: Option<PathBuf>,
    /// Timed runs per case (after one untimed warm-up); the table shows the median.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Compute device passed to every conversion (`cpu`, `cuda`, `cuda:N`).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Directory holding the release `convert-weight` and `convert-batch` binaries (default: next to this program).
    #[arg(long)]
    bin: Option<PathBuf>,
    /// Python with torch for the comparison with the Python way (default: `python3`).
    #[arg(long)]
    python: Option<PathBuf>,
    /// Only run cases whose name contains one of these words (comma-separated), e.g. `cast,bloom`.
    #[arg(long)]
    only: Option<String>,
    /// Only generate and use these inputs (comma-separated keys, e.g. `llama-bf16-st,bloom-f16-st`); cases whose
    /// input is left out are skipped. Default: all. Saves disk and time where only a few cases run (gpu-check).
    #[arg(long)]
    inputs: Option<String>,
    /// `--memory-budget` passed to `convert-batch`.
    #[arg(long, default_value = "4GiB")]
    memory_budget: String,
    /// End to end on a full 7B llama instead of the cases: HF safetensors shards → .ckpt → HF shards, then both as
    /// one batch; each against cp + fsync of its input, peak memory, and `convert-weight verify` of every output.
    /// Checks free disk first (3 × the model + 2 GiB; 4 × for the batch) and skips with a message when short.
    #[arg(long)]
    e2e_7b: bool,
    /// Layers of the `--e2e-7b` model (32: the real 7B, ≈ 13.5 GB in fp16; fewer to try the procedure).
    #[arg(long, default_value_t = 32)]
    e2e_layers: usize,
    /// Keep the generated `--e2e-7b` input in the cache (it is removed at the end by default: it is big).
    #[arg(long)]
    e2e_keep_input: bool,
    /// Only generate the inputs (the benchmark runs this in a child process, so that its own peak memory does not
    /// show in the children's `ru_maxrss`).
    #[arg(long, hide = true)]
    generate_only: bool,
}

// ---------------------------------------------------------------------------------------------------------------
// Synthetic inputs

/// Which tensor names and shapes a synthetic checkpoint has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Layout {
    /// HF llama names (`model.layers.N.self_attn.q_proj.weight`...).
    LlamaHf,
    /// MindFormers llama names (`model.layers.N.attention.wq.weight`...), as a forward conversion writes them.
    LlamaMs,
    /// HF bloom names (`h.N.self_attention.query_key_value.weight`...), unprefixed, vocab 32000.
    Bloom,
    /// HF Qwen3-MoE names, every layer MoE (`model.layers.N.mlp.experts.E.gate_proj.weight`...).
    Qwen3Moe,
    /// HF DeepSeek-V3 names, MLA + dense MLP, FP8 e4m3 weights with F32 `weight_scale_inv` (norms bf16).
    DeepseekFp8,
}

/// One synthetic input file.
#[derive(Clone, Copy, Debug)]
struct InputDef {
    key: &'static str,
    layout: Layout,
    dtype: DType,
    format: OutputFormat,
    file: &'static str,
    /// Only made when this other input cannot be (a stand-in while a writer is missing).
    fallback_for: Option<&'static str>,
}

const INPUTS: &[InputDef] = &[
    InputDef {
        key: "llama-f16-st",
        layout: Layout::LlamaHf,
        dtype: DType::F16,
        format: OutputFormat::Safetensors,
        file: "model.safetensors",
        fallback_for: None,
    },
    InputDef {
        key: "llama-bf16-st",
        layout: Layout::LlamaHf,
        dtype: DType::BF16,
        format: OutputFormat::Safetensors,
        file: "model.safetensors",
        fallback_for: None,
    },
    InputDef {
        key: "llama-f32-st",
        layout: Layout::LlamaHf,
        dtype: DType::F32,
        format: OutputFormat::Safetensors,
        file: "model.safetensors",
        fallback_for: None,
    },
    InputDef {
        key: "llama-f16-bin",
        layout: Layout::LlamaHf,
        dtype: DType::F16,
        format: OutputFormat::Torch,
        file: "pytorch_model.bin",
        fallback_for: None,
    },
    InputDef {
        key: "llama-f16-ckpt",
        layout: Layout::LlamaMs,
        dtype: DType::F16,
        format: OutputFormat::Ckpt,
        file: "model.ckpt",
        fallback_for: None,
    },
    InputDef {
        key: "bloom-f16-bin",
        layout: Layout::Bloom,
        dtype: DType::F16,
        format: OutputFormat::Torch,
        file: "pytorch_model.bin",
        fallback_for: None,
    },
    InputDef {
        key: "bloom-f16-st",
        layout: Layout::Bloom,
        dtype: DType::F16,
        format: OutputFormat::Safetensors,
        file: "model.safetensors",
        fallback_for: Some("bloom-f16-bin"),
    },
    InputDef {
        key: "qwen3moe-bf16-st",
        layout: Layout::Qwen3Moe,
        dtype: DType::BF16,
        format: OutputFormat::Safetensors,
        file: "model.safetensors",
        fallback_for: None,
    },
    InputDef {
        key: "deepseek-fp8-st",
        layout: Layout::DeepseekFp8,
        dtype: DType::F8E4M3,
        format: OutputFormat::Safetensors,
        file: "model.safetensors",
        fallback_for: None,
    },
];

/// Per-layer tensors of a layout, `{i}` standing for the layer number.
fn layer_pattern(layout: Layout) -> Vec<(&'static str, Vec<usize>)> {
    let (h, i) = (HIDDEN, INTER);
    match layout {
        Layout::LlamaHf => vec![
            ("model.layers.{i}.self_attn.q_proj.weight", vec![h, h]),
            ("model.layers.{i}.self_attn.k_proj.weight", vec![h, h]),
            ("model.layers.{i}.self_attn.v_proj.weight", vec![h, h]),
            ("model.layers.{i}.self_attn.o_proj.weight", vec![h, h]),
            ("model.layers.{i}.mlp.gate_proj.weight", vec![i, h]),
            ("model.layers.{i}.mlp.down_proj.weight", vec![h, i]),
            ("model.layers.{i}.mlp.up_proj.weight", vec![i, h]),
            ("model.layers.{i}.input_layernorm.weight", vec![h]),
            ("model.layers.{i}.post_attention_layernorm.weight", vec![h]),
        ],
        Layout::LlamaMs => vec![
            ("model.layers.{i}.attention.wq.weight", vec![h, h]),
            ("model.layers.{i}.attention.wk.weight", vec![h, h]),
            ("model.layers.{i}.attention.wv.weight", vec![h, h]),
            ("model.layers.{i}.attention.wo.weight", vec![h, h]),
            ("model.layers.{i}.feed_forward.w1.weight", vec![i, h]),
            ("model.layers.{i}.feed_forward.w2.weight", vec![h, i]),
            ("model.layers.{i}.feed_forward.w3.weight", vec![i, h]),
            ("model.layers.{i}.attention_norm.weight", vec![h]),
            ("model.layers.{i}.ffn_norm.weight", vec![h]),
        ],
        Layout::Bloom => vec![
            ("h.{i}.input_layernorm.weight", vec![h]),
            ("h.{i}.input_layernorm.bias", vec![h]),
            (
                "h.{i}.self_attention.query_key_value.weight",
                vec![3 * h, h],
            ),
            ("h.{i}.self_attention.query_key_value.bias", vec![3 * h]),
            ("h.{i}.self_attention.dense.weight", vec![h, h]),
            ("h.{i}.self_attention.dense.bias", vec![h]),
            ("h.{i}.post_attention_layernorm.weight", vec![h]),
            ("h.{i}.post_attention_layernorm.bias", vec![h]),
            ("h.{i}.mlp.dense_h_to_4h.weight", vec![4 * h, h]),
            ("h.{i}.mlp.dense_h_to_4h.bias", vec![4 * h]),
            ("h.{i}.mlp.dense_4h_to_h.weight", vec![h, 4 * h]),
            ("h.{i}.mlp.dense_4h_to_h.bias", vec![h]),
        ],
        Layout::Qwen3Moe => {
            let (h, f, e) = (MOE_H, MOE_FFN, experts());
            let mut v = vec![
                (
                    "model.layers.{i}.self_attn.q_proj.weight",
                    vec![MOE_HEADS * MOE_HD, h],
                ),
                (
                    "model.layers.{i}.self_attn.k_proj.weight",
                    vec![MOE_KV * MOE_HD, h],
                ),
                (
                    "model.layers.{i}.self_attn.v_proj.weight",
                    vec![MOE_KV * MOE_HD, h],
                ),
                (
                    "model.layers.{i}.self_attn.o_proj.weight",
                    vec![h, MOE_HEADS * MOE_HD],
                ),
                ("model.layers.{i}.self_attn.q_norm.weight", vec![MOE_HD]),
                ("model.layers.{i}.self_attn.k_norm.weight", vec![MOE_HD]),
                ("model.layers.{i}.input_layernorm.weight", vec![h]),
                ("model.layers.{i}.post_attention_layernorm.weight", vec![h]),
                ("model.layers.{i}.mlp.gate.weight", vec![e, h]),
            ];
            for _ in 0..e {
                v.push((
                    "model.layers.{i}.mlp.experts.{e}.gate_proj.weight",
                    vec![f, h],
                ));
                v.push((
                    "model.layers.{i}.mlp.experts.{e}.up_proj.weight",
                    vec![f, h],
                ));
                v.push((
                    "model.layers.{i}.mlp.experts.{e}.down_proj.weight",
                    vec![h, f],
                ));
            }
            v
        }
        Layout::DeepseekFp8 => {
            let q = DS_HEADS * (DS_NOPE + DS_ROPE);
            let kv = DS_HEADS * (DS_NOPE + DS_V);
            let mut v = Vec::new();
            let mut w = |n: &'static str, s: &'static str, r: usize, c: usize| {
                v.push((n, vec![r, c]));
                v.push((s, vec![r.div_ceil(128), c.div_ceil(128)]));
            };
            w(
                "model.layers.{i}.self_attn.q_a_proj.weight",
                "model.layers.{i}.self_attn.q_a_proj.weight_scale_inv",
                DS_QL,
                DS_H,
            );
            w(
                "model.layers.{i}.self_attn.q_b_proj.weight",
                "model.layers.{i}.self_attn.q_b_proj.weight_scale_inv",
                q,
                DS_QL,
            );
            w(
                "model.layers.{i}.self_attn.kv_a_proj_with_mqa.weight",
                "model.layers.{i}.self_attn.kv_a_proj_with_mqa.weight_scale_inv",
                DS_KVL + DS_ROPE,
                DS_H,
            );
            w(
                "model.layers.{i}.self_attn.kv_b_proj.weight",
                "model.layers.{i}.self_attn.kv_b_proj.weight_scale_inv",
                kv,
                DS_KVL,
            );
            w(
                "model.layers.{i}.self_attn.o_proj.weight",
                "model.layers.{i}.self_attn.o_proj.weight_scale_inv",
                DS_H,
                DS_HEADS * DS_V,
            );
            w(
                "model.layers.{i}.mlp.gate_proj.weight",
                "model.layers.{i}.mlp.gate_proj.weight_scale_inv",
                DS_FFN,
                DS_H,
            );
            w(
                "model.layers.{i}.mlp.up_proj.weight",
                "model.layers.{i}.mlp.up_proj.weight_scale_inv",
                DS_FFN,
                DS_H,
            );
            w(
                "model.layers.{i}.mlp.down_proj.weight",
                "model.layers.{i}.mlp.down_proj.weight_scale_inv",
                DS_H,
                DS_FFN,
            );
            v.extend([
                (
                    "model.layers.{i}.self_attn.q_a_layernorm.weight",
                    vec![DS_QL],
                ),
                (
                    "model.layers.{i}.self_attn.kv_a_layernorm.weight",
                    vec![DS_KVL],
                ),
                ("model.layers.{i}.input_layernorm.weight", vec![DS_H]),
                (
                    "model.layers.{i}.post_attention_layernorm.weight",
                    vec![DS_H],
                ),
            ]);
            v
        }
    }
}

/// (head tensors, tail tensors) around the layers.
type Ends = (
    Vec<(&'static str, Vec<usize>)>,
    Vec<(&'static str, Vec<usize>)>,
);

fn ends(layout: Layout) -> Ends {
    let (h, v) = (HIDDEN, VOCAB);
    match layout {
        Layout::Qwen3Moe | Layout::DeepseekFp8 => {
            let h = if layout == Layout::Qwen3Moe {
                MOE_H
            } else {
                DS_H
            };
            (
                vec![("model.embed_tokens.weight", vec![v, h])],
                vec![
                    ("model.norm.weight", vec![h]),
                    ("lm_head.weight", vec![v, h]),
                ],
            )
        }
        Layout::LlamaHf => (
            vec![("model.embed_tokens.weight", vec![v, h])],
            vec![
                ("model.norm.weight", vec![h]),
                ("lm_head.weight", vec![v, h]),
            ],
        ),
        Layout::LlamaMs => (
            vec![("model.tok_embeddings.embedding_weight", vec![v, h])],
            vec![
                ("model.norm_out.weight", vec![h]),
                ("lm_head.weight", vec![v, h]),
            ],
        ),
        Layout::Bloom => (
            vec![
                ("word_embeddings.weight", vec![v, h]),
                ("word_embeddings_layernorm.weight", vec![h]),
                ("word_embeddings_layernorm.bias", vec![h]),
            ],
            vec![("ln_f.weight", vec![h]), ("ln_f.bias", vec![h])],
        ),
    }
}

fn elems(list: &[(&str, Vec<usize>)]) -> u64 {
    list.iter()
        .map(|(_, s)| s.iter().product::<usize>() as u64)
        .sum()
}

/// Layers that bring a layout closest to `size` bytes in `dtype` (at least 1).
fn layers_for(layout: Layout, dtype: DType, size: u64) -> usize {
    let w = dtype.size() as u64;
    let (head, tail) = ends(layout);
    let fixed = w * (elems(&head) + elems(&tail));
    let per = w * elems(&layer_pattern(layout));
    let n = (size.saturating_sub(fixed) as f64 / per as f64).round() as usize;
    n.max(1)
}

fn tensors(layout: Layout, layers: usize, dtype: DType) -> Vec<TensorInfo> {
    let (head, tail) = ends(layout);
    let pattern = layer_pattern(layout);
    let mut out: Vec<TensorInfo> = head
        .iter()
        .map(|(n, s)| TensorInfo::new(*n, tensor_dtype(layout, n, s, dtype), s.clone()))
        .collect();
    for i in 0..layers {
        let mut e = 0usize;
        for (n, s) in &pattern {
            let mut name = n.replace("{i}", &i.to_string());
            if name.contains("{e}") {
                name = name.replace("{e}", &(e / 3).to_string());
                e += 1;
            }
            out.push(TensorInfo::new(
                name,
                tensor_dtype(layout, n, s, dtype),
                s.clone(),
            ));
        }
    }
    out.extend(
        tail.iter()
            .map(|(n, s)| TensorInfo::new(*n, tensor_dtype(layout, n, s, dtype), s.clone())),
    );
    out
}

/// The dtype of one tensor: the input's, except in the FP8 input (F32 block scales; bf16 norms, embedding, head).
fn tensor_dtype(layout: Layout, name: &str, shape: &[usize], dtype: DType) -> DType {
    if layout != Layout::DeepseekFp8 {
        return dtype;
    }
    if name.ends_with("weight_scale_inv") {
        DType::F32
    } else if shape.len() == 1 || !name.starts_with("model.layers.") {
        DType::BF16
    } else {
        DType::F8E4M3
    }
}

/// The largest tensor a conversion of this input writes (stacked experts; FP8 dequantised to bf16).
fn largest_output(layout: Layout, infos: &[TensorInfo]) -> u64 {
    let largest_in = infos.iter().map(|t| t.nbytes() as u64).max().unwrap_or(0);
    match layout {
        Layout::Qwen3Moe => largest_in.max((experts() * MOE_H * 2 * MOE_FFN * 2) as u64),
        Layout::DeepseekFp8 => infos
            .iter()
            .map(|t| (t.numel() * 2) as u64)
            .max()
            .unwrap_or(0),
        _ => largest_in,
    }
}

/// Deterministic, finite values in ±[2^-10, 1): random sign and mantissa, exponent in a narrow band (no value
/// overflows a bf16 → fp16 or fp32 → bf16 cast; F32 also serves as FP8 block scales). FP8 e4m3: random codes but
/// the NaN ones.
fn fill(buf: &mut [u8], dtype: DType, seed: u64) {
    const CHUNK: usize = 1 << 20;
    if dtype == DType::F8E4M3 {
        buf.par_chunks_mut(CHUNK)
            .enumerate()
            .for_each(|(c, chunk)| {
                let mut s = seed ^ (c as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                let mut next = || {
                    s ^= s << 13;
                    s ^= s >> 7;
                    s ^= s << 17;
                    s
                };
                for b in chunk.iter_mut() {
                    let r = next() as u8;
                    *b = if r & 0x7F == 0x7F { 0x3F } else { r };
                }
            });
        return;
    }
    let width = dtype.size().max(1);
    buf.par_chunks_mut(CHUNK)
        .enumerate()
        .for_each(|(c, chunk)| {
            let mut s = seed ^ (c as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            for el in chunk.chunks_exact_mut(width) {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                let r = s as u16;
                let sign = r & 0x8000;
                let exp = u16::from(((s >> 20) % 10) as u8);
                match dtype {
                    DType::F32 => {
                        let bits = (u32::from(sign) << 16)
                            | ((117 + u32::from(exp)) << 23)
                            | ((s >> 32) as u32 & 0x7F_FFFF);
                        el.copy_from_slice(&bits.to_le_bytes());
                    }
                    DType::BF16 => {
                        el.copy_from_slice(&(sign | ((117 + exp) << 7) | (r & 0x7F)).to_le_bytes())
                    }
                    _ => {
                        el.copy_from_slice(&(sign | ((5 + exp) << 10) | (r & 0x3FF)).to_le_bytes())
                    }
                }
            }
        });
}

fn config_json(layout: Layout, layers: usize, dtype: DType) -> serde_json::Value {
    let torch_dtype = match dtype {
        DType::BF16 => "bfloat16",
        DType::F32 => "float32",
        _ => "float16",
    };
    match layout {
        Layout::Qwen3Moe => json!({
            "architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", "hidden_size": MOE_H,
            "intermediate_size": 6144, "moe_intermediate_size": MOE_FFN, "num_experts": experts(),
            "num_experts_per_tok": 8, "decoder_sparse_step": 1, "mlp_only_layers": [],
            "num_attention_heads": MOE_HEADS, "num_key_value_heads": MOE_KV, "head_dim": MOE_HD,
            "num_hidden_layers": layers, "vocab_size": VOCAB, "tie_word_embeddings": false,
            "torch_dtype": torch_dtype,
        }),
        Layout::DeepseekFp8 => json!({
            "architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3", "hidden_size": DS_H,
            "intermediate_size": DS_FFN, "moe_intermediate_size": 512, "n_routed_experts": 8,
            "n_shared_experts": 1, "first_k_dense_replace": layers, "moe_layer_freq": 1,
            "num_attention_heads": DS_HEADS, "num_key_value_heads": DS_HEADS, "q_lora_rank": DS_QL,
            "kv_lora_rank": DS_KVL, "qk_nope_head_dim": DS_NOPE, "qk_rope_head_dim": DS_ROPE,
            "v_head_dim": DS_V, "num_hidden_layers": layers, "num_nextn_predict_layers": 0,
            "vocab_size": VOCAB, "tie_word_embeddings": false, "torch_dtype": "bfloat16",
            "quantization_config": {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                                     "weight_block_size": [128, 128]},
        }),
        Layout::Bloom => json!({
            "architectures": ["BloomForCausalLM"], "model_type": "bloom", "hidden_size": HIDDEN,
            "n_head": HEADS, "n_layer": layers, "vocab_size": VOCAB, "torch_dtype": torch_dtype,
        }),
        _ => json!({
            "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": HIDDEN,
            "intermediate_size": INTER, "num_attention_heads": HEADS, "num_key_value_heads": HEADS,
            "num_hidden_layers": layers, "vocab_size": VOCAB, "rms_norm_eps": 1e-6,
            "torch_dtype": torch_dtype,
        }),
    }
}

/// Whether an input is already in the cache.
fn is_complete(cache: &Path, def: &InputDef, size: u64) -> bool {
    cache
        .join(format!(
            "{}-L{}",
            def.key,
            layers_for(def.layout, def.dtype, size)
        ))
        .join(".complete")
        .exists()
}

/// A generated input: its file and its largest tensor.
#[derive(Clone, Debug)]
struct Input {
    path: PathBuf,
    bytes: u64,
    largest: u64,
    layers: usize,
}

/// Generate (or find cached) one input. `Err` when the project cannot write this format (yet).
fn ensure_input(cache: &Path, def: &InputDef, size: u64) -> Result<Input, String> {
    let layers = layers_for(def.layout, def.dtype, size);
    let dir = cache.join(format!("{}-L{layers}", def.key));
    let path = dir.join(def.file);
    let done = dir.join(".complete");
    let infos = tensors(def.layout, layers, def.dtype);
    let largest = largest_output(def.layout, &infos);
    if !done.exists() {
        fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        eprint!("generating {} ... ", path.display());
        let t0 = Instant::now();
        let outs: Vec<OutTensor> = infos
            .iter()
            .map(|info| OutTensor {
                info: info.clone(),
                tied_to: None,
            })
            .collect();
        let opts = WriteOptions::default();
        let mut w = formats::create_single_writer(def.format, &path, &outs, &opts)
            .map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        for idx in w.order() {
            let n = infos[idx].nbytes();
            buf.resize(n, 0);
            fill(&mut buf, infos[idx].dtype, idx as u64 + 1);
            w.write(idx, &buf).map_err(|e| e.to_string())?;
        }
        w.finish().map_err(|e| e.to_string())?;
        let cfg = config_json(def.layout, layers, def.dtype);
        fs::write(dir.join("config.json"), format!("{cfg:#}\n"))
            .map_err(|e| format!("{}: {e}", dir.display()))?;
        fs::write(&done, b"").map_err(|e| format!("{}: {e}", done.display()))?;
        eprintln!("{:.1} s", t0.elapsed().as_secs_f64());
    }
    let bytes = fs::metadata(&path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .len();
    Ok(Input {
        path,
        bytes,
        largest,
        layers,
    })
}

/// Key of the distributed input: the llama `.ckpt` input cut into 8 ranks (2 pipeline stages × 4-way tensor
/// parallelism; column-parallel wq/wk/wv/w1/w3/embeddings on axis 0, row-parallel wo/w2 on axis 1, norms
/// replicated) with a per-stage MindSpore strategy folder, written by the project's own splitter.
const DIST_KEY: &str = "llama-f16-dist8";

fn dist_layout(
    name: &str,
    shape: &[usize],
    tp: u32,
) -> Option<convert_weight::formats::strategy::ParallelLayouts> {
    use convert_weight::formats::strategy::{
        DevMatrix, ParallelLayouts, ParamSplitShape, TensorMap,
    };
    let col = ["wq.", "wk.", "wv.", "w1.", "w3.", "embedding", "lm_head"];
    let mut map = vec![-1i32; shape.len()];
    if col.iter().any(|c| name.contains(c)) && shape.len() == 2 {
        map[0] = 0;
    } else if (name.contains("wo.") || name.contains("w2.")) && shape.len() == 2 {
        map[1] = 0;
    }
    if map
        .iter()
        .enumerate()
        .any(|(i, &m)| m == 0 && shape[i] % tp as usize != 0)
    {
        return None;
    }
    Some(ParallelLayouts {
        dev_matrix: vec![DevMatrix { dim: vec![tp] }],
        tensor_map: vec![TensorMap { dim: map }],
        param_split_shape: vec![ParamSplitShape { dim: vec![] }],
        indices_offset: vec![],
        field: 0,
        opt_weight_shard_step: 0,
        opt_weight_shard_size: 0,
    })
}

/// Generate (or find cached) the 8-rank distributed input from the llama `.ckpt` input.
fn ensure_distributed(cache: &Path, src: &Input) -> Result<Input, String> {
    use convert_weight::formats::distributed::split;
    use convert_weight::formats::strategy::{
        ParallelLayoutItem, ParallelStrategyItem, ParallelStrategyMap, ParallelStrategys, Strategy,
    };
    use prost::Message;
    let dir = cache.join(format!("{DIST_KEY}-L{}", src.layers));
    let root = dir.join("ckpt");
    let done = dir.join(".complete");
    let (tp, stages) = (4u32, 2usize);
    if !done.exists() {
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        eprint!("generating {} ... ", root.display());
        let t0 = Instant::now();
        let source = formats::open_model(&src.path).map_err(|e| e.to_string())?;
        let per = src.layers.div_ceil(stages).max(1);
        let sdir = dir.join("strategy-src");
        fs::create_dir_all(&sdir).map_err(|e| format!("{}: {e}", sdir.display()))?;
        for st in 0..stages {
            let mut items = Vec::new();
            for t in &source.tensors {
                let n = &t.info.name;
                let stage = match n.split("layers.").nth(1) {
                    Some(rest) => rest
                        .split('.')
                        .next()
                        .and_then(|i| i.parse::<usize>().ok())
                        .map_or(0, |i| (i / per).min(stages - 1)),
                    None if n.contains("norm_out") || n.contains("lm_head") => stages - 1,
                    None => 0,
                };
                if stage != st {
                    continue;
                }
                if let Some(l) = dist_layout(n, &t.info.shape, tp) {
                    items.push(ParallelLayoutItem {
                        param_name: n.clone(),
                        parallel_layouts: l,
                    });
                }
            }
            let map = ParallelStrategyMap {
                current_stage: st as u32,
                parallel_strategy_item: vec![ParallelStrategyItem {
                    node_name: "bench".into(),
                    parallel_strategys: ParallelStrategys {
                        stage: st as u32,
                        parallel_strategy: vec![],
                    },
                }],
                parallel_layout_item: items,
            };
            let f = sdir.join(format!("stage{st}.ckpt"));
            fs::write(&f, map.encode_to_vec()).map_err(|e| format!("{}: {e}", f.display()))?;
        }
        let strategy = Strategy::read(&sdir).map_err(|e| e.to_string())?;
        let plan = split::plan_mindspore(&source, &strategy, OutputFormat::Ckpt)
            .map_err(|e| e.to_string())?;
        split::write(&source, &plan, &root, &[]).map_err(|e| e.to_string())?;
        fs::write(&done, b"").map_err(|e| format!("{}: {e}", done.display()))?;
        eprintln!("{:.1} s", t0.elapsed().as_secs_f64());
    }
    let mut bytes = 0;
    for r in 0..(tp as usize * stages) {
        let f = root.join(format!("rank_{r}/checkpoint_{r}.ckpt"));
        bytes += fs::metadata(&f)
            .map_err(|e| format!("{}: {e}", f.display()))?
            .len();
    }
    Ok(Input {
        path: root,
        bytes,
        largest: src.largest,
        layers: src.layers,
    })
}

// ---------------------------------------------------------------------------------------------------------------
// Measuring a child process

/// What one child run cost.
#[derive(Clone, Debug, Default)]
struct Sample {
    secs: f64,
    /// Peak resident set (KiB: `ru_maxrss`, or the sampled `VmHWM` if higher), file pages of maps included.
    maxrss_kb: u64,
    /// Peak sampled `RssAnon` (+ `RssShmem`) (KiB): memory the process itself holds.
    anon_kb: u64,
}

/// A finished child: its cost, or why it failed.
struct Outcome {
    sample: Sample,
    ok: bool,
    log: String,
}

/// (`RssAnon + RssShmem`, `VmHWM`) of a process (KiB).
fn status_mem(pid: i32) -> Option<(u64, u64)> {
    let text = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let mut anon = 0;
    let mut hwm = 0;
    for line in text.lines() {
        let field = |prefix: &str| -> Option<u64> {
            line.strip_prefix(prefix)?
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .ok()
        };
        if let Some(v) = field("RssAnon:") {
            anon += v;
        } else if let Some(v) = field("RssShmem:") {
            anon += v;
        } else if let Some(v) = field("VmHWM:") {
            hwm = v;
        }
    }
    Some((anon, hwm))
}

/// Run `cmd` to completion, timing it and sampling its memory. stdout and stderr go to `log`.
fn measure(mut cmd: Command, log: &Path) -> Result<Outcome, String> {
    let out = fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
    let err = out
        .try_clone()
        .map_err(|e| format!("{}: {e}", log.display()))?;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err));
    let t0 = Instant::now();
    let child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {cmd:?}: {e}"))?;
    let pid = child.id() as i32;
    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(Mutex::new((0u64, 0u64)));
    let sampler = {
        let (stop, peak) = (stop.clone(), peak.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if let Some((a, h)) = status_mem(pid) {
                    if let Ok(mut p) = peak.lock() {
                        p.0 = p.0.max(a);
                        p.1 = p.1.max(h);
                    }
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };
    let mut status = 0i32;
    // SAFETY: zeroed rusage is a valid value of a plain C struct.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: waiting for our own child with valid out-pointers.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
        if r == pid {
            break;
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(format!("wait4: {e}"));
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    drop(child);
    let (anon_kb, hwm_kb) = peak.lock().map(|p| *p).unwrap_or((0, 0));
    let ok = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
    let log_text = fs::read_to_string(log).unwrap_or_default();
    Ok(Outcome {
        sample: Sample {
            secs,
            // ru_maxrss starts at this process's own peak (a spawned child shares its memory until exec): the
            // inputs are generated in another process so that this one stays at a few MiB.
            maxrss_kb: hwm_kb.max(ru.ru_maxrss.max(0) as u64),
            anon_kb,
        },
        ok,
        log: log_text,
    })
}

fn sync_all() {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Summary of the timed runs of one case.
#[derive(Clone, Debug)]
struct Stat {
    secs: f64,
    maxrss_kb: u64,
    anon_kb: u64,
}

/// `cp` of a case's input, run right before each run of the case so that both see the same machine load.
struct Baseline {
    src: PathBuf,
    dst: PathBuf,
}

/// The paired baseline's figures: `cp` alone, and `cp` followed by an fsync of the copy.
struct BaselineStat {
    cp: Stat,
    cp_fsync: f64,
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Run a case: one untimed warm-up, then `runs` timed runs (each after a timed `cp` of the input when `baseline`
/// is given). `make` builds the command; `cleanup` removes its outputs.
fn bench_case(
    runs: usize,
    logs: &Path,
    label: &str,
    make: &dyn Fn() -> Command,
    cleanup: &dyn Fn(),
    baseline: Option<&Baseline>,
) -> Result<(Stat, Option<BaselineStat>), String> {
    let stem = label.replace(|c: char| !c.is_ascii_alphanumeric(), "_");
    let mut samples = Vec::new();
    let mut cps = Vec::new();
    let mut cp_fsyncs = Vec::new();
    for k in 0..=runs {
        if let Some(b) = baseline {
            let _ = fs::remove_file(&b.dst);
            sync_all();
            let mut c = Command::new("cp");
            c.arg(&b.src).arg(&b.dst);
            let o = measure(c, &logs.join(format!("{stem}.cp.{k}.log")))?;
            if !o.ok {
                return Err(format!(
                    "cp {}: failed: {}",
                    b.src.display(),
                    last_lines(&o.log, 4)
                ));
            }
            let t0 = Instant::now();
            let synced = fs::File::open(&b.dst).and_then(|f| f.sync_all());
            let fsync = t0.elapsed().as_secs_f64();
            let _ = fs::remove_file(&b.dst);
            if k > 0 {
                if synced.is_ok() {
                    cp_fsyncs.push(o.sample.secs + fsync);
                }
                cps.push(o.sample);
            }
        }
        cleanup();
        sync_all();
        let o = measure(make(), &logs.join(format!("{stem}.{k}.log")))?;
        if !o.ok {
            cleanup();
            return Err(format!("{label}: failed:\n{}", last_lines(&o.log, 8)));
        }
        if k > 0 {
            samples.push(o.sample);
        }
    }
    cleanup();
    sync_all();
    let stat = |v: &[Sample]| Stat {
        secs: median(v.iter().map(|s| s.secs).collect()),
        maxrss_kb: v.iter().map(|s| s.maxrss_kb).max().unwrap_or(0),
        anon_kb: v.iter().map(|s| s.anon_kb).max().unwrap_or(0),
    };
    let base = baseline.map(|_| BaselineStat {
        cp: stat(&cps),
        cp_fsync: median(cp_fsyncs),
    });
    Ok((stat(&samples), base))
}

// ---------------------------------------------------------------------------------------------------------------
// Cases

/// One table row.
struct Row {
    case: String,
    input_bytes: u64,
    stat: Stat,
    /// Median seconds of `cp` of the same input, run before each run of the case (None: not a conversion).
    cp: Option<f64>,
    /// The same with an fsync of the copy (our writers fsync before renaming into place): the yardstick.
    cp_fsync: Option<f64>,
    largest: u64,
    /// What the issue asks of this row.
    target: Target,
}

#[derive(Clone, Debug)]
enum Target {
    /// time ≤ ratio × (cp + fsync), anon ≤ 2 × largest + 64 MiB
    Convert(f64),
    /// time ≤ secs, anon ≤ MiB
    Inspect(f64, u64),
    /// A time verdict judged against another row (text, ok), and anon ≤ `jobs` × 2 × largest + 64 MiB (each job
    /// running at once may hold its own 2 × largest).
    Judged {
        jobs: u64,
        text: String,
        verdict: Option<(bool, String)>,
    },
    /// informational only
    None,
}

fn mib(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

/// A KiB figure as MiB, with a decimal below 10 MiB.
fn mib_text(kb: u64) -> String {
    let m = mib(kb);
    if m < 10.0 {
        format!("{m:.1} MiB")
    } else {
        format!("{m:.0} MiB")
    }
}

/// "ok" or "MISS …" for the anonymous-memory bound of `jobs` jobs at once.
fn mem_verdict(anon: u64, largest: u64, jobs: u64) -> (bool, String) {
    let bound = jobs * 2 * largest + 64 * MIB;
    if anon <= bound {
        (true, "ok".into())
    } else {
        (
            false,
            format!(
                "MISS {:.0} MiB > {:.0}",
                anon as f64 / MIB as f64,
                bound as f64 / MIB as f64
            ),
        )
    }
}

impl Row {
    /// (every target met, verdict text); `None` for informational rows.
    fn judge(&self) -> Option<(bool, String)> {
        let anon = self.stat.anon_kb * 1024;
        match &self.target {
            Target::Convert(r) => {
                let yard = self.cp_fsync.or(self.cp)?;
                let ratio = self.stat.secs / yard;
                let (tok, t) = if ratio <= *r {
                    (true, format!("ok ×{ratio:.2}"))
                } else {
                    (false, format!("MISS ×{ratio:.2} > {r}"))
                };
                let (mok, m) = mem_verdict(anon, self.largest, 1);
                Some((tok && mok, format!("time {t}, mem {m}")))
            }
            Target::Inspect(s, m) => {
                let tok = self.stat.secs <= *s;
                let mok = anon <= m * MIB;
                Some((
                    tok && mok,
                    format!(
                        "time {} (≤ {s} s), mem {} (≤ {m} MiB)",
                        if tok { "ok" } else { "MISS" },
                        if mok { "ok" } else { "MISS" }
                    ),
                ))
            }
            Target::Judged { jobs, verdict, .. } => {
                let (mok, m) = mem_verdict(anon, self.largest, *jobs);
                match verdict {
                    Some((tok, t)) => Some((*tok && mok, format!("time {t}, mem {m}"))),
                    None => Some((mok, format!("mem {m}"))),
                }
            }
            Target::None => None,
        }
    }

    fn target_text(&self) -> String {
        match &self.target {
            Target::Convert(r) => format!("≤ {r} × cp+fsync, ≤ 2×L+64 MiB"),
            Target::Inspect(s, m) => format!("≤ {s} s, ≤ {m} MiB"),
            Target::Judged { jobs, text, .. } => {
                let mem = if *jobs == 1 {
                    "≤ 2×L+64 MiB".to_string()
                } else {
                    format!("≤ {jobs}×2×L+64 MiB")
                };
                if text.is_empty() {
                    mem
                } else {
                    format!("{text}, {mem}")
                }
            }
            Target::None => "—".into(),
        }
    }
}

/// Locate a release binary.
fn find_bin(dir: &Path, name: &str) -> Option<PathBuf> {
    let p = dir.join(name);
    p.is_file().then_some(p)
}

fn bin_dir(arg: &Option<PathBuf>) -> PathBuf {
    if let Some(d) = arg {
        return d.clone();
    }
    // target/release/examples/bench -> target/release
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent()?.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("target/release"))
}

/// Build the binaries when run through cargo (so they are never older than this program).
fn build_bins() {
    let Ok(cargo) = std::env::var("CARGO") else {
        return;
    };
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--release", "--bins"]);
    if cfg!(feature = "cuda") {
        cmd.args(["--features", "cuda"]);
    }
    if let Ok(dir) = std::env::var("CARGO_MANIFEST_DIR") {
        cmd.current_dir(dir);
    }
    match cmd.status() {
        Ok(s) if s.success() => {}
        other => eprintln!("note: cargo build --release --bins did not succeed ({other:?})"),
    }
}

fn machine() -> String {
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let mem = fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .map(|kb| format!("{:.0} GiB", kb as f64 / 1048576.0))
        .unwrap_or_else(|| "? GiB".into());
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    format!("{cpu}, {cores} cores, {mem} RAM, Linux {kernel}")
}

fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Python snippet: `torch.load` + a MindSpore-format checkpoint (mindspore.save_checkpoint when importable, else
/// the same protobuf records written from Python: header bytes + `numpy().tobytes()` per ≤ 512 MiB slice).
const PY_SCRIPT: &str = r#"
import sys, torch
src, dst = sys.argv[1], sys.argv[2]
sd = torch.load(src, map_location="cpu")
try:
    import mindspore as ms
except Exception:
    ms = None
if ms is not None:
    params = []
    for k, v in sd.items():
        if v.dtype == torch.bfloat16:
            params.append({"name": k, "data": ms.Tensor(v.float().numpy(), ms.bfloat16)})
        else:
            params.append({"name": k, "data": ms.Tensor(v.numpy())})
    ms.save_checkpoint(params, dst)
    print("writer: mindspore.save_checkpoint")
else:
    def varint(n):
        out = bytearray()
        while True:
            b = n & 0x7F
            n >>= 7
            if n:
                out.append(b | 0x80)
            else:
                out.append(b)
                return bytes(out)
    def ld(key, payload):
        return bytes([key]) + varint(len(payload)) + payload
    names = {torch.float32: "Float32", torch.float16: "Float16", torch.bfloat16: "BFloat16",
             torch.int64: "Int64", torch.int32: "Int32", torch.bool: "Bool", torch.uint8: "UInt8"}
    with open(dst, "wb") as f:
        for k, v in sd.items():
            t = v.contiguous()
            if t.dtype == torch.bfloat16:
                data = t.view(torch.int16).numpy().tobytes()
            else:
                data = t.numpy().tobytes()
            dims = b"".join(b"\x08" + varint(d) for d in t.shape)
            step = 512 * 1024 * 1024
            for off in range(0, max(len(data), 1), step):
                chunk = data[off:off + step]
                tensor = dims + ld(0x12, names[t.dtype].encode()) + ld(0x1A, chunk)
                value = ld(0x0A, k.encode()) + ld(0x12, tensor)
                f.write(ld(0x0A, value))
    print("writer: python protobuf records (mindspore not importable)")
"#;

fn python_has_torch(py: &Path) -> bool {
    Command::new(py)
        .args(["-c", "import torch"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// The families `convert-weight --list-models` knows.
fn list_models(cw: &Path) -> Vec<String> {
    Command::new(cw)
        .arg("--list-models")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter_map(|l| l.split_whitespace().next().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("bench: {e}");
            ExitCode::from(2)
        }
    }
}

/// A conversion case.
struct ConvCase {
    name: String,
    input: &'static str,
    out: &'static str,
    args: Vec<String>,
    /// Target: time ≤ ratio × (cp + fsync) of the input.
    ratio: f64,
    /// One of the four jobs of the batch cases.
    in_batch: bool,
}

/// What the case functions may look at.
struct Ctx<'a> {
    inputs: &'a BTreeMap<&'static str, Input>,
    /// Families the binary knows (`--list-models`).
    models: Vec<String>,
}

impl Ctx<'_> {
    /// `--model NAME` plus `rest`, or why the case cannot run.
    fn model_args(&self, model: &str, rest: &[&str]) -> Result<Vec<String>, String> {
        if !self.models.iter().any(|m| m == model) {
            return Err(format!("--model {model} is not built"));
        }
        let mut v = vec!["--model".to_string(), model.to_string()];
        v.extend(rest.iter().map(|x| x.to_string()));
        Ok(v)
    }

    fn need(&self, key: &str) -> Result<(), String> {
        if self.inputs.contains_key(key) {
            Ok(())
        } else {
            Err(format!("input {key} missing"))
        }
    }
}

/// A case function: the case, or why it is skipped. One function per case, listed in [`CASES`], so that cases
/// can be added (or merged from other branches) one line at a time.
type CaseFn = fn(&Ctx) -> Result<ConvCase, String>;

/// The conversion cases, in table order.
const CASES: &[CaseFn] = &[
    case_rename_bin_to_ckpt,
    case_rename_ckpt_to_bin,
    case_rename_st_to_ckpt,
    case_rename_ckpt_to_st,
    case_cast_bf16_to_fp16,
    case_cast_fp32_to_bf16,
    case_bloom_split_transpose,
    case_qwen3_moe_stacking,
    case_deepseek3_fp8_dequant,
    case_distributed_merge,
    case_distributed_to_hf,
];

fn case_rename_bin_to_ckpt(ctx: &Ctx) -> Result<ConvCase, String> {
    ctx.need("llama-f16-bin")?;
    Ok(ConvCase {
        name: "llama torch .bin → .ckpt (renames)".into(),
        input: "llama-f16-bin",
        out: "llama.ckpt",
        args: ctx.model_args("llama", &["--dtype", "fp16"])?,
        ratio: 1.1,
        in_batch: true,
    })
}

fn case_rename_ckpt_to_bin(ctx: &Ctx) -> Result<ConvCase, String> {
    ctx.need("llama-f16-ckpt")?;
    Ok(ConvCase {
        name: "llama .ckpt → torch .bin (renames)".into(),
        input: "llama-f16-ckpt",
        out: "llama.bin",
        args: ctx.model_args("llama", &["--reversed"])?,
        ratio: 1.1,
        in_batch: true,
    })
}

fn case_rename_st_to_ckpt(ctx: &Ctx) -> Result<ConvCase, String> {
    ctx.need("llama-f16-st")?;
    Ok(ConvCase {
        name: "llama safetensors → .ckpt (renames)".into(),
        input: "llama-f16-st",
        out: "llama.ckpt",
        args: ctx.model_args("llama", &["--dtype", "fp16"])?,
        ratio: 1.1,
        in_batch: true,
    })
}

fn case_rename_ckpt_to_st(ctx: &Ctx) -> Result<ConvCase, String> {
    ctx.need("llama-f16-ckpt")?;
    Ok(ConvCase {
        name: "llama .ckpt → safetensors (renames)".into(),
        input: "llama-f16-ckpt",
        out: "llama.safetensors",
        args: ctx.model_args("llama", &["--reversed"])?,
        ratio: 1.1,
        in_batch: false,
    })
}

fn case_cast_bf16_to_fp16(ctx: &Ctx) -> Result<ConvCase, String> {
    ctx.need("llama-bf16-st")?;
    Ok(ConvCase {
        name: "llama bf16 → fp16 cast (safetensors → .ckpt)".into(),
        input: "llama-bf16-st",
        out: "llama.ckpt",
        args: ctx.model_args("llama", &["--dtype", "fp16"])?,
        ratio: 1.3,
        in_batch: true,
    })
}

fn case_cast_fp32_to_bf16(ctx: &Ctx) -> Result<ConvCase, String> {
    ctx.need("llama-f32-st")?;
    Ok(ConvCase {
        name: "llama fp32 → bf16 cast (safetensors → .ckpt)".into(),
        input: "llama-f32-st",
        out: "llama.ckpt",
        args: ctx.model_args("llama", &["--dtype", "bf16"])?,
        ratio: 1.3,
        in_batch: false,
    })
}

fn case_bloom_split_transpose(ctx: &Ctx) -> Result<ConvCase, String> {
    // The safetensors bloom input exists only as a stand-in while the torch writer is missing.
    let (input, what) = if ctx.inputs.contains_key("bloom-f16-bin") {
        ("bloom-f16-bin", "torch .bin")
    } else {
        ("bloom-f16-st", "safetensors")
    };
    ctx.need(input)?;
    Ok(ConvCase {
        name: format!("bloom {what} → .ckpt (qkv head split + transposes)"),
        input,
        out: "bloom.ckpt",
        args: ctx.model_args("bloom", &[])?,
        ratio: 1.5,
        in_batch: false,
    })
}

/// MindFormers 2.x (mcore): qkv fusion + expert stacking (Qwen3-30B-A3B shapes).
fn case_qwen3_moe_stacking(ctx: &Ctx) -> Result<ConvCase, String> {
    ctx.need("qwen3moe-bf16-st")?;
    Ok(ConvCase {
        name: "qwen3_moe safetensors → .safetensors (qkv fusion + expert stacking)".into(),
        input: "qwen3moe-bf16-st",
        out: "moe.safetensors",
        args: ctx.model_args("qwen3_moe", &[])?,
        ratio: 1.5,
        in_batch: false,
    })
}

/// MindFormers 2.x (mcore): FP8 e4m3 128 × 128 block dequantisation to bf16 (DeepSeek-V3 style).
fn case_deepseek3_fp8_dequant(ctx: &Ctx) -> Result<ConvCase, String> {
    ctx.need("deepseek-fp8-st")?;
    Ok(ConvCase {
        name: "deepseek3 FP8 e4m3 → bf16 .safetensors (128x128 block dequant)".into(),
        input: "deepseek-fp8-st",
        out: "ds.safetensors",
        args: ctx.model_args("deepseek3", &[])?,
        ratio: 2.5,
        in_batch: false,
    })
}

/// Distributed: 8 ranks (pp2 × tp4 `.ckpt`) merged into one file, format only (issue 11: ≤ 1.5 × cp + fsync of the
/// same bytes; the baseline copies the single-file `.ckpt` of the same model).
fn case_distributed_merge(ctx: &Ctx) -> Result<ConvCase, String> {
    ctx.need(DIST_KEY)?;
    Ok(ConvCase {
        name: "distributed 8 ranks (pp2 × tp4 .ckpt) → merged .safetensors".into(),
        input: DIST_KEY,
        out: "dist-merged.safetensors",
        args: vec![],
        ratio: 1.5,
        in_batch: false,
    })
}

/// Distributed: 8 ranks straight to HF llama.
fn case_distributed_to_hf(ctx: &Ctx) -> Result<ConvCase, String> {
    ctx.need(DIST_KEY)?;
    Ok(ConvCase {
        name: "distributed 8 ranks → HF llama (--reversed)".into(),
        input: DIST_KEY,
        out: "dist-llama.bin",
        args: ctx.model_args("llama", &["--reversed"])?,
        ratio: 1.5,
        in_batch: false,
    })
}

fn run(args: Args) -> Result<bool, String> {
    let size = parse_size(&args.size).map_err(|e| format!("--size: {e}"))?;
    MOE_EXPERTS.store(moe_experts(size), Ordering::Relaxed);
    if args.runs == 0 {
        return Err("--runs must be at least 1".into());
    }
    if !args.generate_only {
        build_bins();
    }
    let bins = bin_dir(&args.bin);
    let cw = find_bin(&bins, "convert-weight").ok_or_else(|| {
        format!(
            "no convert-weight in {} (run `cargo build --release` or give --bin)",
            bins.display()
        )
    })?;
    let cb = find_bin(&bins, "convert-batch");
    let cache = args
        .cache
        .clone()
        .unwrap_or_else(|| bins.parent().unwrap_or(&bins).join("bench-cache"));
    let out_dir = cache.join("out");
    let logs = cache.join("logs");
    for d in [&cache, &out_dir, &logs] {
        fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
    }
    let only: Vec<String> = args
        .only
        .as_deref()
        .map(|s| s.split(',').map(|w| w.trim().to_lowercase()).collect())
        .unwrap_or_default();
    let wanted =
        |name: &str| only.is_empty() || only.iter().any(|w| name.to_lowercase().contains(w));
    let load_start = loadavg();
    let mut notes: Vec<String> = Vec::new();

    // Inputs: generated in a child process (a child's ru_maxrss starts at its parent's peak).
    let keys: Vec<String> = args
        .inputs
        .as_deref()
        .map(|s| s.split(',').map(|w| w.trim().to_string()).collect())
        .unwrap_or_default();
    if let Some(k) = keys
        .iter()
        .find(|k| !INPUTS.iter().any(|d| d.key == k.as_str()))
    {
        return Err(format!("--inputs: unknown input '{k}'"));
    }
    let selected: Vec<&InputDef> = INPUTS
        .iter()
        .filter(|d| keys.is_empty() || keys.iter().any(|k| k == d.key))
        .collect();
    let missing = selected.iter().any(|d| {
        (d.fallback_for.is_none() || !selected.iter().any(|p| Some(p.key) == d.fallback_for))
            && !is_complete(&cache, d, size)
    }) || (selected.iter().any(|d| d.key == "llama-f16-ckpt")
        && !cache
            .join(format!(
                "{DIST_KEY}-L{}",
                layers_for(Layout::LlamaMs, DType::F16, size)
            ))
            .join(".complete")
            .exists());
    if args.e2e_7b {
        return e2e_7b(&args, &cw, cb.as_deref(), &cache, &logs);
    }
    if args.generate_only {
        for def in selected.iter().copied() {
            if def
                .fallback_for
                .and_then(|k| INPUTS.iter().find(|d| d.key == k))
                .is_some_and(|p| is_complete(&cache, p, size))
            {
                continue;
            }
            if let Err(e) = ensure_input(&cache, def, size) {
                eprintln!("skipped: {e}");
            }
        }
        if let Some(def) = selected.iter().copied().find(|d| d.key == "llama-f16-ckpt") {
            if let Err(e) =
                ensure_input(&cache, def, size).and_then(|i| ensure_distributed(&cache, &i))
            {
                eprintln!("skipped: {e}");
            }
        }
        return Ok(true);
    }
    if missing {
        let me = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
        let status = Command::new(me)
            .args(std::env::args_os().skip(1))
            .arg("--generate-only")
            .status()
            .map_err(|e| format!("cannot run the input generator: {e}"))?;
        if !status.success() {
            return Err(format!("the input generator failed ({status})"));
        }
    }
    let mut inputs: BTreeMap<&'static str, Input> = BTreeMap::new();
    for def in selected.iter().copied() {
        if def.fallback_for.is_some_and(|k| inputs.contains_key(k)) {
            continue;
        }
        match ensure_input(&cache, def, size) {
            Ok(i) => {
                inputs.insert(def.key, i);
            }
            Err(e) => notes.push(format!("input {} not generated: {e}", def.key)),
        }
    }
    if let Some(ck) = inputs.get("llama-f16-ckpt").cloned() {
        match ensure_distributed(&cache, &ck) {
            Ok(i) => {
                inputs.insert(DIST_KEY, i);
            }
            Err(e) => notes.push(format!("input {DIST_KEY} not generated: {e}")),
        }
    }
    let models = list_models(&cw);
    let dev = |v: &mut Vec<String>| {
        v.push("--device".into());
        v.push(args.device.clone());
    };

    let ctx = Ctx {
        inputs: &inputs,
        models,
    };
    let mut cases: Vec<ConvCase> = Vec::new();
    for f in CASES {
        match f(&ctx) {
            Ok(c) => cases.push(c),
            Err(why) => notes.push(format!("a case skipped: {why}")),
        }
    }

    let mut rows: Vec<Row> = Vec::new();
    let mut failed = false;
    let runs = args.runs;
    let baseline_of = |input: &Input| Baseline {
        src: input.path.clone(),
        dst: out_dir.join(format!(
            "cp-{}",
            input
                .path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("x")
        )),
    };

    for case in cases.iter().filter(|c| wanted(&c.name)) {
        let Some(input) = inputs.get(case.input) else {
            notes.push(format!(
                "{}: skipped (input {} missing)",
                case.name, case.input
            ));
            continue;
        };
        // A distributed input (a folder) is paired with `cp` of the single file holding the same model.
        let baseline = match (case.input, inputs.get("llama-f16-ckpt")) {
            (DIST_KEY, Some(single)) => baseline_of(single),
            _ => baseline_of(input),
        };
        let out = out_dir.join(case.out);
        let mut a = case.args.clone();
        dev(&mut a);
        eprintln!("running: {}", case.name);
        let make = || {
            let mut c = Command::new(&cw);
            c.arg("--input_path")
                .arg(&input.path)
                .arg("--output_path")
                .arg(&out)
                .args(&a);
            c
        };
        let clean = || {
            let _ = fs::remove_file(&out);
        };
        match bench_case(runs, &logs, &case.name, &make, &clean, Some(&baseline)) {
            Ok((stat, base)) => rows.push(Row {
                case: case.name.clone(),
                input_bytes: input.bytes,
                stat,
                cp: base.as_ref().map(|b| b.cp.secs),
                cp_fsync: base.as_ref().map(|b| b.cp_fsync),
                largest: input.largest,
                target: Target::Convert(case.ratio),
            }),
            Err(e) => {
                eprintln!("{e}");
                notes.push(format!(
                    "{}: CONVERSION FAILED (see {})",
                    case.name,
                    logs.display()
                ));
                failed = true;
            }
        }
    }

    // inspect of each input format.
    for key in ["llama-f16-st", "llama-f16-ckpt", "llama-f16-bin"] {
        let Some(input) = inputs.get(key) else {
            continue;
        };
        let name = format!("inspect {key}");
        if !wanted(&name) {
            continue;
        }
        let make = || {
            let mut c = Command::new(&cw);
            c.arg("inspect").arg(&input.path);
            c
        };
        match bench_case(runs, &logs, &name, &make, &|| {}, None) {
            Ok((stat, _)) => rows.push(Row {
                case: name,
                input_bytes: input.bytes,
                stat,
                cp: None,
                cp_fsync: None,
                largest: input.largest,
                target: Target::Inspect(0.05, 64),
            }),
            Err(e) => {
                eprintln!("{e}");
                notes.push(format!("{name}: FAILED"));
                failed = true;
            }
        }
    }

    // Batch of 4 jobs, --jobs 1 vs --jobs 2.
    if wanted("batch") {
        match &cb {
            None => notes.push("batch: skipped (no convert-batch binary)".into()),
            Some(cb) => batch_case(
                &args, &cw, cb, &cases, &inputs, &out_dir, &logs, &mut rows, &mut notes,
            ),
        }
    }

    // Python way.
    if wanted("python") {
        python_case(&args, &inputs, &out_dir, &logs, &mut rows, &mut notes);
    }

    print_table(&args, size, &inputs, &rows, &notes, &load_start);
    Ok(!failed)
}

/// Like [`bench_case`] for a sequence of commands run one after the other: times summed, memory the max.
fn bench_sequence(
    runs: usize,
    logs: &Path,
    label: &str,
    cmds: &[Command],
    cleanup: &dyn Fn(),
) -> Result<Stat, String> {
    let stem = label.replace(|c: char| !c.is_ascii_alphanumeric(), "_");
    let mut samples = Vec::new();
    for k in 0..=runs {
        cleanup();
        sync_all();
        let mut total = Sample::default();
        for (j, c) in cmds.iter().enumerate() {
            let mut cmd = Command::new(c.get_program());
            cmd.args(c.get_args());
            let o = measure(cmd, &logs.join(format!("{stem}.{k}.{j}.log")))?;
            if !o.ok {
                cleanup();
                return Err(format!("{label}: failed:\n{}", last_lines(&o.log, 8)));
            }
            total.secs += o.sample.secs;
            total.maxrss_kb = total.maxrss_kb.max(o.sample.maxrss_kb);
            total.anon_kb = total.anon_kb.max(o.sample.anon_kb);
        }
        if k > 0 {
            samples.push(total);
        }
    }
    cleanup();
    sync_all();
    Ok(Stat {
        secs: median(samples.iter().map(|s| s.secs).collect()),
        maxrss_kb: samples.iter().map(|s| s.maxrss_kb).max().unwrap_or(0),
        anon_kb: samples.iter().map(|s| s.anon_kb).max().unwrap_or(0),
    })
}

/// The batch cases over the four `in_batch` conversions: `--jobs 1` and `--jobs 2` (both with a JSON report, golden
/// hashes and the runner's fingerprints), and the same four jobs as plain `convert-weight` runs one after the other
/// (none of them). Targets: `--jobs 2` ≥ 1.8 × faster than `--jobs 1`; `--jobs 1` ≤ 1.1 × the plain runs.
#[allow(clippy::too_many_arguments)]
fn batch_case(
    args: &Args,
    cw: &Path,
    cb: &Path,
    cases: &[ConvCase],
    inputs: &BTreeMap<&'static str, Input>,
    out_dir: &Path,
    logs: &Path,
    rows: &mut Vec<Row>,
    notes: &mut Vec<String>,
) {
    let jobs: Vec<&ConvCase> = cases
        .iter()
        .filter(|c| c.in_batch && inputs.contains_key(c.input))
        .collect();
    if jobs.len() < 4 {
        notes.push("batch: skipped (fewer than 4 batch jobs available)".into());
        return;
    }
    let batch_dir = out_dir.join("batch");
    let manifest = out_dir.join("bench-batch.toml");
    let report = out_dir.join("bench-batch-report.json");
    let golden = out_dir.join("bench-batch-golden.json");
    let output_of = |k: usize, c: &ConvCase| batch_dir.join(format!("job{k}-{}", c.out));
    let mut text = String::from("# written by examples/bench.rs\n");
    let mut plain: Vec<Command> = Vec::new();
    for (k, c) in jobs.iter().enumerate() {
        let input = &inputs[c.input];
        text.push_str(&format!(
            "\n[[job]]\nname = \"job{k}\"\ninput = {:?}\noutput = {:?}\ndevice = {:?}\n",
            input.path.display().to_string(),
            output_of(k, c).display().to_string(),
            args.device,
        ));
        let mut it = c.args.iter();
        while let Some(flag) = it.next() {
            match flag.as_str() {
                "--model" => {
                    if let Some(m) = it.next() {
                        text.push_str(&format!("model = {m:?}\n"));
                    }
                }
                "--dtype" => {
                    if let Some(d) = it.next() {
                        text.push_str(&format!("dtype = {d:?}\n"));
                    }
                }
                "--reversed" => text.push_str("reversed = true\n"),
                _ => {}
            }
        }
        let mut cmd = Command::new(cw);
        cmd.arg("--input_path")
            .arg(&input.path)
            .arg("--output_path")
            .arg(output_of(k, c))
            .args(&c.args)
            .args(["--device", &args.device]);
        plain.push(cmd);
    }
    if let Err(e) = fs::write(&manifest, text) {
        notes.push(format!("batch: cannot write {}: {e}", manifest.display()));
        return;
    }
    let total: u64 = jobs.iter().map(|c| inputs[c.input].bytes).sum();
    let free = free_bytes(out_dir).unwrap_or(u64::MAX);
    // Leave 5 GiB free: the disk is shared.
    if free < total + (5 << 30) {
        notes.push(format!(
            "batch: skipped, {:.1} GB free under {}, the four outputs need about {:.1} GB + 5 GiB left free",
            free as f64 / 1e9,
            out_dir.display(),
            total as f64 / 1e9
        ));
        return;
    }
    let largest = jobs
        .iter()
        .map(|c| inputs[c.input].largest)
        .max()
        .unwrap_or(0);
    let clean = || {
        let _ = fs::remove_dir_all(&batch_dir);
        let _ = fs::remove_file(&report);
        let _ = fs::remove_file(&golden);
    };
    let clean_plain = || {
        clean();
        let _ = fs::create_dir_all(&batch_dir);
    };
    eprintln!("running: batch, plain convert-weight runs");
    let plain_stat = match bench_sequence(args.runs, logs, "batch plain", &plain, &clean_plain) {
        Ok(s) => Some(s),
        Err(e) => {
            notes.push(format!(
                "batch plain runs: failed: {}",
                e.lines().last().unwrap_or("")
            ));
            None
        }
    };
    let mut stats = Vec::new();
    for j in [1u64, 2] {
        eprintln!("running: batch --jobs {j}");
        let make = || {
            let mut c = Command::new(cb);
            c.arg(&manifest)
                .args(["--jobs", &j.to_string(), "--force", "--no-progress"])
                .args(["--memory-budget", &args.memory_budget])
                .arg("--report")
                .arg(&report)
                .arg("--write-golden")
                .arg(&golden);
            c
        };
        match bench_case(
            args.runs,
            logs,
            &format!("batch jobs {j}"),
            &make,
            &clean,
            None,
        ) {
            Ok((stat, _)) => stats.push(stat),
            Err(e) => {
                notes.push(format!(
                    "batch --jobs {j}: skipped, convert-batch failed: {}",
                    e.lines().last().unwrap_or("")
                ));
                return;
            }
        }
    }
    let (one, two) = (stats[0].clone(), stats[1].clone());
    let speedup = one.secs / two.secs;
    let overhead = plain_stat.as_ref().map(|p| one.secs / p.secs);
    let row = |case: String, stat: Stat, target: Target| Row {
        case,
        input_bytes: total,
        stat,
        cp: None,
        cp_fsync: None,
        largest,
        target,
    };
    if let Some(p) = plain_stat {
        rows.push(row(
            "4 jobs as plain convert-weight runs (no report, hashes, fingerprints)".into(),
            p,
            Target::Judged {
                jobs: 1,
                text: String::new(),
                verdict: None,
            },
        ));
    }
    rows.push(row(
        "batch of 4 jobs, --jobs 1, report + golden hashes + fingerprints".into(),
        one,
        Target::Judged {
            jobs: 1,
            text: "≤ 1.1 × plain runs".into(),
            verdict: overhead.map(|o| {
                if o <= 1.1 {
                    (true, format!("ok ×{o:.2}"))
                } else {
                    (false, format!("MISS ×{o:.2} > 1.1"))
                }
            }),
        },
    ));
    rows.push(row(
        "batch of 4 jobs, --jobs 2, report + golden hashes + fingerprints".into(),
        two,
        Target::Judged {
            jobs: 2,
            text: "≥ 1.8 × faster than --jobs 1".into(),
            verdict: Some(if speedup >= 1.8 {
                (true, format!("ok {speedup:.2}× faster"))
            } else {
                (false, format!("MISS {speedup:.2}× faster < 1.8"))
            }),
        },
    ));
    notes.push(format!(
        "batch: --jobs 2 vs --jobs 1: {speedup:.2}× faster (target ≥ 1.8); --jobs 1 with report + golden + \
         fingerprints vs plain runs: {} (target ≤ 1.1)",
        overhead
            .map(|o| format!("×{o:.2}"))
            .unwrap_or_else(|| "not measured".into())
    ));
}

fn python_case(
    args: &Args,
    inputs: &BTreeMap<&'static str, Input>,
    out_dir: &Path,
    logs: &Path,
    rows: &mut Vec<Row>,
    notes: &mut Vec<String>,
) {
    let py = args
        .python
        .clone()
        .unwrap_or_else(|| PathBuf::from("python3"));
    let Some(input) = inputs.get("llama-f16-bin") else {
        notes.push(
            "python: skipped (no torch .bin input: the torch writer is not available)".into(),
        );
        return;
    };
    if !python_has_torch(&py) {
        notes.push(format!("python: skipped ({} has no torch)", py.display()));
        return;
    }
    let script = out_dir.join("bench_python.py");
    if fs::File::create(&script)
        .and_then(|mut f| f.write_all(PY_SCRIPT.as_bytes()))
        .is_err()
    {
        notes.push("python: cannot write the script".into());
        return;
    }
    let out = out_dir.join("python.ckpt");
    let make = || {
        let mut c = Command::new(&py);
        c.arg(&script).arg(&input.path).arg(&out);
        c
    };
    let clean = || {
        let _ = fs::remove_file(&out);
    };
    let baseline = Baseline {
        src: input.path.clone(),
        dst: out_dir.join("cp-python-input"),
    };
    match bench_case(args.runs, logs, "python", &make, &clean, Some(&baseline)) {
        Ok((stat, base)) => {
            let ours = rows
                .iter()
                .find(|r| r.case.starts_with("llama torch .bin → .ckpt"))
                .map(|r| r.stat.secs);
            let writer = fs::read_to_string(logs.join("python.1.log"))
                .ok()
                .and_then(|t| {
                    t.lines()
                        .find(|l| l.starts_with("writer:"))
                        .map(str::to_string)
                })
                .unwrap_or_default();
            if let Some(o) = ours {
                notes.push(format!(
                    "Python way (torch.load + MindSpore-format ckpt, {writer}): {:.2} s, {:.1}× the time of convert-weight",
                    stat.secs,
                    stat.secs / o
                ));
            }
            rows.push(Row {
                case: "Python: torch.load + ckpt writer (llama .bin)".into(),
                input_bytes: input.bytes,
                stat,
                cp: base.as_ref().map(|b| b.cp.secs),
                cp_fsync: base.as_ref().map(|b| b.cp_fsync),
                largest: input.largest,
                target: Target::None,
            });
        }
        Err(e) => notes.push(format!(
            "python: failed: {}",
            e.lines().last().unwrap_or("")
        )),
    }
}

fn print_table(
    args: &Args,
    size: u64,
    inputs: &BTreeMap<&'static str, Input>,
    rows: &[Row],
    notes: &[String],
    load_start: &str,
) {
    let gb = |b: u64| b as f64 / 1e9;
    println!();
    println!("machine: {}", machine());
    println!(
        "command: cargo run --release --example bench -- --size {} --runs {} --device {}",
        args.size, args.runs, args.device
    );
    println!("load average: {load_start} at start, {} at end", loadavg());
    for (k, i) in inputs {
        println!(
            "input {k}: {} layers, {:.2} GB, largest tensor {:.0} MiB ({})",
            i.layers,
            gb(i.bytes),
            i.largest as f64 / MIB as f64,
            i.path.display()
        );
    }
    let _ = size;
    println!();
    println!(
        "| case | s (median of {}) | GB/s | cp s | × cp | cp+fsync s | × cp+fsync | peak RSS (VmHWM) | peak anon | anon / L | target | result |",
        args.runs
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|");
    let dash = || "—".to_string();
    for r in rows {
        let gbs = gb(r.input_bytes) / r.stat.secs;
        let rel = if r.largest > 0 {
            format!("{:.2}", (r.stat.anon_kb * 1024) as f64 / r.largest as f64)
        } else {
            dash()
        };
        println!(
            "| {} | {:.3} | {:.2} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.case,
            r.stat.secs,
            gbs,
            r.cp.map(|c| format!("{c:.3}")).unwrap_or_else(dash),
            r.cp.map(|c| format!("{:.2}", r.stat.secs / c))
                .unwrap_or_else(dash),
            r.cp_fsync.map(|c| format!("{c:.3}")).unwrap_or_else(dash),
            r.cp_fsync
                .map(|c| format!("{:.2}", r.stat.secs / c))
                .unwrap_or_else(dash),
            mib_text(r.stat.maxrss_kb),
            if r.stat.anon_kb == 0 {
                "— (exited before a sample)".to_string()
            } else {
                mib_text(r.stat.anon_kb)
            },
            rel,
            r.target_text(),
            r.judge().map(|(_, v)| v).unwrap_or_default()
        );
    }
    println!();
    println!("L = largest tensor of the input. Peak anon = sampled max of RssAnon + RssShmem (memory the process holds);");
    println!("VmHWM also counts file pages of the read-only input map, which the kernel may drop.");
    println!("cp s: median of a `cp` of the same input run right before each run of the case (same load);");
    println!("cp+fsync s: the same plus an fsync of the copy: the yardstick of the time targets (convert-weight fsyncs its output before renaming it into place).");
    for n in notes {
        println!("note: {n}");
    }
    println!();
    let judged: Vec<(&Row, (bool, String))> =
        rows.iter().filter_map(|r| Some((r, r.judge()?))).collect();
    for (r, (ok, v)) in &judged {
        println!(
            "verdict: {} — {}: {v}",
            if *ok { "MET " } else { "MISS" },
            r.case
        );
    }
    let met = judged.iter().filter(|(_, (ok, _))| *ok).count();
    println!("verdicts: {met} of {} rows meet every target", judged.len());
}

// ---------------------------------------------------------------------------------------------------------------
// A full 7B llama end to end

/// Free bytes for an unprivileged user on the file system holding `path`.
fn free_bytes(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt as _;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: zeroed statvfs is a valid plain C struct; `c` is a NUL-terminated path.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointers for the duration of the call.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some(st.f_bavail as u64 * st.f_frsize as u64)
}

/// Every regular file under `path` (or `path` itself).
fn files_under(path: &Path) -> Vec<PathBuf> {
    if path.is_file() {
        return vec![path.to_path_buf()];
    }
    let mut out = Vec::new();
    if let Ok(rd) = fs::read_dir(path) {
        for e in rd.flatten() {
            out.extend(files_under(&e.path()));
        }
    }
    out.sort();
    out
}

fn bytes_under(path: &Path) -> u64 {
    files_under(path)
        .iter()
        .filter_map(|f| fs::metadata(f).ok())
        .map(|m| m.len())
        .sum()
}

fn remove_any(path: &Path) {
    if path.is_dir() {
        let _ = fs::remove_dir_all(path);
    } else {
        let _ = fs::remove_file(path);
    }
}

/// `cp -r src dst`, then an fsync of every copied file: (cp seconds, cp + fsync seconds). The copy is removed.
fn cp_fsync(src: &Path, dst: &Path, log: &Path) -> Result<(f64, f64), String> {
    remove_any(dst);
    sync_all();
    let mut c = Command::new("cp");
    c.arg("-r").arg(src).arg(dst);
    let o = measure(c, log)?;
    if !o.ok {
        remove_any(dst);
        return Err(format!("cp {}: {}", src.display(), last_lines(&o.log, 4)));
    }
    let t0 = Instant::now();
    for f in files_under(dst) {
        fs::File::open(&f)
            .and_then(|f| f.sync_all())
            .map_err(|e| format!("fsync {}: {e}", f.display()))?;
    }
    let fsync = t0.elapsed().as_secs_f64();
    remove_any(dst);
    sync_all();
    Ok((o.sample.secs, o.sample.secs + fsync))
}

/// Generate the HF safetensors shards (5 GB each) of a fp16 llama with 7B shapes and `layers` layers.
fn ensure_e2e_input(dir: &Path, layers: usize) -> Result<(), String> {
    let done = dir.join(".complete");
    if done.exists() {
        return Ok(());
    }
    let hf = dir.join("hf");
    remove_any(&hf);
    fs::create_dir_all(&hf).map_err(|e| format!("{}: {e}", hf.display()))?;
    let infos = tensors(Layout::LlamaHf, layers, DType::F16);
    let outs: Vec<OutTensor> = infos
        .iter()
        .map(|info| OutTensor {
            info: info.clone(),
            tied_to: None,
        })
        .collect();
    let opts = WriteOptions {
        max_shard_size: Some(5_000_000_000),
        ..WriteOptions::default()
    };
    eprint!("generating {} ... ", hf.display());
    let t0 = Instant::now();
    let mut w = formats::create_writer(OutputFormat::Safetensors, &hf, &outs, &opts)
        .map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    for idx in w.order() {
        buf.resize(infos[idx].nbytes(), 0);
        fill(&mut buf, DType::F16, idx as u64 + 1);
        w.write(idx, &buf).map_err(|e| e.to_string())?;
    }
    w.finish().map_err(|e| e.to_string())?;
    let cfg = config_json(Layout::LlamaHf, layers, DType::F16);
    fs::write(hf.join("config.json"), format!("{cfg:#}\n"))
        .map_err(|e| format!("{}: {e}", hf.display()))?;
    fs::write(&done, b"").map_err(|e| format!("{}: {e}", done.display()))?;
    eprintln!("{:.1} s", t0.elapsed().as_secs_f64());
    Ok(())
}

/// One end-to-end step's figures.
struct E2eRow {
    step: String,
    bytes: u64,
    sample: Sample,
    cp: Option<(f64, f64)>,
    /// Jobs at once (memory bound `jobs` × 2 × L + 64 MiB); 0: not judged.
    jobs: u64,
    note: String,
}

fn e2e_7b(
    args: &Args,
    cw: &Path,
    cb: Option<&Path>,
    cache: &Path,
    logs: &Path,
) -> Result<bool, String> {
    let layers = args.e2e_layers.max(1);
    let infos = tensors(Layout::LlamaHf, layers, DType::F16);
    let model: u64 = infos.iter().map(|t| t.nbytes() as u64).sum();
    let largest = infos.iter().map(|t| t.nbytes() as u64).max().unwrap_or(0);
    let dir = cache.join(format!("e2e-llama-f16-L{layers}"));
    let hf = dir.join("hf");
    let gb = |b: u64| b as f64 / 1e9;
    let margin = 2u64 << 30;
    let have_input = dir.join(".complete").exists();
    let free = free_bytes(cache).unwrap_or(0);
    let need = if have_input { 2 * model } else { 3 * model } + margin;
    println!(
        "e2e: llama, {layers} layers (hidden {HIDDEN}, inter {INTER}, vocab {VOCAB}), fp16 {:.2} GB, largest tensor {:.0} MiB",
        gb(model),
        largest as f64 / MIB as f64
    );
    if free < need {
        println!(
            "e2e: SKIPPED: {:.1} GB free under {}, {:.1} GB needed (input, .ckpt, HF shards: 3 × {:.1} GB + 2 GiB)",
            gb(free),
            cache.display(),
            gb(need),
            gb(model)
        );
        return Ok(true);
    }
    if args.generate_only {
        ensure_e2e_input(&dir, layers)?;
        return Ok(true);
    }
    if !have_input {
        // In a child, so that the generator's buffers do not show in the conversions' ru_maxrss.
        let me = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
        let status = Command::new(me)
            .args(std::env::args_os().skip(1))
            .arg("--generate-only")
            .status()
            .map_err(|e| format!("cannot run the input generator: {e}"))?;
        if !status.success() {
            return Err(format!("the e2e input generator failed ({status})"));
        }
    }
    let n_files = files_under(&hf).len();
    let out = dir.join("out");
    remove_any(&out);
    fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    let ckpt = out.join("llama.ckpt");
    // A trailing slash: an HF shard directory (without it, `--max-shard-size` shards into the parent).
    let back = PathBuf::from(format!("{}/", out.join("hf-back").display()));
    let copy = out.join("cp-copy");
    let load_start = loadavg();
    let t_all = Instant::now();
    let mut rows: Vec<E2eRow> = Vec::new();
    let mut all_ok = true;
    let dev = ["--device".to_string(), args.device.clone()];

    let run_step = |label: &str, cmd: Command| -> Result<Outcome, String> {
        eprintln!("e2e: {label}");
        sync_all();
        let stem = label.replace(|c: char| !c.is_ascii_alphanumeric(), "_");
        measure(cmd, &logs.join(format!("e2e-{stem}.log")))
    };
    let verify = |label: &str, a: &Path, b: &Path, model: bool| -> Result<(bool, Sample), String> {
        let mut c = Command::new(cw);
        c.arg("verify").arg(a).arg(b);
        if model {
            c.args(["--model", "llama"]);
        }
        let o = run_step(label, c)?;
        Ok((o.ok && o.log.contains("identical"), o.sample))
    };

    // 1. forward: HF shards → .ckpt
    let cp1 = cp_fsync(&hf, &copy, &logs.join("e2e-cp-hf.log"))?;
    let mut c = Command::new(cw);
    c.arg("--input_path")
        .arg(&hf)
        .arg("--output_path")
        .arg(&ckpt)
        .args(["--model", "llama"])
        .args(&dev);
    let o = run_step("forward HF shards → .ckpt", c)?;
    if !o.ok {
        return Err(format!(
            "forward conversion failed:\n{}",
            last_lines(&o.log, 8)
        ));
    }
    rows.push(E2eRow {
        step: "forward: HF safetensors shards → .ckpt".into(),
        bytes: model,
        sample: o.sample,
        cp: Some(cp1),
        jobs: 1,
        note: String::new(),
    });
    let (ok, s) = verify("verify HF vs .ckpt", &hf, &ckpt, true)?;
    all_ok &= ok;
    rows.push(E2eRow {
        step: "verify HF shards (mapped through --model llama) vs .ckpt".into(),
        bytes: 2 * model,
        sample: s,
        cp: None,
        jobs: 0,
        note: if ok { "identical" } else { "DIFFERENT" }.into(),
    });

    // 2. back: .ckpt → HF shards
    let cp2 = cp_fsync(&ckpt, &copy, &logs.join("e2e-cp-ckpt.log"))?;
    let mut c = Command::new(cw);
    c.arg("--input_path")
        .arg(&ckpt)
        .arg("--output_path")
        .arg(&back)
        .args(["--model", "llama", "--reversed", "--max-shard-size", "5GB"])
        .args(&dev);
    let o = run_step("back .ckpt → HF shards", c)?;
    if !o.ok {
        return Err(format!(
            "reverse conversion failed:\n{}",
            last_lines(&o.log, 8)
        ));
    }
    rows.push(E2eRow {
        step: "back: .ckpt → HF safetensors shards (5 GB)".into(),
        bytes: model,
        sample: o.sample,
        cp: Some(cp2),
        jobs: 1,
        note: format!("{} files", files_under(&back).len()),
    });
    let (ok, s) = verify("verify HF vs HF back", &hf, &back, false)?;
    all_ok &= ok;
    rows.push(E2eRow {
        step: "verify HF shards vs HF shards back".into(),
        bytes: 2 * model,
        sample: s,
        cp: None,
        jobs: 0,
        note: if ok { "identical" } else { "DIFFERENT" }.into(),
    });
    remove_any(&back);

    // 3. the two as one batch
    let free = free_bytes(cache).unwrap_or(0);
    let batch_need = 2 * model + margin;
    match cb {
        None => println!("e2e: batch SKIPPED: no convert-batch binary"),
        Some(_) if free < batch_need => println!(
            "e2e: batch SKIPPED: {:.1} GB free, {:.1} GB needed (a second .ckpt and HF set: 2 × {:.1} GB + 2 GiB)",
            gb(free),
            gb(batch_need),
            gb(model)
        ),
        Some(cb) => {
            let bdir = out.join("batch");
            let manifest = out.join("e2e.toml");
            let (b_ckpt, b_back) = (
                bdir.join("llama.ckpt"),
                PathBuf::from(format!("{}/", bdir.join("hf-back").display())),
            );
            let text = format!(
                "# written by examples/bench.rs --e2e-7b\n\n[[job]]\nname = \"forward\"\ninput = {:?}\noutput = {:?}\nmodel = \"llama\"\ndevice = {:?}\n\n[[job]]\nname = \"back\"\ninput = {:?}\noutput = {:?}\nmodel = \"llama\"\nreversed = true\nmax_shard_size = \"5GB\"\ndevice = {:?}\n",
                hf.display().to_string(),
                b_ckpt.display().to_string(),
                args.device,
                ckpt.display().to_string(),
                b_back.display().to_string(),
                args.device,
            );
            fs::write(&manifest, text).map_err(|e| format!("{}: {e}", manifest.display()))?;
            let mut c = Command::new(cb);
            c.arg(&manifest)
                .args(["--jobs", "2", "--force", "--no-progress"])
                .args(["--memory-budget", &args.memory_budget])
                .arg("--report")
                .arg(out.join("e2e-report.json"));
            let o = run_step("batch of the two, --jobs 2", c)?;
            if !o.ok {
                return Err(format!("the batch failed:\n{}", last_lines(&o.log, 8)));
            }
            rows.push(E2eRow {
                step: "batch of the two (--jobs 2, report, fingerprints)".into(),
                bytes: 2 * model,
                sample: o.sample,
                cp: Some((cp1.0 + cp2.0, cp1.1 + cp2.1)),
                jobs: 2,
                note: "cp columns: sum of the two".into(),
            });
            let (ok1, s1) = verify("verify batch .ckpt", &hf, &b_ckpt, true)?;
            let (ok2, s2) = verify("verify batch HF back", &hf, &b_back, false)?;
            all_ok &= ok1 && ok2;
            rows.push(E2eRow {
                step: "verify the batch's .ckpt and HF shards".into(),
                bytes: 4 * model,
                sample: Sample {
                    secs: s1.secs + s2.secs,
                    maxrss_kb: s1.maxrss_kb.max(s2.maxrss_kb),
                    anon_kb: s1.anon_kb.max(s2.anon_kb),
                },
                cp: None,
                jobs: 0,
                note: format!(
                    ".ckpt {}, HF {}",
                    if ok1 { "identical" } else { "DIFFERENT" },
                    if ok2 { "identical" } else { "DIFFERENT" }
                ),
            });
        }
    }
    let out_bytes = bytes_under(&out);
    remove_any(&out);
    if !args.e2e_keep_input {
        remove_any(&dir);
    }

    println!();
    println!("machine: {}", machine());
    println!(
        "command: cargo run --release --example bench -- --e2e-7b --e2e-layers {layers} --device {}",
        args.device
    );
    println!("load average: {load_start} at start, {} at end", loadavg());
    println!(
        "model: {:.2} GB in {} files, L = {:.0} MiB; outputs at the end {:.2} GB; total wall {:.0} s",
        gb(model),
        n_files,
        largest as f64 / MIB as f64,
        gb(out_bytes),
        t_all.elapsed().as_secs_f64()
    );
    println!();
    println!("| step | s | GB/s | cp s | cp+fsync s | × cp+fsync | peak RSS (VmHWM) | peak anon | anon / L | memory | note |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|");
    for r in &rows {
        let anon = r.sample.anon_kb * 1024;
        let mem = if r.jobs == 0 {
            "—".to_string()
        } else {
            let (ok, v) = mem_verdict(anon, largest, r.jobs);
            all_ok &= ok;
            v
        };
        println!(
            "| {} | {:.1} | {:.2} | {} | {} | {} | {} | {} | {:.2} | {} | {} |",
            r.step,
            r.sample.secs,
            gb(r.bytes) / r.sample.secs,
            r.cp.map(|c| format!("{:.1}", c.0))
                .unwrap_or_else(|| "—".into()),
            r.cp.map(|c| format!("{:.1}", c.1))
                .unwrap_or_else(|| "—".into()),
            r.cp.map(|c| format!("{:.2}", r.sample.secs / c.1))
                .unwrap_or_else(|| "—".into()),
            mib_text(r.sample.maxrss_kb),
            mib_text(r.sample.anon_kb),
            anon as f64 / largest as f64,
            mem,
            r.note
        );
    }
    println!();
    println!(
        "e2e: {}",
        if all_ok {
            "every output verified identical, every conversion within 2 × L + 64 MiB (per job)"
        } else {
            "FAILED: see the table"
        }
    );
    Ok(all_ok)
}

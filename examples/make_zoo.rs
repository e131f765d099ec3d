//! Make the bundled example zoo: tiny checkpoints of the ten first-release families and of five MindFormers 2.x
//! ("mcore") families (qwen3, qwen3_moe, glm4, deepseek3 in FP8 e4m3 with block scales, telechat2) in HF layout
//! (config.json + weights), plus a MindSpore `.ckpt` or `.safetensors` of each (converted with this project),
//! written with the project's own writers.
//!
//! `cargo run --example make_zoo [-- OUT_DIR]` (default `examples/zoo`). Deterministic: the same bytes every run.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use convert_weight::convert::{self, JobSpec, RunControl};
use convert_weight::formats::{self, OutTensor, OutputFormat, WriteOptions};
use convert_weight::tensor::{DType, TensorInfo};
use serde_json::{json, Value};

const V: usize = 64; // vocab
const H: usize = 16; // hidden
const I: usize = 32; // intermediate
const L: usize = 2; // layers
const NH: usize = 2; // heads
const P: usize = 16; // positions

/// How a family's weights are laid out on disk.
enum Layout {
    /// One torch file with this name.
    Torch(&'static str),
    /// torch shards of at most this many bytes, with an index.
    TorchShards(u64),
    /// model.safetensors.
    Safetensors,
    /// safetensors shards of at most this many bytes, with an index.
    SafetensorsShards(u64),
}

struct Family {
    dir: &'static str,
    model: &'static str,
    dtype: DType,
    layout: Layout,
    config: Value,
    tensors: Vec<(String, Vec<usize>)>,
}

fn per_layer(pattern: &[(&str, Vec<usize>)]) -> Vec<(String, Vec<usize>)> {
    (0..L)
        .flat_map(|i| {
            pattern
                .iter()
                .map(move |(n, s)| (n.replace("{i}", &i.to_string()), s.clone()))
        })
        .collect()
}

fn named(list: &[(&str, Vec<usize>)]) -> Vec<(String, Vec<usize>)> {
    list.iter()
        .map(|(n, s)| (n.to_string(), s.clone()))
        .collect()
}

fn llama_like(biases: bool) -> Vec<(String, Vec<usize>)> {
    let mut t = named(&[("model.embed_tokens.weight", vec![V, H])]);
    let mut layer = vec![
        ("model.layers.{i}.self_attn.q_proj.weight", vec![H, H]),
        ("model.layers.{i}.self_attn.k_proj.weight", vec![H, H]),
        ("model.layers.{i}.self_attn.v_proj.weight", vec![H, H]),
        ("model.layers.{i}.self_attn.o_proj.weight", vec![H, H]),
        ("model.layers.{i}.mlp.gate_proj.weight", vec![I, H]),
        ("model.layers.{i}.mlp.up_proj.weight", vec![I, H]),
        ("model.layers.{i}.mlp.down_proj.weight", vec![H, I]),
        ("model.layers.{i}.input_layernorm.weight", vec![H]),
        ("model.layers.{i}.post_attention_layernorm.weight", vec![H]),
    ];
    if biases {
        for p in ["q", "k", "v", "o"] {
            layer.push((
                match p {
                    "q" => "model.layers.{i}.self_attn.q_proj.bias",
                    "k" => "model.layers.{i}.self_attn.k_proj.bias",
                    "v" => "model.layers.{i}.self_attn.v_proj.bias",
                    _ => "model.layers.{i}.self_attn.o_proj.bias",
                },
                vec![H],
            ));
        }
    }
    t.extend(per_layer(&layer));
    t.extend(named(&[
        ("model.norm.weight", vec![H]),
        ("lm_head.weight", vec![V, H]),
    ]));
    t
}

fn llama_config(model_type: &str) -> Value {
    json!({"model_type": model_type, "hidden_size": H, "num_attention_heads": NH, "num_key_value_heads": NH,
           "num_hidden_layers": L, "intermediate_size": I, "vocab_size": V})
}

// The mcore families: GQA (4 query heads, 2 KV heads, head_dim 4), hidden 16, ffn 24, expert ffn 8, 4 experts.
const MH: usize = 16; // hidden
const MNH: usize = 4; // query heads
const MKV: usize = 2; // KV heads
const MHD: usize = 4; // head dim
const MI: usize = 24; // dense ffn
const MEI: usize = 8; // expert ffn
const ME: usize = 4; // routed experts
/// DeepSeek-V3's dense ffn: not a multiple of the 128-row FP8 block, so its scales cover partial edge blocks.
const DSI: usize = 200;
/// FP8 block edge (DeepSeek-V3's `weight_block_size` [128, 128]).
const BLOCK: usize = 128;

fn mcore_config(model_type: &str, arch: &str) -> Value {
    json!({"architectures": [arch], "model_type": model_type, "hidden_size": MH, "num_attention_heads": MNH,
           "num_key_value_heads": MKV, "head_dim": MHD, "num_hidden_layers": L, "intermediate_size": MI,
           "vocab_size": V, "tie_word_embeddings": false, "torch_dtype": "bfloat16"})
}

/// Qwen3-style attention (q/k/v/o, q/k norms) of one layer.
fn qwen3_attention() -> Vec<(&'static str, Vec<usize>)> {
    vec![
        (
            "model.layers.{i}.self_attn.q_proj.weight",
            vec![MNH * MHD, MH],
        ),
        (
            "model.layers.{i}.self_attn.k_proj.weight",
            vec![MKV * MHD, MH],
        ),
        (
            "model.layers.{i}.self_attn.v_proj.weight",
            vec![MKV * MHD, MH],
        ),
        (
            "model.layers.{i}.self_attn.o_proj.weight",
            vec![MH, MNH * MHD],
        ),
        ("model.layers.{i}.self_attn.q_norm.weight", vec![MHD]),
        ("model.layers.{i}.self_attn.k_norm.weight", vec![MHD]),
        ("model.layers.{i}.input_layernorm.weight", vec![MH]),
        ("model.layers.{i}.post_attention_layernorm.weight", vec![MH]),
    ]
}

fn dense_mlp(prefix: &str, ffn: usize) -> Vec<(String, Vec<usize>)> {
    vec![
        (format!("{prefix}.gate_proj.weight"), vec![ffn, MH]),
        (format!("{prefix}.up_proj.weight"), vec![ffn, MH]),
        (format!("{prefix}.down_proj.weight"), vec![MH, ffn]),
    ]
}

fn experts(prefix: &str) -> Vec<(String, Vec<usize>)> {
    (0..ME)
        .flat_map(|e| dense_mlp(&format!("{prefix}.experts.{e}"), MEI))
        .collect()
}

fn embed_and_head(mut layers: Vec<(String, Vec<usize>)>) -> Vec<(String, Vec<usize>)> {
    let mut t = named(&[("model.embed_tokens.weight", vec![V, MH])]);
    t.append(&mut layers);
    t.extend(named(&[
        ("model.norm.weight", vec![MH]),
        ("lm_head.weight", vec![V, MH]),
    ]));
    t
}

/// Each FP8 weight followed by its `weight_scale_inv` (one F32 per 128×128 block, edge blocks partial).
fn with_scales(tensors: Vec<(String, Vec<usize>)>) -> Vec<(String, Vec<usize>)> {
    let mut out = Vec::new();
    for (n, s) in tensors {
        let scale = is_fp8_weight(&n, &s).then(|| {
            (
                n.replace(".weight", ".weight_scale_inv"),
                s.iter().map(|d| d.div_ceil(BLOCK)).collect(),
            )
        });
        out.push((n, s));
        out.extend(scale);
    }
    out
}

/// Whether a DeepSeek-V3 tensor is stored in FP8 (the linear weights; not embeddings, head, norms, router).
fn is_fp8_weight(name: &str, shape: &[usize]) -> bool {
    shape.len() == 2
        && name.ends_with(".weight")
        && name.contains("_proj")
        && !name.contains("embed")
        && !name.starts_with("lm_head")
}

fn deepseek3_tensors() -> Vec<(String, Vec<usize>)> {
    let (ql, kvl, nope, rope, vd) = (12, 8, 4, 4, 4);
    let attn = [
        ("q_a_proj.weight", vec![ql, MH]),
        ("q_a_layernorm.weight", vec![ql]),
        ("q_b_proj.weight", vec![MNH * (nope + rope), ql]),
        ("kv_a_proj_with_mqa.weight", vec![kvl + rope, MH]),
        ("kv_a_layernorm.weight", vec![kvl]),
        ("kv_b_proj.weight", vec![MNH * (nope + vd), kvl]),
        ("o_proj.weight", vec![MH, MNH * vd]),
    ];
    let mut layers = Vec::new();
    for i in 0..L {
        let p = format!("model.layers.{i}");
        for (n, s) in &attn {
            layers.push((format!("{p}.self_attn.{n}"), s.clone()));
        }
        if i == 0 {
            // first_k_dense_replace = 1
            layers.extend(dense_mlp(&format!("{p}.mlp"), DSI));
        } else {
            layers.push((format!("{p}.mlp.gate.weight"), vec![ME, MH]));
            layers.push((format!("{p}.mlp.gate.e_score_correction_bias"), vec![ME]));
            layers.extend(experts(&format!("{p}.mlp")));
            layers.extend(dense_mlp(&format!("{p}.mlp.shared_experts"), MEI));
        }
        layers.push((format!("{p}.input_layernorm.weight"), vec![MH]));
        layers.push((format!("{p}.post_attention_layernorm.weight"), vec![MH]));
    }
    with_scales(embed_and_head(layers))
}

fn mcore_families() -> Vec<Family> {
    vec![
        Family {
            dir: "qwen3",
            model: "qwen3",
            dtype: DType::BF16,
            layout: Layout::Safetensors,
            config: mcore_config("qwen3", "Qwen3ForCausalLM"),
            tensors: embed_and_head(per_layer(&{
                let mut l = qwen3_attention();
                l.extend([
                    ("model.layers.{i}.mlp.gate_proj.weight", vec![MI, MH]),
                    ("model.layers.{i}.mlp.up_proj.weight", vec![MI, MH]),
                    ("model.layers.{i}.mlp.down_proj.weight", vec![MH, MI]),
                ]);
                l
            })),
        },
        Family {
            dir: "qwen3_moe",
            model: "qwen3_moe",
            dtype: DType::BF16,
            // shards small enough that the experts of a layer straddle two files
            layout: Layout::SafetensorsShards(6 * 1024),
            config: {
                let mut c = mcore_config("qwen3_moe", "Qwen3MoeForCausalLM");
                c["num_experts"] = json!(ME);
                c["num_experts_per_tok"] = json!(2);
                c["moe_intermediate_size"] = json!(MEI);
                c["decoder_sparse_step"] = json!(1);
                c["mlp_only_layers"] = json!([]);
                c
            },
            tensors: embed_and_head(
                (0..L)
                    .flat_map(|i| {
                        let p = format!("model.layers.{i}");
                        let mut t: Vec<(String, Vec<usize>)> = qwen3_attention()
                            .into_iter()
                            .map(|(n, s)| (n.replace("{i}", &i.to_string()), s))
                            .collect();
                        t.push((format!("{p}.mlp.gate.weight"), vec![ME, MH]));
                        t.extend(experts(&format!("{p}.mlp")));
                        t
                    })
                    .collect(),
            ),
        },
        Family {
            dir: "glm4",
            model: "glm4",
            dtype: DType::BF16,
            layout: Layout::Safetensors,
            config: {
                let mut c = mcore_config("glm4", "Glm4ForCausalLM");
                c["attention_bias"] = json!(true);
                c["partial_rotary_factor"] = json!(0.5);
                c
            },
            tensors: embed_and_head(per_layer(&[
                (
                    "model.layers.{i}.self_attn.q_proj.weight",
                    vec![MNH * MHD, MH],
                ),
                ("model.layers.{i}.self_attn.q_proj.bias", vec![MNH * MHD]),
                (
                    "model.layers.{i}.self_attn.k_proj.weight",
                    vec![MKV * MHD, MH],
                ),
                ("model.layers.{i}.self_attn.k_proj.bias", vec![MKV * MHD]),
                (
                    "model.layers.{i}.self_attn.v_proj.weight",
                    vec![MKV * MHD, MH],
                ),
                ("model.layers.{i}.self_attn.v_proj.bias", vec![MKV * MHD]),
                (
                    "model.layers.{i}.self_attn.o_proj.weight",
                    vec![MH, MNH * MHD],
                ),
                ("model.layers.{i}.mlp.gate_up_proj.weight", vec![2 * MI, MH]),
                ("model.layers.{i}.mlp.down_proj.weight", vec![MH, MI]),
                ("model.layers.{i}.input_layernorm.weight", vec![MH]),
                ("model.layers.{i}.post_self_attn_layernorm.weight", vec![MH]),
                ("model.layers.{i}.post_attention_layernorm.weight", vec![MH]),
                ("model.layers.{i}.post_mlp_layernorm.weight", vec![MH]),
            ])),
        },
        Family {
            dir: "deepseek3",
            model: "deepseek3",
            // FP8 e4m3 linear weights with F32 block scales; everything else bf16 (see `tensor_dtype`)
            dtype: DType::F8E4M3,
            layout: Layout::SafetensorsShards(8 * 1024),
            config: json!({"architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3",
                "hidden_size": MH, "num_attention_heads": MNH, "num_key_value_heads": MNH, "num_hidden_layers": L,
                "intermediate_size": DSI, "moe_intermediate_size": MEI, "n_routed_experts": ME,
                "n_shared_experts": 1, "num_experts_per_tok": 2, "first_k_dense_replace": 1, "n_group": 1,
                "topk_group": 1, "q_lora_rank": 12, "kv_lora_rank": 8, "qk_nope_head_dim": 4,
                "qk_rope_head_dim": 4, "v_head_dim": 4, "head_dim": 4, "num_nextn_predict_layers": 0,
                "vocab_size": V, "tie_word_embeddings": false, "torch_dtype": "bfloat16",
                "quantization_config": {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                                        "weight_block_size": [BLOCK, BLOCK]}}),
            tensors: deepseek3_tensors(),
        },
        Family {
            dir: "telechat2",
            model: "telechat2",
            dtype: DType::BF16,
            layout: Layout::Torch("pytorch_model.bin"),
            config: json!({"architectures": ["Telechat2ForCausalLM"], "model_type": "telechat2",
                           "hidden_size": MH, "n_head": MNH, "num_key_value_heads": MKV, "n_layer": L,
                           "ffn_hidden_size": MI, "vocab_size": V, "tie_word_embeddings": false,
                           "torch_dtype": "bfloat16"}),
            tensors: {
                let mut t = named(&[("transformer.word_embeddings.weight", vec![V, MH])]);
                t.extend(per_layer(&[
                    ("transformer.h.{i}.input_layernorm.weight", vec![MH]),
                    (
                        "transformer.h.{i}.self_attention.query.weight",
                        vec![MNH * MHD, MH],
                    ),
                    (
                        "transformer.h.{i}.self_attention.key.weight",
                        vec![MKV * MHD, MH],
                    ),
                    (
                        "transformer.h.{i}.self_attention.value.weight",
                        vec![MKV * MHD, MH],
                    ),
                    (
                        "transformer.h.{i}.self_attention.dense.weight",
                        vec![MH, MNH * MHD],
                    ),
                    ("transformer.h.{i}.self_attention.dense.bias", vec![MH]),
                    (
                        "transformer.h.{i}.post_attention_layernorm.weight",
                        vec![MH],
                    ),
                    ("transformer.h.{i}.mlp.gate_proj.weight", vec![MI, MH]),
                    ("transformer.h.{i}.mlp.up_proj.weight", vec![MI, MH]),
                    ("transformer.h.{i}.mlp.down_proj.weight", vec![MH, MI]),
                    ("transformer.h.{i}.mlp.down_proj.bias", vec![MH]),
                ]));
                t.extend(named(&[
                    ("transformer.ln_f.weight", vec![MH]),
                    ("lm_head.weight", vec![V, MH]),
                ]));
                t
            },
        },
    ]
}

/// The dtype a tensor of `fam` is written in: a family in `F8E4M3` is an FP8 checkpoint (DeepSeek-V3 style: FP8
/// linear weights, F32 `weight_scale_inv` and router bias, bf16 for the rest).
fn tensor_dtype(fam: &Family, name: &str, shape: &[usize]) -> DType {
    if fam.dtype != DType::F8E4M3 {
        fam.dtype
    } else if name.ends_with("weight_scale_inv") || name.ends_with("e_score_correction_bias") {
        DType::F32
    } else if is_fp8_weight(name, shape) {
        DType::F8E4M3
    } else {
        DType::BF16
    }
}

/// Where the zoo keeps a family's MindSpore side.
fn ms_file(fam: &Family) -> &'static str {
    match fam.dir {
        // MindSpore-style safetensors (metadata format "ms"), as MindFormers 2.x loads them
        "qwen3" | "qwen3_moe" | "glm4" | "deepseek3" => "model.safetensors",
        _ => "model.ckpt",
    }
}

fn families() -> Vec<Family> {
    let mut f = first_release();
    f.extend(mcore_families());
    f
}

fn first_release() -> Vec<Family> {
    let hd = H / NH;
    vec![
        Family {
            dir: "llama",
            model: "llama",
            dtype: DType::F16,
            layout: Layout::TorchShards(8 * 1024),
            config: llama_config("llama"),
            tensors: llama_like(false),
        },
        Family {
            dir: "skywork",
            model: "skywork",
            dtype: DType::BF16,
            layout: Layout::Safetensors,
            config: llama_config("skywork"),
            tensors: llama_like(false),
        },
        Family {
            dir: "internlm",
            model: "internlm",
            dtype: DType::F32,
            layout: Layout::Torch("pytorch_model.bin"),
            config: llama_config("internlm"),
            tensors: llama_like(true),
        },
        Family {
            dir: "baichuan2",
            model: "baichuan",
            dtype: DType::F16,
            layout: Layout::Torch("pytorch_model.bin"),
            config: llama_config("baichuan"),
            tensors: {
                let mut t = named(&[("model.embed_tokens.weight", vec![V, H])]);
                t.extend(per_layer(&[
                    ("model.layers.{i}.self_attn.W_pack.weight", vec![3 * H, H]),
                    ("model.layers.{i}.self_attn.o_proj.weight", vec![H, H]),
                    ("model.layers.{i}.mlp.gate_proj.weight", vec![I, H]),
                    ("model.layers.{i}.mlp.down_proj.weight", vec![H, I]),
                    ("model.layers.{i}.mlp.up_proj.weight", vec![I, H]),
                    ("model.layers.{i}.input_layernorm.weight", vec![H]),
                    ("model.layers.{i}.post_attention_layernorm.weight", vec![H]),
                ]));
                t.extend(named(&[
                    ("model.norm.weight", vec![H]),
                    ("lm_head.weight", vec![V, H]),
                ]));
                t
            },
        },
        Family {
            dir: "qwen",
            model: "qwen",
            dtype: DType::BF16,
            layout: Layout::Safetensors,
            config: json!({"model_type": "qwen", "hidden_size": H, "num_attention_heads": NH,
                           "num_hidden_layers": L, "intermediate_size": 2 * I, "vocab_size": V}),
            tensors: {
                let mut t = named(&[("transformer.wte.weight", vec![V, H])]);
                t.extend(per_layer(&[
                    ("transformer.h.{i}.ln_1.weight", vec![H]),
                    ("transformer.h.{i}.attn.c_attn.weight", vec![3 * H, H]),
                    ("transformer.h.{i}.attn.c_attn.bias", vec![3 * H]),
                    ("transformer.h.{i}.attn.c_proj.weight", vec![H, H]),
                    ("transformer.h.{i}.ln_2.weight", vec![H]),
                    ("transformer.h.{i}.mlp.w1.weight", vec![I, H]),
                    ("transformer.h.{i}.mlp.w2.weight", vec![I, H]),
                    ("transformer.h.{i}.mlp.c_proj.weight", vec![H, I]),
                ]));
                t.extend(named(&[
                    ("transformer.ln_f.weight", vec![H]),
                    ("lm_head.weight", vec![V, H]),
                ]));
                t
            },
        },
        Family {
            dir: "glm",
            model: "glm",
            dtype: DType::F16,
            layout: Layout::Torch("pytorch_model.bin"),
            config: json!({"model_type": "chatglm", "hidden_size": H, "num_attention_heads": NH,
                           "num_layers": L, "inner_hidden_size": 4 * H, "vocab_size": V}),
            tensors: {
                let mut t = named(&[("transformer.word_embeddings.weight", vec![V, H])]);
                t.extend(per_layer(&[
                    ("transformer.layers.{i}.input_layernorm.weight", vec![H]),
                    ("transformer.layers.{i}.input_layernorm.bias", vec![H]),
                    (
                        "transformer.layers.{i}.attention.query_key_value.weight",
                        vec![3 * H, H],
                    ),
                    (
                        "transformer.layers.{i}.attention.query_key_value.bias",
                        vec![3 * H],
                    ),
                    ("transformer.layers.{i}.attention.dense.weight", vec![H, H]),
                    ("transformer.layers.{i}.attention.dense.bias", vec![H]),
                    (
                        "transformer.layers.{i}.post_attention_layernorm.weight",
                        vec![H],
                    ),
                    (
                        "transformer.layers.{i}.post_attention_layernorm.bias",
                        vec![H],
                    ),
                    (
                        "transformer.layers.{i}.mlp.dense_h_to_4h.weight",
                        vec![4 * H, H],
                    ),
                    ("transformer.layers.{i}.mlp.dense_h_to_4h.bias", vec![4 * H]),
                    (
                        "transformer.layers.{i}.mlp.dense_4h_to_h.weight",
                        vec![H, 4 * H],
                    ),
                    ("transformer.layers.{i}.mlp.dense_4h_to_h.bias", vec![H]),
                ]));
                t.extend(named(&[
                    ("transformer.final_layernorm.weight", vec![H]),
                    ("transformer.final_layernorm.bias", vec![H]),
                    ("lm_head.weight", vec![V, H]),
                ]));
                t
            },
        },
        Family {
            dir: "gpt2",
            model: "gpt",
            dtype: DType::F32,
            layout: Layout::Torch("pytorch_model.bin"),
            config: json!({"model_type": "gpt2", "n_embd": H, "n_head": NH, "n_layer": L,
                           "n_positions": P, "vocab_size": V}),
            tensors: {
                let mut t = named(&[("wte.weight", vec![V, H]), ("wpe.weight", vec![P, H])]);
                t.extend(per_layer(&[
                    ("h.{i}.ln_1.weight", vec![H]),
                    ("h.{i}.ln_1.bias", vec![H]),
                    ("h.{i}.attn.c_attn.weight", vec![H, 3 * H]),
                    ("h.{i}.attn.c_attn.bias", vec![3 * H]),
                    ("h.{i}.attn.c_proj.weight", vec![H, H]),
                    ("h.{i}.attn.c_proj.bias", vec![H]),
                    ("h.{i}.ln_2.weight", vec![H]),
                    ("h.{i}.ln_2.bias", vec![H]),
                    ("h.{i}.mlp.c_fc.weight", vec![H, 4 * H]),
                    ("h.{i}.mlp.c_fc.bias", vec![4 * H]),
                    ("h.{i}.mlp.c_proj.weight", vec![4 * H, H]),
                    ("h.{i}.mlp.c_proj.bias", vec![H]),
                ]));
                t.extend(named(&[("ln_f.weight", vec![H]), ("ln_f.bias", vec![H])]));
                t
            },
        },
        Family {
            dir: "bloom",
            model: "bloom",
            dtype: DType::F16,
            layout: Layout::Torch("pytorch_model.bin"),
            config: json!({"model_type": "bloom", "hidden_size": H, "n_head": NH, "n_layer": L, "vocab_size": V}),
            tensors: {
                let mut t = named(&[
                    ("word_embeddings.weight", vec![V, H]),
                    ("word_embeddings_layernorm.weight", vec![H]),
                    ("word_embeddings_layernorm.bias", vec![H]),
                ]);
                t.extend(per_layer(&[
                    ("h.{i}.input_layernorm.weight", vec![H]),
                    ("h.{i}.input_layernorm.bias", vec![H]),
                    (
                        "h.{i}.self_attention.query_key_value.weight",
                        vec![3 * H, H],
                    ),
                    ("h.{i}.self_attention.query_key_value.bias", vec![3 * H]),
                    ("h.{i}.self_attention.dense.weight", vec![H, H]),
                    ("h.{i}.self_attention.dense.bias", vec![H]),
                    ("h.{i}.post_attention_layernorm.weight", vec![H]),
                    ("h.{i}.post_attention_layernorm.bias", vec![H]),
                    ("h.{i}.mlp.dense_h_to_4h.weight", vec![4 * H, H]),
                    ("h.{i}.mlp.dense_h_to_4h.bias", vec![4 * H]),
                    ("h.{i}.mlp.dense_4h_to_h.weight", vec![H, 4 * H]),
                    ("h.{i}.mlp.dense_4h_to_h.bias", vec![H]),
                ]));
                t.extend(named(&[("ln_f.weight", vec![H]), ("ln_f.bias", vec![H])]));
                t
            },
        },
        Family {
            dir: "wizardcoder",
            model: "wizardcoder",
            dtype: DType::F32,
            layout: Layout::Torch("pytorch_model.bin"),
            config: json!({"model_type": "gpt_bigcode", "n_embd": H, "n_head": NH, "n_layer": L,
                           "multi_query": true, "n_positions": P, "vocab_size": V}),
            tensors: {
                let mut t = named(&[
                    ("transformer.wte.weight", vec![V, H]),
                    ("transformer.wpe.weight", vec![P, H]),
                ]);
                t.extend(per_layer(&[
                    ("transformer.h.{i}.ln_1.weight", vec![H]),
                    ("transformer.h.{i}.ln_1.bias", vec![H]),
                    ("transformer.h.{i}.attn.c_attn.weight", vec![H + 2 * hd, H]),
                    ("transformer.h.{i}.attn.c_attn.bias", vec![H + 2 * hd]),
                    ("transformer.h.{i}.attn.c_proj.weight", vec![H, H]),
                    ("transformer.h.{i}.attn.c_proj.bias", vec![H]),
                    ("transformer.h.{i}.ln_2.weight", vec![H]),
                    ("transformer.h.{i}.ln_2.bias", vec![H]),
                    ("transformer.h.{i}.mlp.c_fc.weight", vec![4 * H, H]),
                    ("transformer.h.{i}.mlp.c_fc.bias", vec![4 * H]),
                    ("transformer.h.{i}.mlp.c_proj.weight", vec![H, 4 * H]),
                    ("transformer.h.{i}.mlp.c_proj.bias", vec![H]),
                ]));
                t.extend(named(&[
                    ("transformer.ln_f.weight", vec![H]),
                    ("transformer.ln_f.bias", vec![H]),
                ]));
                // lm_head is tied to wte and omitted, as transformers saves GPTBigCode: the converter synthesises it.
                t
            },
        },
        Family {
            dir: "blip2",
            model: "blip",
            dtype: DType::F32,
            layout: Layout::Torch("blip2_pretrained.pth"),
            config: json!({"model_type": "blip2_qformer_lavis",
                           "vision": {"embed_dim": H, "depth": 1, "num_heads": NH, "mlp_hidden": 2 * H},
                           "qformer": {"hidden_size": H, "num_hidden_layers": 1, "num_attention_heads": NH}}),
            tensors: named(&[
                ("query_tokens", vec![1, 4, H]),
                ("visual_encoder.cls_token", vec![1, 1, H]),
                ("visual_encoder.pos_embed", vec![1, 5, H]),
                ("visual_encoder.patch_embed.proj.weight", vec![H, 3, 4, 4]),
                ("visual_encoder.patch_embed.proj.bias", vec![H]),
                ("visual_encoder.blocks.0.norm1.weight", vec![H]),
                ("visual_encoder.blocks.0.norm1.bias", vec![H]),
                ("visual_encoder.blocks.0.attn.q_bias", vec![H]),
                ("visual_encoder.blocks.0.attn.v_bias", vec![H]),
                ("visual_encoder.blocks.0.attn.qkv.weight", vec![3 * H, H]),
                ("visual_encoder.blocks.0.attn.proj.weight", vec![H, H]),
                ("visual_encoder.blocks.0.attn.proj.bias", vec![H]),
                ("visual_encoder.blocks.0.norm2.weight", vec![H]),
                ("visual_encoder.blocks.0.norm2.bias", vec![H]),
                ("visual_encoder.blocks.0.mlp.fc1.weight", vec![2 * H, H]),
                ("visual_encoder.blocks.0.mlp.fc1.bias", vec![2 * H]),
                ("visual_encoder.blocks.0.mlp.fc2.weight", vec![H, 2 * H]),
                ("visual_encoder.blocks.0.mlp.fc2.bias", vec![H]),
                ("ln_vision.weight", vec![H]),
                ("ln_vision.bias", vec![H]),
                ("Qformer.bert.embeddings.word_embeddings.weight", vec![V, H]),
                (
                    "Qformer.bert.embeddings.position_embeddings.weight",
                    vec![P, H],
                ),
                ("Qformer.bert.embeddings.LayerNorm.weight", vec![H]),
                ("Qformer.bert.embeddings.LayerNorm.bias", vec![H]),
                (
                    "Qformer.bert.encoder.layer.0.attention.self.query.weight",
                    vec![H, H],
                ),
                (
                    "Qformer.bert.encoder.layer.0.attention.self.query.bias",
                    vec![H],
                ),
                (
                    "Qformer.bert.encoder.layer.0.attention.output.dense.weight",
                    vec![H, H],
                ),
                (
                    "Qformer.bert.encoder.layer.0.attention.output.LayerNorm.weight",
                    vec![H],
                ),
                (
                    "Qformer.bert.encoder.layer.0.intermediate.dense.weight",
                    vec![2 * H, H],
                ),
                (
                    "Qformer.bert.encoder.layer.0.output.dense.weight",
                    vec![H, 2 * H],
                ),
                ("Qformer.cls.predictions.bias", vec![V]),
                ("vision_proj.weight", vec![H, H]),
                ("text_proj.weight", vec![H, H]),
                ("itm_head.weight", vec![2, H]),
                ("itm_head.bias", vec![2]),
            ]),
        },
    ]
}

/// Deterministic pseudo-random values (xorshift), small and varied, as `dtype` bytes.
fn values(seed: u64, n: usize, dtype: DType) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(n * dtype.size());
    for _ in 0..n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let v = ((x >> 40) as f32 / (1u64 << 24) as f32) - 0.5;
        match dtype {
            // any e4m3fn code but the two NaNs (S.1111.111)
            DType::F8E4M3 => out.push(match (x >> 40) as u8 {
                b if b & 0x7f == 0x7f => b ^ 1,
                b => b,
            }),
            DType::F32 => out.extend_from_slice(&v.to_le_bytes()),
            DType::F16 => out.extend_from_slice(&half::f16::from_f32(v).to_le_bytes()),
            DType::BF16 => out.extend_from_slice(&half::bf16::from_f32(v).to_le_bytes()),
            other => panic!("zoo uses float dtypes only, not {other}"),
        }
    }
    out
}

/// FP8 block scales: positive F32 around 1/64, one per block.
fn scales(seed: u64, n: usize) -> Vec<u8> {
    values(seed, n, DType::F32)
        .chunks(4)
        .flat_map(|c| {
            let v = f32::from_le_bytes(c.try_into().unwrap());
            ((v + 1.0) / 64.0).to_le_bytes()
        })
        .collect()
}

fn write(fam: &Family, dir: &Path) -> Result<(), Box<dyn std::error::Error>> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string_pretty(&fam.config)? + "\n",
    )?;
    let outs: Vec<OutTensor> = fam
        .tensors
        .iter()
        .map(|(n, s)| OutTensor {
            info: TensorInfo::new(n.clone(), tensor_dtype(fam, n, s), s.clone()),
            tied_to: None,
        })
        .collect();
    let mut opts = WriteOptions::default();
    let mut writer = match fam.layout {
        Layout::Torch(name) => {
            formats::create_writer(OutputFormat::Torch, &dir.join(name), &outs, &opts)?
        }
        Layout::TorchShards(max) => {
            opts.max_shard_size = Some(max);
            formats::sharded::writer(OutputFormat::Torch, dir, &outs, &opts)?
        }
        Layout::SafetensorsShards(max) => {
            opts.max_shard_size = Some(max);
            opts.metadata = vec![("format".into(), "pt".into())];
            formats::sharded::writer(OutputFormat::Safetensors, dir, &outs, &opts)?
        }
        Layout::Safetensors => {
            opts.metadata = vec![("format".into(), "pt".into())];
            formats::create_writer(
                OutputFormat::Safetensors,
                &dir.join("model.safetensors"),
                &outs,
                &opts,
            )?
        }
    };
    for i in writer.order() {
        let t = &outs[i].info;
        let bytes = if t.name.ends_with("weight_scale_inv") {
            scales(i as u64 + 1, t.numel())
        } else {
            values(i as u64 + 1, t.numel(), t.dtype)
        };
        writer.write(i, &bytes)?;
    }
    writer.finish()?;
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("examples/zoo"));
    for fam in families() {
        let hf = root.join(fam.dir).join("hf");
        if hf.exists() {
            std::fs::remove_dir_all(&hf)?;
        }
        write(&fam, &hf)?;
        // The MindSpore side of the zoo: this project's own forward conversion, with the config beside it.
        let ms = root.join(fam.dir).join("mindspore");
        std::fs::create_dir_all(&ms)?;
        std::fs::copy(hf.join("config.json"), ms.join("config.json"))?;
        let spec = JobSpec {
            model: Some(fam.model.to_string()),
            input: hf.clone(),
            output: ms.join(ms_file(&fam)),
            ..JobSpec::default()
        };
        let cancel = AtomicBool::new(false);
        let ctl = RunControl {
            cancel: &cancel,
            progress: &|_| {},
            hash: false,
        };
        convert::run(&spec, &ctl)
            .map_err(|e| format!("{}: {}", fam.dir, convert::error_chain(&e)))?;
        println!("{}: {}", fam.dir, hf.display());
    }
    Ok(())
}

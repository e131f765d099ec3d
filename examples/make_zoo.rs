//! Make the bundled example zoo: tiny checkpoints of all ten families in HF layout (config.json + weights), plus
//! a MindSpore `.ckpt` of each (converted with this project), written with the project's own writers.
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

fn families() -> Vec<Family> {
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
            DType::F32 => out.extend_from_slice(&v.to_le_bytes()),
            DType::F16 => out.extend_from_slice(&half::f16::from_f32(v).to_le_bytes()),
            DType::BF16 => out.extend_from_slice(&half::bf16::from_f32(v).to_le_bytes()),
            other => panic!("zoo uses float dtypes only, not {other}"),
        }
    }
    out
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
            info: TensorInfo::new(n.clone(), fam.dtype, s.clone()),
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
        writer.write(i, &values(i as u64 + 1, t.numel(), t.dtype))?;
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
            output: ms.join("model.ckpt"),
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

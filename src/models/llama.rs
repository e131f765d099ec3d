//! `--model llama`: LLaMA / Llama-2 (`LlamaForCausalLM`), spec §4. Pure renames, no tensor ops; GQA k/v shapes pass
//! through. The same table serves internlm (q/k/v/o biases via `{s}`), skywork, and, behind its W_pack rule, baichuan.
//!
//! Deviations:
//! - Fails closed: a name outside the table is an error (the reference passes any unmatched name through unchanged).
//! - Reverse drops MindSpore training state (`adam_m.*`, `adam_v.*`, `global_step`, …) by the named rules
//!   `optimizer-state` / `training-scalar` instead of renaming it into the HF state dict.
//! - The dtype is kept (the caller's `--dtype` applies); the reference's from_pretrained path upcasts to fp32.
//! - The layers present must be `0..n` without gaps and agree with `layers` (config.json `num_hidden_layers` or the
//!   flag) when it is known: a single shard of a sharded model is an error, not half a model.
//! - `rotary_emb.inv_freq` buffers pass through when present and are never synthesised (transformers ≥ 4.32 omits
//!   them; the reference, under 4.31, computes them when absent).

use crate::models::rules::{map, Rule};
use crate::models::Family;

/// The llama table: HF `LlamaForCausalLM` names ⇄ MindFormers names (shared by internlm, skywork, baichuan).
pub(crate) const RULES: &[Rule] = &[
    map("model.embed_tokens.weight", "model.tok_embeddings.embedding_weight"),
    map("model.layers.{i}.self_attn.q_proj.{s}", "model.layers.{i}.attention.wq.{s}"),
    map("model.layers.{i}.self_attn.k_proj.{s}", "model.layers.{i}.attention.wk.{s}"),
    map("model.layers.{i}.self_attn.v_proj.{s}", "model.layers.{i}.attention.wv.{s}"),
    map("model.layers.{i}.self_attn.o_proj.{s}", "model.layers.{i}.attention.wo.{s}"),
    map("model.layers.{i}.mlp.gate_proj.{s}", "model.layers.{i}.feed_forward.w1.{s}"),
    map("model.layers.{i}.mlp.down_proj.{s}", "model.layers.{i}.feed_forward.w2.{s}"),
    map("model.layers.{i}.mlp.up_proj.{s}", "model.layers.{i}.feed_forward.w3.{s}"),
    map("model.layers.{i}.input_layernorm.weight", "model.layers.{i}.attention_norm.weight"),
    map("model.layers.{i}.post_attention_layernorm.weight", "model.layers.{i}.ffn_norm.weight"),
    map("model.norm.weight", "model.norm_out.weight"),
    map("lm_head.weight", "lm_head.weight"),
    map("{*}.rotary_emb.inv_freq", "{*}.rotary_emb.inv_freq"),
];

/// Embedding names of the llama layout, HF and MindSpore spellings.
pub(crate) const EMBEDDINGS: &[&str] = &["model.embed_tokens.weight", "model.tok_embeddings.embedding_weight"];

pub const FAMILY: Family = Family {
    name: "llama",
    description: "LLaMA/Llama-2 (LlamaForCausalLM): renames only (GQA ok); needs no hyper-parameters",
    rules: &[RULES],
    embeddings: EMBEDDINGS,
    ..Family::BASE
};

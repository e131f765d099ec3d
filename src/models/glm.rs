//! `--model glm`: ChatGLM-6B v1 (remote code), spec §9. Layernorm `weight`/`bias` → `gamma`/`beta`,
//! `word_embeddings.weight` → `embedding_table`; everything else keeps its name. No transposes, no q/k/v split.
//! `input_layernorm` gamma/beta are pinned to fp16 in the forward direction (cast when the source is not fp16; a
//! global `--dtype` leaves them), as the reference's `.half()` does.
//!
//! Deviations:
//! - The rest of the model keeps its source dtype: the reference `.half()`s the whole model (lossy for fp32/bf16
//!   sources even with `--dtype fp32`); here `--dtype` decides.
//! - Fails closed; reverse drops MindSpore training state by named rules; the layers present must agree with
//!   `layers` (config.json `num_layers`) when known.

use crate::models::rules::{map, Rule};
use crate::models::Family;
use crate::tensor::DType;

const RULES: &[Rule] = &[
    map("transformer.word_embeddings.weight", "transformer.word_embeddings.embedding_table"),
    map("transformer.layers.{i}.input_layernorm.weight", "transformer.layers.{i}.input_layernorm.gamma"),
    map("transformer.layers.{i}.input_layernorm.bias", "transformer.layers.{i}.input_layernorm.beta"),
    map(
        "transformer.layers.{i}.post_attention_layernorm.weight",
        "transformer.layers.{i}.post_attention_layernorm.gamma",
    ),
    map(
        "transformer.layers.{i}.post_attention_layernorm.bias",
        "transformer.layers.{i}.post_attention_layernorm.beta",
    ),
    map("transformer.final_layernorm.weight", "transformer.final_layernorm.gamma"),
    map("transformer.final_layernorm.bias", "transformer.final_layernorm.beta"),
    map(
        "transformer.layers.{i}.attention.query_key_value.{s}",
        "transformer.layers.{i}.attention.query_key_value.{s}",
    ),
    map("transformer.layers.{i}.attention.dense.{s}", "transformer.layers.{i}.attention.dense.{s}"),
    map("transformer.layers.{i}.mlp.dense_h_to_4h.{s}", "transformer.layers.{i}.mlp.dense_h_to_4h.{s}"),
    map("transformer.layers.{i}.mlp.dense_4h_to_h.{s}", "transformer.layers.{i}.mlp.dense_4h_to_h.{s}"),
    map("lm_head.weight", "lm_head.weight"),
    map("{*}.rotary_emb.inv_freq", "{*}.rotary_emb.inv_freq"),
];

pub const FAMILY: Family = Family {
    name: "glm",
    description: "ChatGLM-6B v1: layernorm gamma/beta + embedding_table renames, input_layernorm pinned to fp16; needs nothing",
    rules: &[RULES],
    embeddings: &["transformer.word_embeddings.weight", "transformer.word_embeddings.embedding_table"],
    dtype_pins: &[("transformer.layers.{i}.input_layernorm.{g:gamma|beta}", DType::F16)],
    ..Family::BASE
};

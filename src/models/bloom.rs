//! `--model bloom`: BLOOM, spec §12. The fused `self_attention.query_key_value` weight `[3H, …]` and bias `[3H]` are
//! head-interleaved: reshape `(n_head, 3, head_dim, …)`, take index k of dim 1, reshape `[H, …]` → `dense{k+1}`.
//! `self_attention.dense`, `mlp.dense_h_to_4h`, `mlp.dense_4h_to_h` weights are transposed. Names may carry the
//! `transformer.` prefix (BloomForCausalLM); the prefix is kept, except `lm_head.*` ⇄ `head.*`, which never has it.
//!
//! Deviations:
//! - n_head (and hidden_size, when known) come from the hyper-parameters (config.json `n_head`, `n_embed` /
//!   `hidden_size`, or flags): no silent 32/4096 defaults. An unknown n_head is an error when a fused q/k/v is
//!   present; rows not divisible by 3·n_head, or ≠ 3·hidden_size, are errors (a wrong n_head silently corrupts in
//!   the reference).
//! - Reverse accepts `transformer.`-prefixed checkpoints (the reference crashes) and restores the prefixed HF names
//!   (`transformer.h.N…`, `transformer.word_embeddings…`, with `head.weight` → `lm_head.weight`).
//! - Fails closed; reverse drops MindSpore training state by named rules; the layers present must agree with
//!   `layers` (config.json `n_layer`) when known.

use crate::models::rules::{map, split, transpose, Op, Rule};
use crate::models::{Family, Hyper};

macro_rules! p {
    ($s:literal) => {
        concat!("{p:|transformer.}", $s)
    };
}

const RULES: &[Rule] = &[
    map(p!("word_embeddings.weight"), p!("embedding.word_embedding.embedding_table")),
    map(p!("word_embeddings_layernorm.weight"), p!("embedding.norm.gamma")),
    map(p!("word_embeddings_layernorm.bias"), p!("embedding.norm.beta")),
    map(p!("ln_f.weight"), p!("ln_f.gamma")),
    map(p!("ln_f.bias"), p!("ln_f.beta")),
    map("lm_head.{s}", "head.{s}"),
    map(p!("h.{i}.input_layernorm.weight"), p!("blocks.{i}.layernorm1.gamma")),
    map(p!("h.{i}.input_layernorm.bias"), p!("blocks.{i}.layernorm1.beta")),
    // rows `(n_head, 3, head_dim)`: heads grouped with groups = n_head (no n_kv_head)
    split(
        p!("h.{i}.self_attention.query_key_value.{s}"),
        &[
            p!("blocks.{i}.attention.dense1.{s}"),
            p!("blocks.{i}.attention.dense2.{s}"),
            p!("blocks.{i}.attention.dense3.{s}"),
        ],
        Op::GROUPED_HEADS,
    ),
    transpose(p!("h.{i}.self_attention.dense.weight"), p!("blocks.{i}.attention.projection.weight")),
    map(p!("h.{i}.self_attention.dense.bias"), p!("blocks.{i}.attention.projection.bias")),
    map(p!("h.{i}.post_attention_layernorm.weight"), p!("blocks.{i}.layernorm2.gamma")),
    map(p!("h.{i}.post_attention_layernorm.bias"), p!("blocks.{i}.layernorm2.beta")),
    transpose(p!("h.{i}.mlp.dense_h_to_4h.weight"), p!("blocks.{i}.output.mapping.weight")),
    map(p!("h.{i}.mlp.dense_h_to_4h.bias"), p!("blocks.{i}.output.mapping.bias")),
    transpose(p!("h.{i}.mlp.dense_4h_to_h.weight"), p!("blocks.{i}.output.projection.weight")),
    map(p!("h.{i}.mlp.dense_4h_to_h.bias"), p!("blocks.{i}.output.projection.bias")),
];

pub const FAMILY: Family = Family {
    name: "bloom",
    description: "BLOOM (BloomModel or BloomForCausalLM names): head-interleaved q/k/v split, MLP/dense transposed; needs n_head (config.json or --n_head)",
    rules: &[RULES],
    needs: &[Hyper::NHead],
    embeddings: &[p!("word_embeddings.weight"), p!("embedding.word_embedding.embedding_table")],
    ..Family::BASE
};

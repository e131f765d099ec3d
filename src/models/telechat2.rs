//! `--model telechat2`: TeleChat2 (`transformer.h.{i}`) ⇄ mcore names: `query`/`key`/`value` fused per KV group
//! into `linear_qkv`, `dense` (weight and bias) → `linear_proj`, gate/up → `linear_fc1` (MLP layout), `down_proj`
//! (weight and bias) → `linear_fc2`. Real TeleChat2 checkpoints store a fused `key_value`: the 2.1.0 mapping has no
//! rule for it and neither do we (fails closed, naming the tensor).

use crate::models::qwen2::GQA_NEEDS;
use crate::models::rules::{fuse, map, Op, Rule};
use crate::models::{Family, Generation};

const RULES: &[Rule] = &[
    map("transformer.word_embeddings.weight", "embedding.word_embeddings.weight"),
    map("transformer.ln_f.weight", "decoder.final_layernorm.weight"),
    map("lm_head.weight", "output_layer.weight"),
    map(
        "transformer.h.{i}.input_layernorm.weight",
        "decoder.layers.{i}.input_layernorm.weight",
    ),
    fuse(
        &[
            "transformer.h.{i}.self_attention.query.{s}",
            "transformer.h.{i}.self_attention.key.{s}",
            "transformer.h.{i}.self_attention.value.{s}",
        ],
        "decoder.layers.{i}.self_attention.linear_qkv.{s}",
        Op::GROUPED_HEADS,
    ),
    map(
        "transformer.h.{i}.self_attention.dense.{s}",
        "decoder.layers.{i}.self_attention.linear_proj.{s}",
    ),
    map(
        "transformer.h.{i}.post_attention_layernorm.weight",
        "decoder.layers.{i}.pre_mlp_layernorm.weight",
    ),
    fuse(
        &[
            "transformer.h.{i}.mlp.gate_proj.weight",
            "transformer.h.{i}.mlp.up_proj.weight",
        ],
        "decoder.layers.{i}.mlp.linear_fc1.weight",
        Op::GATED_MLP,
    ),
    map(
        "transformer.h.{i}.mlp.down_proj.{s}",
        "decoder.layers.{i}.mlp.linear_fc2.{s}",
    ),
];

pub const FAMILY: Family = Family {
    name: "telechat2",
    description: "TeleChat2 (transformer.h.N) → mcore: query/key/value per KV group, dense/down_proj biases kept; needs n_head, n_kv_head",
    generation: Generation::Mcore,
    rules: &[RULES],
    needs: GQA_NEEDS,
    embeddings: &["transformer.word_embeddings.weight", "embedding.word_embeddings.weight"],
    ..Family::BASE
};

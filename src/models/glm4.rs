//! `--model glm4`: GLM-4 (`Glm4ForCausalLM`) ⇄ mcore names: q/k/v(+bias) fused per KV group; HF's fused
//! `mlp.gate_up_proj` (`[gate ‖ up]` halves) re-laid out into `linear_fc1` in the MLP layout (a rename for
//! `--mlp-layout contiguous`); GLM-4's extra `post_self_attn_layernorm` / `post_mlp_layernorm` keep their names under
//! `decoder.layers.{i}.` (what the reference's `convert_name` yields).

use crate::models::qwen2::{ATTENTION, ENDS, GQA_NEEDS};
use crate::models::rules::{map, one, Op, Rule};
use crate::models::{Family, Generation};

const RULES: &[Rule] = &[
    one(
        "model.layers.{i}.mlp.gate_up_proj.weight",
        "decoder.layers.{i}.mlp.linear_fc1.weight",
        Op::GATED_MLP_FROM_HALVES,
    ),
    map(
        "model.layers.{i}.mlp.down_proj.weight",
        "decoder.layers.{i}.mlp.linear_fc2.weight",
    ),
    map(
        "model.layers.{i}.post_self_attn_layernorm.weight",
        "decoder.layers.{i}.post_self_attn_layernorm.weight",
    ),
    map(
        "model.layers.{i}.post_mlp_layernorm.weight",
        "decoder.layers.{i}.post_mlp_layernorm.weight",
    ),
];

pub const FAMILY: Family = Family {
    name: "glm4",
    description: "GLM-4 (Glm4ForCausalLM) → mcore: q/k/v(+bias) per KV group, gate_up_proj → linear_fc1 (--mlp-layout), extra norms kept; needs n_head, n_kv_head",
    generation: Generation::Mcore,
    rules: &[ENDS, ATTENTION, RULES],
    needs: GQA_NEEDS,
    embeddings: &["model.embed_tokens.weight", "embedding.word_embeddings.weight"],
    ..Family::BASE
};

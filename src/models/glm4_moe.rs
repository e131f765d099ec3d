//! `--model glm4_moe` (`glm4-moe`): GLM-4.5 MoE (`Glm4MoeForCausalLM`) ⇄ mcore names: q/k/v(+bias) fused per KV group;
//! dense first layers (`first_k_dense_replace`) as qwen2's MLP; MoE layers: router (+ `e_score_correction_bias` →
//! `router.expert_bias`), shared experts gate/up → `shared_experts.linear_fc1` (MLP layout), routed experts stacked.
//! The q/k norms (`use_qk_norm`) have no rule in the 2.1.0 mapping: like the reference they keep their HF leaf
//! names under `decoder.layers.{i}.self_attn.` (what its `convert_name` yields).

use crate::models::qwen2::{ATTENTION, ENDS, EXPERTS, GQA_NEEDS, MLP, SHARED_EXPERTS};
use crate::models::rules::{map, Rule};
use crate::models::{Family, Generation};

const QK_NORM_PASSTHROUGH: &[Rule] = &[
    map(
        "model.layers.{i}.self_attn.q_norm.weight",
        "decoder.layers.{i}.self_attn.q_norm.weight",
    ),
    map(
        "model.layers.{i}.self_attn.k_norm.weight",
        "decoder.layers.{i}.self_attn.k_norm.weight",
    ),
];

pub const FAMILY: Family = Family {
    name: "glm4_moe",
    aliases: &["glm4-moe"],
    description: "GLM-4.5 MoE (Glm4MoeForCausalLM) → mcore: q/k/v per KV group, dense-first layers, router+bias, shared and routed experts; needs n_head, n_kv_head",
    generation: Generation::Mcore,
    rules: &[ENDS, ATTENTION, QK_NORM_PASSTHROUGH, SHARED_EXPERTS, EXPERTS, MLP],
    needs: GQA_NEEDS,
    embeddings: &["model.embed_tokens.weight", "embedding.word_embeddings.weight"],
    ..Family::BASE
};

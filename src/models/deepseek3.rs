//! `--model deepseek3` (`deepseek-v3`): DeepSeek-V3 (`DeepseekV3ForCausalLM`) ⇄ mcore names. MLA projections and norms
//! renamed (bytes unchanged, as the reference's loader reads them); dense first layers (`first_k_dense_replace`)
//! as qwen2's MLP; MoE layers: router + `e_score_correction_bias`, shared experts (`linear_fc1` in the MLP layout),
//! routed experts stacked and transposed. MTP layers (HF `model.layers.{L+k}`, `L` = `num_hidden_layers`) become
//! `mtp.layers.{k}.*` (their decoder layer under `transformer_layer.`); their copies of the embedding and the head
//! are dropped forward and re-created by the reverse. FP8 checkpoints (`weight_scale_inv` block scales) are
//! dequantised to bf16 on the way.

use crate::models::qwen2::{ENDS, EXPERTS, MLP, SHARED_EXPERTS};
use crate::models::rules::{map, Rule};
use crate::models::{Family, Generation, Mtp};

/// Multi-head latent attention: renames only.
pub(crate) const MLA: &[Rule] = &[
    map(
        "model.layers.{i}.self_attn.q_a_proj.weight",
        "decoder.layers.{i}.self_attention.linear_q_down_proj.weight",
    ),
    map(
        "model.layers.{i}.self_attn.q_a_layernorm.weight",
        "decoder.layers.{i}.self_attention.q_layernorm.weight",
    ),
    map(
        "model.layers.{i}.self_attn.q_b_proj.weight",
        "decoder.layers.{i}.self_attention.linear_q_up_proj.weight",
    ),
    map(
        "model.layers.{i}.self_attn.kv_a_proj_with_mqa.weight",
        "decoder.layers.{i}.self_attention.linear_kv_down_proj.weight",
    ),
    map(
        "model.layers.{i}.self_attn.kv_a_layernorm.weight",
        "decoder.layers.{i}.self_attention.kv_layernorm.weight",
    ),
    map(
        "model.layers.{i}.self_attn.kv_b_proj.weight",
        "decoder.layers.{i}.self_attention.linear_kv_up_proj.weight",
    ),
    map(
        "model.layers.{i}.self_attn.o_proj.weight",
        "decoder.layers.{i}.self_attention.linear_proj.weight",
    ),
    map(
        "model.layers.{i}.input_layernorm.weight",
        "decoder.layers.{i}.input_layernorm.weight",
    ),
    map(
        "model.layers.{i}.post_attention_layernorm.weight",
        "decoder.layers.{i}.pre_mlp_layernorm.weight",
    ),
];

/// DeepSeek-V3's MTP block.
pub(crate) const MTP: Mtp = Mtp {
    hf_layer: "model.layers.",
    ms_layer: "decoder.layers.",
    ms_mtp: "mtp.layers.",
    ms_inner: "transformer_layer.",
    own: &[
        ("enorm.weight", "enorm.weight"),
        ("hnorm.weight", "hnorm.weight"),
        ("eh_proj.weight", "eh_proj.weight"),
        ("shared_head.norm.weight", "final_layernorm.weight"),
    ],
    copies: &[
        ("embed_tokens.weight", "model.embed_tokens.weight"),
        ("shared_head.head.weight", "lm_head.weight"),
    ],
};

pub const FAMILY: Family = Family {
    name: "deepseek3",
    aliases: &["deepseek-v3"],
    description: "DeepSeek-V3 (DeepseekV3ForCausalLM) → mcore: MLA renamed, dense-first + MoE (router, shared, stacked experts), MTP as mtp.layers.k, FP8 dequantised to bf16",
    generation: Generation::Mcore,
    rules: &[ENDS, MLA, SHARED_EXPERTS, EXPERTS, MLP],
    embeddings: &["model.embed_tokens.weight", "embedding.word_embeddings.weight"],
    mtp: Some(MTP),
    ..Family::BASE
};

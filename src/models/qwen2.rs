//! `--model qwen2`: Qwen2 / Qwen2.5 (`Qwen2ForCausalLM`) ⇄ MindFormers 2.x mcore names (generation "mcore").
//! q/k/v weights and biases fused per KV group into `linear_qkv` (the group's query heads, then its key and value
//! head); gate/up fused into `linear_fc1` (row-interleaved by default, the 2.1.0 layout; `--mlp-layout
//! contiguous` or the config's `use_interleaved_weight_layout_mlp: false` for the 2.0.0 halves); the rest renamed.
//! Tied models (no `lm_head.weight`) have no `output_layer.weight`, and the reverse writes none.
//!
//! The shared mcore tables live here and are reused by the other mcore families.

use crate::models::rules::{fuse, map, stacked, Axis, Experts, Op, Rule};
use crate::models::{Family, Generation, Hyper};

/// Embedding, final norm and head.
pub(crate) const ENDS: &[Rule] = &[
    map("model.embed_tokens.weight", "embedding.word_embeddings.weight"),
    map("model.norm.weight", "decoder.final_layernorm.weight"),
    map("lm_head.weight", "output_layer.weight"),
];

/// GQA attention (q/k/v weights and optional biases fused per KV group), output projection, the layer's norms.
pub(crate) const ATTENTION: &[Rule] = &[
    fuse(
        &[
            "model.layers.{i}.self_attn.q_proj.{s}",
            "model.layers.{i}.self_attn.k_proj.{s}",
            "model.layers.{i}.self_attn.v_proj.{s}",
        ],
        "decoder.layers.{i}.self_attention.linear_qkv.{s}",
        Op::GROUPED_HEADS,
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

/// Qwen3-style per-head q/k RMS norms.
pub(crate) const QK_NORM: &[Rule] = &[
    map(
        "model.layers.{i}.self_attn.q_norm.weight",
        "decoder.layers.{i}.self_attention.q_layernorm.weight",
    ),
    map(
        "model.layers.{i}.self_attn.k_norm.weight",
        "decoder.layers.{i}.self_attention.k_layernorm.weight",
    ),
];

/// Dense gated MLP: gate ‖ up → `linear_fc1` (layout per `--mlp-layout`), down → `linear_fc2`.
pub(crate) const MLP: &[Rule] = &[
    fuse(
        &[
            "model.layers.{i}.mlp.gate_proj.weight",
            "model.layers.{i}.mlp.up_proj.weight",
        ],
        "decoder.layers.{i}.mlp.linear_fc1.weight",
        Op::GATED_MLP,
    ),
    map(
        "model.layers.{i}.mlp.down_proj.weight",
        "decoder.layers.{i}.mlp.linear_fc2.weight",
    ),
];

/// Routed experts, stacked and transposed (always gate ‖ up contiguous within a row, whatever the MLP layout):
/// `weight1[e·H + h] = [gateₑᵀ[h] ‖ upₑᵀ[h]]` (`[E·H, 2·Fm]`), `weight2[e·Fm + f] = downₑᵀ[f]` (`[E·Fm, H]`);
/// and the router.
pub(crate) const EXPERTS: &[Rule] = &[
    stacked(
        &[
            "model.layers.{i}.mlp.experts.{e}.gate_proj.weight",
            "model.layers.{i}.mlp.experts.{e}.up_proj.weight",
        ],
        "decoder.layers.{i}.mlp.experts.weight1",
        Op::concat(Axis::Last).transposed(),
        Experts::Flat,
    ),
    stacked(
        &["model.layers.{i}.mlp.experts.{e}.down_proj.weight"],
        "decoder.layers.{i}.mlp.experts.weight2",
        Op::TRANSPOSE,
        Experts::Flat,
    ),
    map(
        "model.layers.{i}.mlp.gate.weight",
        "decoder.layers.{i}.mlp.router.weight",
    ),
];

/// DeepSeek-style router bias and shared experts (glm4_moe, deepseek3, telechat3_moe).
pub(crate) const SHARED_EXPERTS: &[Rule] = &[
    map(
        "model.layers.{i}.mlp.gate.e_score_correction_bias",
        "decoder.layers.{i}.mlp.router.expert_bias",
    ),
    fuse(
        &[
            "model.layers.{i}.mlp.shared_experts.gate_proj.weight",
            "model.layers.{i}.mlp.shared_experts.up_proj.weight",
        ],
        "decoder.layers.{i}.mlp.shared_experts.linear_fc1.weight",
        Op::GATED_MLP,
    ),
    map(
        "model.layers.{i}.mlp.shared_experts.down_proj.weight",
        "decoder.layers.{i}.mlp.shared_experts.linear_fc2.weight",
    ),
];

/// Hyper-parameters every GQA mcore family needs to fuse q/k/v.
pub(crate) const GQA_NEEDS: &[Hyper] = &[Hyper::NHead, Hyper::NKvHead];

pub const FAMILY: Family = Family {
    name: "qwen2",
    description: "Qwen2/Qwen2.5 (Qwen2ForCausalLM) → mcore: q/k/v(+bias) fused per KV group, gate/up → linear_fc1 (--mlp-layout); needs n_head, n_kv_head",
    generation: Generation::Mcore,
    rules: &[ENDS, ATTENTION, MLP],
    needs: GQA_NEEDS,
    embeddings: &["model.embed_tokens.weight", "embedding.word_embeddings.weight"],
    ..Family::BASE
};

//! `--model glm4_moe` (`glm4-moe`): GLM-4.5 MoE (`Glm4MoeForCausalLM`) ⇄ mcore names: q/k/v(+bias) fused per KV group;
//! dense first layers (`first_k_dense_replace`) as qwen2's MLP; MoE layers: router (+ `e_score_correction_bias` →
//! `router.expert_bias`), shared experts gate/up → `shared_experts.linear_fc1` (MLP layout), routed experts stacked.
//! The q/k norms (`use_qk_norm`) go to `self_attention.q_layernorm/k_layernorm`: the 2.1.0 mapping has no rule for
//! them, so the reference leaves them under their HF leaf names and its network's q/k norms are never loaded
//! (docs/mcore-reference.md R13); we map them where the network reads them.

use crate::models::qwen2::{ATTENTION, ENDS, EXPERTS, GQA_NEEDS, MLP, QK_NORM, SHARED_EXPERTS};
use crate::models::{Family, Generation};

pub const FAMILY: Family = Family {
    name: "glm4_moe",
    aliases: &["glm4-moe"],
    description: "GLM-4.5 MoE (Glm4MoeForCausalLM) → mcore: q/k/v per KV group, q/k norms, dense-first layers, router+bias, shared and routed experts; needs n_head, n_kv_head",
    generation: Generation::Mcore,
    rules: &[ENDS, ATTENTION, QK_NORM, SHARED_EXPERTS, EXPERTS, MLP],
    needs: GQA_NEEDS,
    embeddings: &["model.embed_tokens.weight", "embedding.word_embeddings.weight"],
    ..Family::BASE
};

//! `--model qwen3_moe` (`qwen3-moe`): Qwen3-MoE (`Qwen3MoeForCausalLM`) ⇄ mcore names: qwen3's attention, router
//! `mlp.gate` → `mlp.router`, routed experts stacked and transposed into `experts.weight1/weight2`. Dense layers
//! (`mlp_only_layers`, `decoder_sparse_step`) are converted like qwen3's MLP (`linear_fc1/fc2`); the reference's
//! template has no rule for them and drops them. Which layers are MoE is checked against config.json.

use crate::models::qwen2::{ATTENTION, ENDS, EXPERTS, GQA_NEEDS, MLP, QK_NORM};
use crate::models::{Family, Generation};

pub const FAMILY: Family = Family {
    name: "qwen3_moe",
    aliases: &["qwen3-moe"],
    description: "Qwen3-MoE (Qwen3MoeForCausalLM) → mcore: qwen3 attention, experts stacked+transposed, dense layers as qwen3; needs n_head, n_kv_head",
    generation: Generation::Mcore,
    rules: &[ENDS, ATTENTION, QK_NORM, EXPERTS, MLP],
    needs: GQA_NEEDS,
    embeddings: &["model.embed_tokens.weight", "embedding.word_embeddings.weight"],
    ..Family::BASE
};

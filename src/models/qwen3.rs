//! `--model qwen3`: Qwen3 dense (`Qwen3ForCausalLM`) ⇄ mcore names: qwen2's tables (q/k/v fused per KV group, biases
//! when `attention_bias`, gate/up → `linear_fc1`) plus the per-head q/k norms. Matches the reference's qwen3 template
//! and, unlike it, keeps q/k/v biases (the template has no rule for them and drops them).

use crate::models::qwen2::{ATTENTION, ENDS, GQA_NEEDS, MLP, QK_NORM};
use crate::models::{Family, Generation};

pub const FAMILY: Family = Family {
    name: "qwen3",
    description: "Qwen3 dense (Qwen3ForCausalLM) → mcore: qwen2 layout + q/k norms; needs n_head, n_kv_head",
    generation: Generation::Mcore,
    rules: &[ENDS, ATTENTION, QK_NORM, MLP],
    needs: GQA_NEEDS,
    embeddings: &["model.embed_tokens.weight", "embedding.word_embeddings.weight"],
    ..Family::BASE
};

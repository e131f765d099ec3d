//! `--model telechat3`: TeleChat3 dense (llama-style HF names) ⇄ mcore names: as qwen3 (q/k/v fused per KV group,
//! optional q/k norms and biases, gate/up → `linear_fc1`).

use crate::models::qwen2::{ATTENTION, ENDS, GQA_NEEDS, MLP, QK_NORM};
use crate::models::{Family, Generation};

pub const FAMILY: Family = Family {
    name: "telechat3",
    description: "TeleChat3 dense → mcore: as qwen3 (q/k/v per KV group, q/k norms if present); needs n_head, n_kv_head",
    generation: Generation::Mcore,
    rules: &[ENDS, ATTENTION, QK_NORM, MLP],
    needs: GQA_NEEDS,
    embeddings: &["model.embed_tokens.weight", "embedding.word_embeddings.weight"],
    ..Family::BASE
};

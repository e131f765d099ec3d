//! `--model telechat3_moe` (`telechat3-moe`): TeleChat3 MoE ⇄ mcore names: DeepSeek-V3-shaped (MLA, dense-first
//! layers, router + bias, shared and routed experts, MTP). The reference hard-codes the MTP layer at index 46; ours
//! takes it from `num_hidden_layers` (as deepseek3).

use crate::models::deepseek3::{MLA, MTP};
use crate::models::qwen2::{ENDS, EXPERTS, MLP, SHARED_EXPERTS};
use crate::models::{Family, Generation};

pub const FAMILY: Family = Family {
    name: "telechat3_moe",
    aliases: &["telechat3-moe"],
    description: "TeleChat3 MoE → mcore: as deepseek3 (MLA, dense-first + MoE, MTP from num_hidden_layers)",
    generation: Generation::Mcore,
    rules: &[ENDS, MLA, SHARED_EXPERTS, EXPERTS, MLP],
    embeddings: &["model.embed_tokens.weight", "embedding.word_embeddings.weight"],
    mtp: Some(MTP),
    ..Family::BASE
};

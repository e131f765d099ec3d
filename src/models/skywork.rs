//! `--model skywork`: Skywork (llama architecture), spec §5. For standard checkpoints the reference's skywork rules
//! give exactly llama's names, so this is the llama table.
//!
//! Deviations:
//! - As llama (fail closed, training state dropped in reverse, dtype kept, layer count checked, inv_freq passed
//!   through only when present).
//! - The reference's bare-substring quirks (forward `lm_head.` → `output.`, reverse any `output.` → `lm_head.`, no
//!   generic `norm_out`/`embedding_weight` reverse rule) only affect non-standard names, which are errors here.

use crate::models::{llama, Family};

pub const FAMILY: Family = Family {
    name: "skywork",
    description: "Skywork (llama layout): llama renames; needs no hyper-parameters",
    rules: &[llama::RULES],
    embeddings: llama::EMBEDDINGS,
    ..Family::BASE
};

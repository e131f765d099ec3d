//! `--model internlm`: InternLM v1 (remote code), spec §6. The llama table; the q/k/v/o biases map like the weights.
//!
//! Deviations:
//! - As llama (fail closed, training state dropped in reverse, dtype kept, layer count checked, inv_freq passed
//!   through only when present).

use crate::models::{llama, Family};

pub const FAMILY: Family = Family {
    name: "internlm",
    description: "InternLM v1: llama renames incl. q/k/v/o biases; needs no hyper-parameters",
    rules: &[llama::RULES],
    embeddings: llama::EMBEDDINGS,
    ..Family::BASE
};

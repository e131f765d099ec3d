//! `--model skywork`: Skywork (llama architecture), spec §5. For standard checkpoints the reference's skywork rules
//! give exactly llama's names, so this is the llama table.
//!
//! Deviations:
//! - As llama (fail closed, training state dropped in reverse, dtype kept, layer count checked, inv_freq passed
//!   through only when present).
//! - The reference's bare-substring quirks (forward `lm_head.` → `output.`, reverse any `output.` → `lm_head.`, no
//!   generic `norm_out`/`embedding_weight` reverse rule) only affect non-standard names, which are errors here.

use crate::models::llama::LLAMA_RULES;
use crate::models::rules::plan_table;
use crate::models::{Family, HyperParams, ModelError};
use crate::ops::Plan;
use crate::tensor::TensorInfo;

/// Skywork.
pub struct Skywork;

impl Family for Skywork {
    fn name(&self) -> &'static str {
        "skywork"
    }
    fn describe(&self) -> &'static str {
        "Skywork (llama layout): llama renames; needs no hyper-parameters"
    }
    fn forward(&self, inputs: &[TensorInfo], hp: &HyperParams) -> Result<Plan, ModelError> {
        plan_table(self.name(), &[LLAMA_RULES], inputs, hp, false)
    }
    fn reverse(&self, inputs: &[TensorInfo], hp: &HyperParams) -> Result<Plan, ModelError> {
        plan_table(self.name(), &[LLAMA_RULES], inputs, hp, true)
    }
}

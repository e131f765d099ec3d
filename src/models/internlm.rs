//! `--model internlm`: InternLM v1 (remote code), spec §6. The llama table; the q/k/v/o biases map like the weights.
//!
//! Deviations:
//! - As llama (fail closed, training state dropped in reverse, dtype kept, layer count checked, inv_freq passed
//!   through only when present).

use crate::models::llama::LLAMA_RULES;
use crate::models::rules::plan_table;
use crate::models::{Family, HyperParams, ModelError};
use crate::ops::Plan;
use crate::tensor::TensorInfo;

/// InternLM.
pub struct Internlm;

impl Family for Internlm {
    fn name(&self) -> &'static str {
        "internlm"
    }
    fn describe(&self) -> &'static str {
        "InternLM v1: llama renames incl. q/k/v/o biases; needs no hyper-parameters"
    }
    fn forward(&self, inputs: &[TensorInfo], hp: &HyperParams) -> Result<Plan, ModelError> {
        plan_table(self.name(), &[LLAMA_RULES], inputs, hp, false)
    }
    fn reverse(&self, inputs: &[TensorInfo], hp: &HyperParams) -> Result<Plan, ModelError> {
        plan_table(self.name(), &[LLAMA_RULES], inputs, hp, true)
    }
}

//! `--model wizardcoder`: WizardCoder / StarCoder (`GPTBigCodeForCausalLM`, multi-query), spec §11. `attn.c_attn`
//! weight `[H + 2·kv, H]` and bias are cut by rows into q (`H` rows), k and v (`kv` rows each) → `dense1/2/3`;
//! `attn.c_proj`, `mlp.c_fc`, `mlp.c_proj` weights are transposed (nn.Linear `[out, in]` → `[in, out]`).
//!
//! Deviations:
//! - The q/k/v split comes from hidden_size and the kv rows, not the reference's hard-coded rows 6144/6272 (which
//!   only fit the 15B model and silently drop k/v elsewhere). hidden_size is taken from the hyper-parameters, else
//!   derived from `transformer.wte.weight` columns (else the first `c_attn.weight` columns); kv rows =
//!   (c_attn rows − hidden)/2, checked against n_kv_head·head_dim when those are known.
//! - `head.head_weight` is synthesised from `transformer.wte.weight` when `lm_head.weight` is absent (tied, as
//!   GPTBigCode's from_pretrained does).
//! - Converts every layer present (no `--layers`, reference default 12); a `layers` value that differs from the
//!   layers present is an error.
//! - Fails closed; reverse drops MindSpore training state by named rules and needs no fixed entry count.

use crate::models::rules::{self, check_layers, map, op, Ctx, Op, Rule};
use crate::models::{Family, HyperParams, ModelError};
use crate::ops::{Expr, Plan, PlanItem};
use crate::tensor::TensorInfo;

const WTE_HF: &str = "transformer.wte.weight";
const WTE_MS: &str = "backbone.embedding.word_embedding.embedding_table";
const HEAD_HF: &str = "lm_head.weight";
const HEAD_MS: &str = "head.head_weight";

const WIZARDCODER_RULES: &[Rule] = &[
    map(
        "transformer.h.{i}.ln_1.weight",
        &["backbone.blocks.{i}.layernorm1.gamma"],
    ),
    map(
        "transformer.h.{i}.ln_1.bias",
        &["backbone.blocks.{i}.layernorm1.beta"],
    ),
    map(
        "transformer.h.{i}.ln_2.weight",
        &["backbone.blocks.{i}.layernorm2.gamma"],
    ),
    map(
        "transformer.h.{i}.ln_2.bias",
        &["backbone.blocks.{i}.layernorm2.beta"],
    ),
    op(
        "transformer.h.{i}.attn.c_proj.weight",
        &["backbone.blocks.{i}.attention.projection.weight"],
        Op::Transpose,
    ),
    map(
        "transformer.h.{i}.attn.c_proj.bias",
        &["backbone.blocks.{i}.attention.projection.bias"],
    ),
    op(
        "transformer.h.{i}.attn.c_attn.{s}",
        &[
            "backbone.blocks.{i}.attention.dense1.{s}",
            "backbone.blocks.{i}.attention.dense2.{s}",
            "backbone.blocks.{i}.attention.dense3.{s}",
        ],
        Op::QkvRows,
    ),
    op(
        "transformer.h.{i}.mlp.c_fc.weight",
        &["backbone.blocks.{i}.output.mapping.weight"],
        Op::Transpose,
    ),
    map(
        "transformer.h.{i}.mlp.c_fc.bias",
        &["backbone.blocks.{i}.output.mapping.bias"],
    ),
    op(
        "transformer.h.{i}.mlp.c_proj.weight",
        &["backbone.blocks.{i}.output.projection.weight"],
        Op::Transpose,
    ),
    map(
        "transformer.h.{i}.mlp.c_proj.bias",
        &["backbone.blocks.{i}.output.projection.bias"],
    ),
    map("transformer.ln_f.weight", &["backbone.layernorm.gamma"]),
    map("transformer.ln_f.bias", &["backbone.layernorm.beta"]),
    map(WTE_HF, &[WTE_MS]),
    map(
        "transformer.wpe.weight",
        &["backbone.embedding.position_embedding.embedding_table"],
    ),
    map(HEAD_HF, &[HEAD_MS]),
];

/// WizardCoder.
pub struct Wizardcoder;

impl Wizardcoder {
    /// hidden_size: the hyper-parameter, else the embedding's columns, else the first fused q/k/v weight's columns
    /// (forward) or q rows (reverse). A hyper-parameter that contradicts the embedding is an error.
    fn hidden(
        &self,
        inputs: &[TensorInfo],
        hp: &HyperParams,
        reversed: bool,
    ) -> Result<Option<usize>, ModelError> {
        let (wte, fused, fused_dim) = if reversed {
            (WTE_MS, ".attention.dense1.weight", 0)
        } else {
            (WTE_HF, ".attn.c_attn.weight", 1)
        };
        let from_wte = inputs
            .iter()
            .find(|t| t.name == wte)
            .and_then(|t| t.shape.get(1).copied());
        if let (Some(h), Some(w)) = (hp.hidden_size, from_wte) {
            if h != w {
                return Err(ModelError::Tensor {
                    family: self.name().into(),
                    tensor: wte.into(),
                    msg: format!("has {w} columns but hidden_size is {h}"),
                });
            }
        }
        Ok(hp.hidden_size.or(from_wte).or_else(|| {
            inputs
                .iter()
                .find(|t| t.name.ends_with(fused))
                .and_then(|t| t.shape.get(fused_dim).copied())
        }))
    }

    fn plan(
        &self,
        inputs: &[TensorInfo],
        hp: &HyperParams,
        reversed: bool,
    ) -> Result<Plan, ModelError> {
        let mut ctx = Ctx::new(self.name(), hp);
        ctx.hidden = self.hidden(inputs, hp, reversed)?;
        let mut planned = rules::plan(&[WIZARDCODER_RULES], inputs, &ctx, reversed)?;
        check_layers(self.name(), hp, &planned.layers)?;
        if !reversed && !inputs.iter().any(|t| t.name == HEAD_HF) {
            if let Some(w) = inputs.iter().position(|t| t.name == WTE_HF) {
                planned
                    .plan
                    .items
                    .push(PlanItem::new(HEAD_MS, Expr::input(w)));
            }
        }
        Ok(planned.plan)
    }
}

impl Family for Wizardcoder {
    fn name(&self) -> &'static str {
        "wizardcoder"
    }
    fn describe(&self) -> &'static str {
        "WizardCoder/StarCoder (GPTBigCode, MQA): c_attn split into q/k/v rows (derived from hidden_size), Linear weights transposed; all layers"
    }
    fn forward(&self, inputs: &[TensorInfo], hp: &HyperParams) -> Result<Plan, ModelError> {
        self.plan(inputs, hp, false)
    }
    fn reverse(&self, inputs: &[TensorInfo], hp: &HyperParams) -> Result<Plan, ModelError> {
        self.plan(inputs, hp, true)
    }
}

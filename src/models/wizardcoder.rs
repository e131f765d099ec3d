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

use crate::models::rules::{map, split, transpose, Axis, Op, Rule, Sizes};
use crate::models::{Family, TiedHead};

const RULES: &[Rule] = &[
    map("transformer.h.{i}.ln_1.weight", "backbone.blocks.{i}.layernorm1.gamma"),
    map("transformer.h.{i}.ln_1.bias", "backbone.blocks.{i}.layernorm1.beta"),
    map("transformer.h.{i}.ln_2.weight", "backbone.blocks.{i}.layernorm2.gamma"),
    map("transformer.h.{i}.ln_2.bias", "backbone.blocks.{i}.layernorm2.beta"),
    transpose("transformer.h.{i}.attn.c_proj.weight", "backbone.blocks.{i}.attention.projection.weight"),
    map("transformer.h.{i}.attn.c_proj.bias", "backbone.blocks.{i}.attention.projection.bias"),
    // rows `[q (hidden) | k (kv) | v (kv)]`
    split(
        "transformer.h.{i}.attn.c_attn.{s}",
        &[
            "backbone.blocks.{i}.attention.dense1.{s}",
            "backbone.blocks.{i}.attention.dense2.{s}",
            "backbone.blocks.{i}.attention.dense3.{s}",
        ],
        Op::concat(Axis::First).sized(Sizes::Qkv),
    ),
    transpose("transformer.h.{i}.mlp.c_fc.weight", "backbone.blocks.{i}.output.mapping.weight"),
    map("transformer.h.{i}.mlp.c_fc.bias", "backbone.blocks.{i}.output.mapping.bias"),
    transpose("transformer.h.{i}.mlp.c_proj.weight", "backbone.blocks.{i}.output.projection.weight"),
    map("transformer.h.{i}.mlp.c_proj.bias", "backbone.blocks.{i}.output.projection.bias"),
    map("transformer.ln_f.weight", "backbone.layernorm.gamma"),
    map("transformer.ln_f.bias", "backbone.layernorm.beta"),
    map("transformer.wte.weight", "backbone.embedding.word_embedding.embedding_table"),
    map("transformer.wpe.weight", "backbone.embedding.position_embedding.embedding_table"),
    map("lm_head.weight", "head.head_weight"),
];

pub const FAMILY: Family = Family {
    name: "wizardcoder",
    description: "WizardCoder/StarCoder (GPTBigCode, MQA): c_attn split into q/k/v rows (derived from hidden_size), Linear weights transposed; all layers",
    rules: &[RULES],
    embeddings: &["transformer.wte.weight", "backbone.embedding.word_embedding.embedding_table"],
    tied_head: Some(TiedHead {
        head: "lm_head.weight",
        embedding: "transformer.wte.weight",
    }),
    ..Family::BASE
};

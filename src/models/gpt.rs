//! `--model gpt` (alias `gpt2`): GPT-2, spec §10. Conv1D layout (`[in, out]`): `attn.c_attn` weight `[H, 3H]` is cut
//! into column thirds along its last axis and each third transposed → `dense1/2/3.weight` `[H, H]` (q = c_attn[:, :H]ᵀ);
//! the bias `[3H]` into thirds. Other weights keep their layout. Reverse transposes back and concatenates on the last
//! axis.
//!
//! Deviations:
//! - Accepts `transformer.`-prefixed names (GPT2LMHeadModel), which the reference silently turns into an empty
//!   checkpoint. Reverse writes the unprefixed GPT2Model names, as the reference does.
//! - Converts every layer present: no `--layers` truncation (reference default 12); a `layers` value (flag or
//!   config.json) that differs from the number of layers present is an error, and so is a gap in the layer numbers.
//! - `lm_head.weight` (tied to `wte`) is dropped by the named rule `tied-lm-head` instead of being ignored silently;
//!   any other unknown name is an error (the reference skips it silently).
//! - `c_attn` columns must be 3·hidden_size when it is known.
//! - Reverse accepts checkpoints with training state (dropped by named rules); the reference's layer-count
//!   arithmetic fails on them.

use crate::models::rules::{drop, map, split, Axis, Dir, Op, Rule, Sizes};
use crate::models::Family;

macro_rules! p {
    ($s:literal) => {
        concat!("{p:|transformer.}", $s)
    };
}

const RULES: &[Rule] = &[
    map(p!("h.{i}.ln_1.weight"), "backbone.blocks.{i}.layernorm1.gamma"),
    map(p!("h.{i}.ln_1.bias"), "backbone.blocks.{i}.layernorm1.beta"),
    map(p!("h.{i}.ln_2.weight"), "backbone.blocks.{i}.layernorm2.gamma"),
    map(p!("h.{i}.ln_2.bias"), "backbone.blocks.{i}.layernorm2.beta"),
    map(p!("h.{i}.attn.bias"), "backbone.blocks.{i}.attention.beta"),
    map(p!("h.{i}.attn.masked_bias"), "backbone.blocks.{i}.attention.masked_beta"),
    map(p!("h.{i}.attn.c_proj.{s}"), "backbone.blocks.{i}.attention.projection.{s}"),
    // Conv1D `[in, out]`: column thirds, each transposed to `[out, in]`
    split(
        p!("h.{i}.attn.c_attn.weight"),
        &[
            "backbone.blocks.{i}.attention.dense1.weight",
            "backbone.blocks.{i}.attention.dense2.weight",
            "backbone.blocks.{i}.attention.dense3.weight",
        ],
        Op::concat(Axis::Last).sized(Sizes::Hidden).transposed(),
    ),
    split(
        p!("h.{i}.attn.c_attn.bias"),
        &[
            "backbone.blocks.{i}.attention.dense1.bias",
            "backbone.blocks.{i}.attention.dense2.bias",
            "backbone.blocks.{i}.attention.dense3.bias",
        ],
        Op::concat(Axis::Last).sized(Sizes::Hidden),
    ),
    map(p!("h.{i}.mlp.c_fc.{s}"), "backbone.blocks.{i}.output.mapping.{s}"),
    map(p!("h.{i}.mlp.c_proj.{s}"), "backbone.blocks.{i}.output.projection.{s}"),
    map(p!("ln_f.weight"), "backbone.layernorm.gamma"),
    map(p!("ln_f.bias"), "backbone.layernorm.beta"),
    map(p!("wte.weight"), "backbone.embedding.word_embedding.embedding_table"),
    map(p!("wpe.weight"), "backbone.embedding.position_embedding.embedding_table"),
    drop(Dir::Forward, "lm_head.weight", "tied-lm-head (tied to wte)"),
];

pub const FAMILY: Family = Family {
    name: "gpt",
    aliases: &["gpt2"],
    description: "GPT-2 (GPT2Model or GPT2LMHeadModel names): c_attn split + transposed into dense1/2/3; all layers; checks hidden_size/layers if known",
    rules: &[RULES],
    embeddings: &[p!("wte.weight"), "backbone.embedding.word_embedding.embedding_table"],
    ..Family::BASE
};

//! `--model baichuan` (alias `baichuan2`): Baichuan-7B and Baichuan2-7B/13B (remote code), spec §7. The llama table
//! plus `W_pack` (fused `[3H, H]`) split into row thirds `wq`/`wk`/`wv`; reverse concatenates them back (rows).
//!
//! Deviations:
//! - As llama (fail closed, training state dropped in reverse instead of fused into `adam_m.….W_pack`, dtype kept,
//!   layer count checked).
//! - `W_pack` rows must be 3·hidden_size (from config.json when known, else any multiple of 3); the reference
//!   `torch.split`s by hidden_size rows and mis-splits on a mismatch.
//! - A reverse group missing one of wq/wk/wv is an error naming the missing tensor (the reference raises KeyError).

use crate::models::rules::{split, Axis, Op, Rule, Sizes};
use crate::models::{llama, Family};

/// Baichuan's fused projection; listed before the llama rules so that reverse fuses wq/wk/wv.
const RULES: &[Rule] = &[split(
    "model.layers.{i}.self_attn.W_pack.weight",
    &[
        "model.layers.{i}.attention.wq.weight",
        "model.layers.{i}.attention.wk.weight",
        "model.layers.{i}.attention.wv.weight",
    ],
    Op::concat(Axis::First).sized(Sizes::Hidden),
)];

pub const FAMILY: Family = Family {
    name: "baichuan",
    aliases: &["baichuan2"],
    description: "Baichuan/Baichuan2: llama renames + W_pack split into wq/wk/wv row thirds; checks hidden_size if known",
    rules: &[RULES, llama::RULES],
    embeddings: llama::EMBEDDINGS,
    ..Family::BASE
};

//! `--model qwen`: Qwen-1 (`QWenLMHeadModel`, remote code), spec §8. Renames plus `attn.c_attn` weight `[3H, H]` and
//! bias `[3H]` split into row thirds `wq`/`wk`/`wv`; reverse concatenates them back.
//!
//! Deviations:
//! - Fails closed (the reference passes unmatched names through); reverse drops MindSpore training state by named
//!   rules; the layers present must agree with `layers` (config.json) when known.
//! - `c_attn` rows must be 3·hidden_size when it is known, else a multiple of 3 (the reference `array_split`s into
//!   unequal parts otherwise).
//! - A reverse group missing one of wq/wk/wv is an error naming the missing tensor.
//! - The dtype is kept (the reference's result depends on the host: fp32 without CUDA, bf16/fp16 with it).

use crate::models::rules::{map, split, Axis, Op, Rule, Sizes};
use crate::models::Family;

const RULES: &[Rule] = &[
    map("transformer.wte.weight", "transformer.wte.embedding_weight"),
    map("transformer.h.{i}.ln_1.weight", "transformer.layers.{i}.attention_norm.weight"),
    split(
        "transformer.h.{i}.attn.c_attn.{s}",
        &[
            "transformer.layers.{i}.attention.wq.{s}",
            "transformer.layers.{i}.attention.wk.{s}",
            "transformer.layers.{i}.attention.wv.{s}",
        ],
        Op::concat(Axis::First).sized(Sizes::Hidden),
    ),
    map("transformer.h.{i}.attn.c_proj.{s}", "transformer.layers.{i}.attention.wo.{s}"),
    map("transformer.h.{i}.ln_2.weight", "transformer.layers.{i}.ffn_norm.weight"),
    map("transformer.h.{i}.mlp.w1.{s}", "transformer.layers.{i}.feed_forward.w1.{s}"),
    map("transformer.h.{i}.mlp.w2.{s}", "transformer.layers.{i}.feed_forward.w3.{s}"),
    map("transformer.h.{i}.mlp.c_proj.{s}", "transformer.layers.{i}.feed_forward.w2.{s}"),
    map("transformer.ln_f.weight", "transformer.ln_f.weight"),
    map("lm_head.weight", "lm_head.weight"),
    // rotary buffers: the model-level one keeps its name; a per-layer one follows `.h.` → `.layers.`
    map("transformer.rotary_emb.inv_freq", "transformer.rotary_emb.inv_freq"),
    map(
        "transformer.h.{i}.attn.rotary_emb.inv_freq",
        "transformer.layers.{i}.attn.rotary_emb.inv_freq",
    ),
];

pub const FAMILY: Family = Family {
    name: "qwen",
    description: "Qwen-1 (QWenLMHeadModel): renames + c_attn weight/bias split into wq/wk/wv thirds; checks hidden_size if known",
    rules: &[RULES],
    embeddings: &["transformer.wte.weight", "transformer.wte.embedding_weight"],
    ..Family::BASE
};

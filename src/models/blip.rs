//! `--model blip` (alias `blip2`): BLIP-2 stage-1 (LAVIS `Blip2Qformer`: EVA ViT-g visual encoder + Q-Former),
//! spec §13. EVA `attn.qkv.weight` `[3D, D]` is cut into row thirds → `attention.dense1/2/3.weight`; `attn.q_bias`
//! → `dense1.bias` plus a zero `dense2.bias` (EVA has no k-bias), `attn.v_bias` → `dense3.bias`; `attn.proj` and the
//! MLP weights are transposed, with the reference's crossed fc1/fc2 slots (fc1.weight → `output.projection.weight`,
//! fc2.weight → `output.mapping.weight`, fc1.bias → `output.mapping.bias`, fc2.bias → `output.projection.bias`);
//! `Qformer.` → `qformer.`, `LayerNorm` → `layernorm.gamma/beta`, `*_embeddings.weight` → `embedding_table`,
//! `self` → `self_att`.
//!
//! Deviations:
//! - Reverse re-fuses `attention.dense{1,2,3}.weight` into `attn.qkv.weight` (rows, concat dim 0); the reference's
//!   fusion is dead code and leaves three `attention.denseN.weight` tensors in the LAVIS dict.
//! - Reverse drops the zero `attention.dense2.bias` by the named rule `synthesised-zeros`.
//! - Any state-dict layout is accepted (the reader unwraps `{"model": …}`); the reference rejects a plain dict
//!   without `model` and its own `OrderedDict({'model': …})` output.
//! - `qkv.weight` rows must divide by 3 (the reference silently drops the remainder rows).
//! - Fails closed (names outside the LAVIS Blip2Qformer layout are errors); reverse drops MindSpore training state.


use crate::models::rules::{map, split, transpose, Axis, Op, Rule};
use crate::models::Family;

macro_rules! ve {
    ($s:literal) => {
        concat!("visual_encoder.blocks.{i}.", $s)
    };
}
macro_rules! qf {
    ($s:literal) => {
        concat!("Qformer.bert.encoder.layer.{i}.", $s)
    };
}
macro_rules! ms_qf {
    ($s:literal) => {
        concat!("qformer.bert.encoder.layer.{i}.", $s)
    };
}
/// Q-Former sub-modules that hold a `dense` linear.
macro_rules! dense_mods {
    () => {
        "{m:attention.output|crossattention.output|intermediate_query|intermediate|output_query|output}"
    };
}
/// Q-Former sub-modules that hold a `LayerNorm`.
macro_rules! ln_mods {
    () => {
        "{m:attention.output|crossattention.output|output_query|output}"
    };
}

const RULES: &[Rule] = &[
    map("query_tokens", "query_tokens"),
    map("temp", "temp"),
    // EVA ViT
    map("visual_encoder.cls_token", "visual_encoder.cls_tokens"),
    map("visual_encoder.pos_embed", "visual_encoder.pos_embed"),
    map("visual_encoder.patch_embed.proj.{s}", "visual_encoder.patch_embed.proj.{s}"),
    map(ve!("norm1.weight"), ve!("layernorm1.gamma")),
    map(ve!("norm1.bias"), ve!("layernorm1.beta")),
    map(ve!("norm2.weight"), ve!("layernorm2.gamma")),
    map(ve!("norm2.bias"), ve!("layernorm2.beta")),
    // EVA has no k-bias: dense2.bias is written as zeros (and dropped in reverse)
    split(
        ve!("attn.q_bias"),
        &[ve!("attention.dense1.bias"), ve!("attention.dense2.bias")],
        Op::WITH_ZEROS,
    ),
    map(ve!("attn.v_bias"), ve!("attention.dense3.bias")),
    split(
        ve!("attn.qkv.weight"),
        &[
            ve!("attention.dense1.weight"),
            ve!("attention.dense2.weight"),
            ve!("attention.dense3.weight"),
        ],
        Op::concat(Axis::First),
    ),
    transpose(ve!("attn.proj.weight"), ve!("attention.projection.weight")),
    map(ve!("attn.proj.bias"), ve!("attention.projection.bias")),
    // the reference's crossed MLP slots
    transpose(ve!("mlp.fc1.weight"), ve!("output.projection.weight")),
    transpose(ve!("mlp.fc2.weight"), ve!("output.mapping.weight")),
    map(ve!("mlp.fc1.bias"), ve!("output.mapping.bias")),
    map(ve!("mlp.fc2.bias"), ve!("output.projection.bias")),
    map("visual_encoder.norm.{s}", "visual_encoder.norm.{s}"),
    map("visual_encoder.fc_norm.weight", "visual_encoder.fc_norm.gamma"),
    map("visual_encoder.fc_norm.bias", "visual_encoder.fc_norm.beta"),
    map("ln_vision.weight", "ln_vision.gamma"),
    map("ln_vision.bias", "ln_vision.beta"),
    // Q-Former (BERT)
    map("Qformer.bert.embeddings.position_ids", "qformer.bert.embeddings.position_ids"),
    map("Qformer.bert.embeddings.{e:word_embeddings|position_embeddings}.weight", "qformer.bert.embeddings.{e:word_embeddings|position_embeddings}.embedding_table"),
    map("Qformer.bert.embeddings.LayerNorm.weight", "qformer.bert.embeddings.layernorm.gamma"),
    map("Qformer.bert.embeddings.LayerNorm.bias", "qformer.bert.embeddings.layernorm.beta"),
    map(qf!("{a:attention|crossattention}.self.{q:query|key|value}.{s}"), ms_qf!(
            "{a:attention|crossattention}.self_att.{q:query|key|value}.{s}"
        )),
    map(concat!(qf!(""), dense_mods!(), ".dense.{s}"), concat!(ms_qf!(""), dense_mods!(), ".dense.{s}")),
    map(concat!(qf!(""), ln_mods!(), ".LayerNorm.weight"), concat!(ms_qf!(""), ln_mods!(), ".layernorm.gamma")),
    map(concat!(qf!(""), ln_mods!(), ".LayerNorm.bias"), concat!(ms_qf!(""), ln_mods!(), ".layernorm.beta")),
    map("Qformer.cls.predictions.bias", "qformer.cls.predictions.bias"),
    map("Qformer.cls.predictions.transform.dense.{s}", "qformer.cls.predictions.transform.dense.{s}"),
    map("Qformer.cls.predictions.transform.LayerNorm.weight", "qformer.cls.predictions.transform.layernorm.gamma"),
    map("Qformer.cls.predictions.transform.LayerNorm.bias", "qformer.cls.predictions.transform.layernorm.beta"),
    map("Qformer.cls.predictions.decoder.{s}", "qformer.cls.predictions.decoder.{s}"),
    // projections and heads
    map("{h:vision_proj|text_proj|itm_head}.{s}", "{h:vision_proj|text_proj|itm_head}.{s}"),
];

pub const FAMILY: Family = Family {
    name: "blip",
    aliases: &["blip2"],
    description: "BLIP-2 stage 1 (LAVIS EVA-ViT + Q-Former): qkv row thirds + zero k-bias, transposed proj/MLP; reverse re-fuses qkv; needs nothing",
    rules: &[RULES],
    embeddings: &[
        "Qformer.bert.embeddings.word_embeddings.weight",
        "qformer.bert.embeddings.word_embeddings.embedding_table",
    ],
    ..Family::BASE
};

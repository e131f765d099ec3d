//! `--model deepseek4` (`deepseek-v4`): DeepSeek-V4 (native names `layers.{i}.attn.*`, `ffn.*`, `hc_*`, `mtp.{i}.*`)
//! ⇄ mcore names, as the reference's deepseek4 template: attention projections, compressor and indexer renamed;
//! routed experts `ffn.experts.{e}.w1/w3` stacked into `experts.weight1`, `w2` into `weight2`; shared experts
//! `w1 ‖ w3` → `shared_experts.linear_fc1` (MLP layout); hyper-connection scales `hc_*_scale` `[3]` split into
//! `alpha_pre/alpha_post/alpha_res` `[1]`; the MTP block's `e_proj ‖ h_proj` concatenated by columns into
//! `eh_proj`. Every MTP layer (`mtp.{k}`) is converted, not only the reference's `mtp.0`. Hash-routing tables
//! (`tid2eid`) keep their integer dtype.

use crate::models::rules::{fuse, map, split, stacked, Axis, Experts, Op, Rule};
use crate::models::{Family, Generation};

/// The rows of one decoder layer, HF prefix `$h`, MindSpore prefix `$m`.
macro_rules! layer {
    ($h:literal, $m:literal) => {
        &[
            map(concat!($h, "attn_norm.weight"), concat!($m, "input_layernorm.weight")),
            map(concat!($h, "attn.wq_a.weight"), concat!($m, "self_attention.linear_q_down_proj.weight")),
            map(concat!($h, "attn.q_norm.weight"), concat!($m, "self_attention.q_layernorm.weight")),
            map(concat!($h, "attn.wq_b.weight"), concat!($m, "self_attention.linear_q_up_proj.weight")),
            map(concat!($h, "attn.wkv.weight"), concat!($m, "self_attention.linear_kv_proj.weight")),
            map(concat!($h, "attn.kv_norm.weight"), concat!($m, "self_attention.kv_layernorm.weight")),
            map(concat!($h, "attn.wo_a.weight"), concat!($m, "self_attention.linear_o_group_proj")),
            map(concat!($h, "attn.wo_b.weight"), concat!($m, "self_attention.linear_proj.weight")),
            map(concat!($h, "attn.attn_sink"), concat!($m, "self_attention.core_attention.attn_sink")),
            map(
                concat!($h, "attn.{c:compressor|indexer.compressor}.ape"),
                concat!($m, "self_attention.core_attention.{c:compressor|indexer.compressor}.ape"),
            ),
            map(
                concat!($h, "attn.{c:compressor|indexer.compressor}.wkv.weight"),
                concat!($m, "self_attention.core_attention.{c:compressor|indexer.compressor}.linear_wkv.weight"),
            ),
            map(
                concat!($h, "attn.{c:compressor|indexer.compressor}.wgate.weight"),
                concat!($m, "self_attention.core_attention.{c:compressor|indexer.compressor}.linear_wgate.weight"),
            ),
            map(
                concat!($h, "attn.{c:compressor|indexer.compressor}.norm.weight"),
                concat!($m, "self_attention.core_attention.{c:compressor|indexer.compressor}.norm.weight"),
            ),
            map(
                concat!($h, "attn.indexer.wq_b.weight"),
                concat!($m, "self_attention.core_attention.indexer.linear_wq_b.weight"),
            ),
            map(
                concat!($h, "attn.indexer.weights_proj.weight"),
                concat!($m, "self_attention.core_attention.indexer.linear_weights_proj.weight"),
            ),
            map(concat!($h, "ffn_norm.weight"), concat!($m, "pre_mlp_layernorm.weight")),
            map(concat!($h, "ffn.gate.weight"), concat!($m, "mlp.router.weight")),
            map(concat!($h, "ffn.gate.bias"), concat!($m, "mlp.expert_bias")),
            map(concat!($h, "ffn.gate.tid2eid"), concat!($m, "mlp.router.tid2eid")),
            stacked(
                &[concat!($h, "ffn.experts.{e}.w1.weight"), concat!($h, "ffn.experts.{e}.w3.weight")],
                concat!($m, "mlp.experts.weight1"),
                Op::concat(Axis::Last).transposed(),
                Experts::Flat,
            ),
            stacked(
                &[concat!($h, "ffn.experts.{e}.w2.weight")],
                concat!($m, "mlp.experts.weight2"),
                Op::TRANSPOSE,
                Experts::Flat,
            ),
            fuse(
                &[concat!($h, "ffn.shared_experts.w1.weight"), concat!($h, "ffn.shared_experts.w3.weight")],
                concat!($m, "mlp.shared_experts.linear_fc1.weight"),
                Op::GATED_MLP,
            ),
            map(concat!($h, "ffn.shared_experts.w2.weight"), concat!($m, "mlp.shared_experts.linear_fc2.weight")),
            map(concat!($h, "hc_{x:attn|ffn}_base"), concat!($m, "{x:attn|ffn}_hc.bias")),
            map(concat!($h, "hc_{x:attn|ffn}_fn"), concat!($m, "{x:attn|ffn}_hc.mapping_proj.weight")),
            split(
                concat!($h, "hc_{x:attn|ffn}_scale"),
                &[concat!($m, "{x:attn|ffn}_hc.alpha_pre"), concat!($m, "{x:attn|ffn}_hc.alpha_post"), concat!($m, "{x:attn|ffn}_hc.alpha_res")],
                Op::COPY,
            ),
        ]
    };
}

const LAYERS: &[Rule] = layer!("layers.{i}.", "decoder.layers.{i}.");
const MTP_LAYERS: &[Rule] = layer!("mtp.{i}.", "mtp.layers.{i}.transformer_layer.");

const ENDS: &[Rule] = &[
    map("embed.weight", "embedding.word_embeddings.weight"),
    map("head.weight", "output_layer.weight"),
    map("norm.weight", "decoder.final_layernorm.weight"),
    map("hc_head_base", "decoder.hc_head.hc_base"),
    map("hc_head_fn", "decoder.hc_head.hc_fn.weight"),
    map("hc_head_scale", "decoder.hc_head.hc_scale"),
    map("mtp.{i}.enorm.weight", "mtp.layers.{i}.enorm.weight"),
    map("mtp.{i}.hnorm.weight", "mtp.layers.{i}.hnorm.weight"),
    map("mtp.{i}.norm.weight", "mtp.layers.{i}.final_layernorm.weight"),
    fuse(
        &["mtp.{i}.e_proj.weight", "mtp.{i}.h_proj.weight"],
        "mtp.layers.{i}.eh_proj.weight",
        Op::concat(Axis::Last),
    ),
    map("mtp.{i}.hc_head_base", "mtp.layers.{i}.hc_head.hc_base"),
    map("mtp.{i}.hc_head_fn", "mtp.layers.{i}.hc_head.hc_fn.weight"),
    map("mtp.{i}.hc_head_scale", "mtp.layers.{i}.hc_head.hc_scale"),
];

pub const FAMILY: Family = Family {
    name: "deepseek4",
    aliases: &["deepseek-v4"],
    description: "DeepSeek-V4 (native names) → mcore: as the reference template (MLA-style attention, compressor/indexer, stacked experts, hyper-connections, MTP)",
    generation: Generation::Mcore,
    rules: &[ENDS, LAYERS, MTP_LAYERS],
    embeddings: &["embed.weight", "embedding.word_embeddings.weight"],
    ..Family::BASE
};

//! Model families as data: each family is one declarative [`Family`] value in its own file (its rule tables,
//! hyper-parameters, embedding names, dtype pins, tied head, checks), and every family is planned by the one generic
//! planner ([`planner`]). Models see tensor headers and hyper-parameters only, never bytes or files.
//!
//! Adding a family: one file `src/models/NAME.rs` with `pub const FAMILY: Family = Family { .. }`, plus one line
//! `NAME,` in the `families!` list below (which declares the module and registers it).

use crate::ops::Plan;
use crate::tensor::{DType, TensorInfo};

pub mod planner;
pub mod rules;

/// Declares each family module and lists its `FAMILY` in [`registry`], in `--list-models` order.
macro_rules! families {
    ($($family:ident),* $(,)?) => {
        $(pub mod $family;)*

        /// Every family, in `--list-models` order.
        pub fn registry() -> &'static [&'static Family] {
            &[$(&$family::FAMILY),*]
        }
    };
}

// The registry: one line per family (its file is `src/models/<line>.rs`, defining `pub const FAMILY: Family`).
families! {
    llama,
    glm,
    qwen,
    internlm,
    baichuan,
    gpt,
    bloom,
    blip,
    wizardcoder,
    skywork,
    qwen2,
    qwen3,
    qwen3_moe,
    glm4,
    glm4_moe,
    deepseek3,
    deepseek4,
    telechat2,
    telechat3,
    telechat3_moe,
}

/// Errors of the model layer.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("unknown model '{0}' (see --list-models)")]
    UnknownModel(String),
    #[error("{family}: {} input tensor(s) match no rule: {}", names.len(), first_names(names, 3))]
    Unmapped { family: String, names: Vec<String> },
    #[error("{family}: tensor '{tensor}': {msg}")]
    Tensor {
        family: String,
        tensor: String,
        msg: String,
    },
    #[error("{family}: {msg}")]
    Other { family: String, msg: String },
    #[error("hyper-parameter {name}: {msg}")]
    Hyper { name: String, msg: String },
}

/// The first `k` names, then how many more: `a, b, c and 12 more`.
pub fn first_names(names: &[String], k: usize) -> String {
    let mut s = names
        .iter()
        .take(k)
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > k {
        s.push_str(&format!(" and {} more", names.len() - k));
    }
    s
}

/// Hyper-parameters a family may need. `None` means unknown (neither config.json nor a flag gave it).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HyperParams {
    pub n_head: Option<usize>,
    pub n_kv_head: Option<usize>,
    pub hidden_size: Option<usize>,
    pub layers: Option<usize>,
    pub head_dim: Option<usize>,
    /// Routed experts per MoE layer.
    pub n_experts: Option<usize>,
    /// FFN width of the dense MLP (`intermediate_size`).
    pub ffn_hidden: Option<usize>,
    /// FFN width of one expert (`moe_intermediate_size`).
    pub moe_ffn_hidden: Option<usize>,
    /// MoE layer pattern: the first `first_k_dense` layers are dense (`first_k_dense_replace`)...
    pub first_k_dense: Option<usize>,
    /// ... and after them every `moe_layer_freq`-th layer is MoE (`moe_layer_freq`).
    pub moe_layer_freq: Option<usize>,
    /// Qwen-MoE pattern: layer i is MoE when `(i + 1) % decoder_sparse_step == 0` ...
    pub sparse_step: Option<usize>,
    /// ... and it is not listed in `mlp_only_layers`.
    pub dense_layers: Option<Vec<usize>>,
    /// MindFormers mcore fused gate/up (`linear_fc1`) layout: row-interleaved (`true`, 2.1.0's default) or two
    /// contiguous halves (`false`, 2.0.0). config.json `use_interleaved_weight_layout_mlp`, flag `--mlp-layout`.
    pub mlp_interleaved: Option<bool>,
    /// FP8 block size (`quantization_config.weight_block_size`).
    pub fp8_block: Option<[usize; 2]>,
    /// MTP layers after the decoder layers (`num_nextn_predict_layers`).
    pub mtp_layers: Option<usize>,
    /// Every top-level non-negative integer of config.json, by key (for [`Hyper::Key`]: `q_lora_rank`, …).
    pub extra: std::collections::BTreeMap<String, usize>,
}

/// config.json spellings of each hyper-parameter (formats spec §3.3), first match wins.
const HEADS_KEYS: &[&str] = &["num_attention_heads", "n_head", "num_heads", "n_heads"];
const HIDDEN_KEYS: &[&str] = &["hidden_size", "n_embd", "n_embed", "d_model"];
const LAYERS_KEYS: &[&str] = &["num_hidden_layers", "n_layer", "num_layers", "n_layers"];
const KV_KEYS: &[&str] = &["num_key_value_heads", "num_kv_heads", "n_head_kv"];
const HEAD_DIM_KEYS: &[&str] = &["head_dim", "d_kv", "kv_channels"];
const EXPERTS_KEYS: &[&str] = &[
    "num_experts",
    "n_routed_experts",
    "num_local_experts",
    "moe_num_experts",
    "num_moe_experts",
];
const FFN_KEYS: &[&str] = &["intermediate_size", "ffn_hidden_size", "n_inner"];
const MOE_FFN_KEYS: &[&str] = &["moe_intermediate_size", "moe_ffn_hidden_size"];
const FIRST_DENSE_KEYS: &[&str] = &["first_k_dense_replace"];
const MOE_FREQ_KEYS: &[&str] = &["moe_layer_freq"];

fn config_usize(config: &serde_json::Value, keys: &[&str]) -> Option<usize> {
    keys.iter()
        .find_map(|k| config.get(*k).and_then(|v| v.as_u64()))
        .map(|v| v as usize)
}

impl HyperParams {
    /// Read what a `config.json` says (HF spellings of every family).
    pub fn from_config(config: &serde_json::Value) -> HyperParams {
        let n_head = config_usize(config, HEADS_KEYS);
        let multi_query = config.get("multi_query").and_then(|v| v.as_bool()) == Some(true);
        let n_kv_head = if multi_query {
            Some(1)
        } else {
            config_usize(config, KV_KEYS)
        };
        HyperParams {
            n_head,
            n_kv_head,
            hidden_size: config_usize(config, HIDDEN_KEYS),
            layers: config_usize(config, LAYERS_KEYS),
            head_dim: config_usize(config, HEAD_DIM_KEYS),
            n_experts: config_usize(config, EXPERTS_KEYS),
            ffn_hidden: config_usize(config, FFN_KEYS),
            moe_ffn_hidden: config_usize(config, MOE_FFN_KEYS),
            first_k_dense: config_usize(config, FIRST_DENSE_KEYS),
            moe_layer_freq: config_usize(config, MOE_FREQ_KEYS),
            sparse_step: config_usize(config, &["decoder_sparse_step"]),
            dense_layers: config.get("mlp_only_layers").and_then(|v| {
                v.as_array()?
                    .iter()
                    .map(|x| x.as_u64().map(|n| n as usize))
                    .collect()
            }),
            mlp_interleaved: config
                .get("use_interleaved_weight_layout_mlp")
                .and_then(|v| v.as_bool()),
            fp8_block: config
                .get("quantization_config")
                .and_then(|q| q.get("weight_block_size"))
                .and_then(|b| b.as_array())
                .and_then(|b| match b.as_slice() {
                    [r, c] => Some([r.as_u64()? as usize, c.as_u64()? as usize]),
                    _ => None,
                }),
            mtp_layers: config_usize(config, &["num_nextn_predict_layers"]),
            extra: config
                .as_object()
                .map(|m| {
                    m.iter()
                        .filter_map(|(k, v)| v.as_u64().map(|n| (k.clone(), n as usize)))
                        .collect()
                })
                .unwrap_or_default(),
        }
    }

    /// Apply `--mlp-layout` (`true` = interleaved) over the config: a contradiction is an error.
    pub fn with_mlp_layout(mut self, interleaved: Option<bool>) -> Result<HyperParams, ModelError> {
        let name = |b: bool| if b { "interleaved" } else { "contiguous" };
        match (self.mlp_interleaved, interleaved) {
            (Some(c), Some(f)) if c != f => Err(ModelError::Hyper {
                name: "mlp_layout".into(),
                msg: format!(
                    "--mlp-layout {} contradicts config.json (use_interleaved_weight_layout_mlp: {c}, i.e. {})",
                    name(f),
                    name(c)
                ),
            }),
            (_, Some(f)) => {
                self.mlp_interleaved = Some(f);
                Ok(self)
            }
            _ => Ok(self),
        }
    }

    /// Whether layer `i` is a MoE layer by the pattern (`None` when the model has no experts or the pattern is
    /// not known): the first `first_k_dense` layers are dense, then every `moe_layer_freq`-th layer is MoE.
    pub fn is_moe_layer(&self, i: usize) -> Option<bool> {
        self.n_experts.filter(|n| *n > 0)?;
        if let Some(step) = self.sparse_step {
            let listed = self.dense_layers.as_ref().is_some_and(|d| d.contains(&i));
            return Some(!listed && step > 0 && (i + 1) % step == 0);
        }
        if self.first_k_dense.is_none() && self.moe_layer_freq.is_none() {
            return None;
        }
        let k = self.first_k_dense.unwrap_or(0);
        let f = self.moe_layer_freq.unwrap_or(1).max(1);
        Some(i >= k && (i - k) % f == 0)
    }

    /// Apply command-line flags over the config: a flag that contradicts a value the config gives is an error.
    pub fn with_flags(
        mut self,
        n_head: Option<usize>,
        hidden_size: Option<usize>,
        layers: Option<usize>,
    ) -> Result<HyperParams, ModelError> {
        for (name, slot, flag) in [
            ("n_head", &mut self.n_head, n_head),
            ("hidden_size", &mut self.hidden_size, hidden_size),
            ("layers", &mut self.layers, layers),
        ] {
            if let Some(f) = flag {
                match *slot {
                    Some(c) if c != f => {
                        return Err(ModelError::Hyper {
                            name: name.into(),
                            msg: format!("--{name} {f} contradicts config.json ({c})"),
                        })
                    }
                    _ => *slot = Some(f),
                }
            }
        }
        Ok(self)
    }

    fn need(v: Option<usize>, name: &str, family: &str) -> Result<usize, ModelError> {
        v.ok_or_else(|| ModelError::Hyper {
            name: name.into(),
            msg: format!("{family} needs it: give --{name} or a config.json beside the weights"),
        })
    }

    pub fn need_heads(&self, family: &str) -> Result<usize, ModelError> {
        Self::need(self.n_head, "n_head", family)
    }
    pub fn need_hidden(&self, family: &str) -> Result<usize, ModelError> {
        Self::need(self.hidden_size, "hidden_size", family)
    }
    pub fn need_layers(&self, family: &str) -> Result<usize, ModelError> {
        Self::need(self.layers, "layers", family)
    }

    /// The value of one hyper-parameter.
    pub fn get(&self, h: Hyper) -> Option<usize> {
        match h {
            Hyper::NHead => self.n_head,
            Hyper::NKvHead => self.n_kv_head,
            Hyper::HeadDim => self.head_dim,
            Hyper::Hidden => self.hidden_size,
            Hyper::Layers => self.layers,
            Hyper::Experts => self.n_experts,
            Hyper::FfnHidden => self.ffn_hidden,
            Hyper::MoeFfnHidden => self.moe_ffn_hidden,
            Hyper::Key(k) => self.extra.get(k).copied(),
        }
    }

    /// One hyper-parameter, or an error saying that `family` needs it.
    pub fn require(&self, h: Hyper, family: &str) -> Result<usize, ModelError> {
        match h {
            Hyper::Key(k) => self.get(h).ok_or_else(|| ModelError::Hyper {
                name: k.into(),
                msg: format!("{family} needs it: give it in a config.json beside the weights"),
            }),
            _ => Self::need(self.get(h), h.flag(), family),
        }
    }
}

/// A hyper-parameter a family may need.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hyper {
    NHead,
    NKvHead,
    HeadDim,
    Hidden,
    Layers,
    Experts,
    FfnHidden,
    MoeFfnHidden,
    /// Any other integer of config.json, by its key (e.g. `Hyper::Key("q_lora_rank")`).
    Key(&'static str),
}

impl Hyper {
    /// The name used in messages (the command-line flag where there is one).
    pub fn flag(self) -> &'static str {
        match self {
            Hyper::NHead => "n_head",
            Hyper::NKvHead => "n_kv_head",
            Hyper::HeadDim => "head_dim",
            Hyper::Hidden => "hidden_size",
            Hyper::Layers => "layers",
            Hyper::Experts => "n_experts",
            Hyper::FfnHidden => "ffn_hidden_size",
            Hyper::MoeFfnHidden => "moe_ffn_hidden_size",
            Hyper::Key(k) => k,
        }
    }
}

/// Which MindFormers generation a family's MindSpore names belong to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Generation {
    /// The 2023 model zoo (MindFormers r1.x: `model.layers.N.attention.wq`, `backbone.blocks.N`, …).
    V2023,
    /// MindFormers 2.x mcore (Megatron-style `decoder.layers.N.self_attention.linear_qkv`, …).
    Mcore,
}

impl Generation {
    pub fn as_str(self) -> &'static str {
        match self {
            Generation::V2023 => "2023",
            Generation::Mcore => "mcore",
        }
    }
}

/// A common check the generic planner runs on a family's plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Check {
    /// The `{i}` layer numbers found are `0..n` without gaps, and agree with `layers` when known (a single shard
    /// of a sharded model is an error, not half a model).
    Layers,
    /// The word embedding's width is `hidden_size` when known, and (without `head_dim`) `n_head` divides it.
    Hidden,
    /// Expert tensors appear in exactly the layers that the MoE layer pattern names (when the pattern, the layer
    /// count and `n_experts` are known).
    MoeLayers,
}

/// When the HF head is absent (tied to the embedding), the forward direction writes the embedding under the head's
/// MindSpore name: `head` is planned as if it were a copy of `embedding`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TiedHead {
    /// HF name of the head (e.g. `lm_head.weight`).
    pub head: &'static str,
    /// HF name of the word embedding it is tied to.
    pub embedding: &'static str,
}

/// Multi-token-prediction layers stored by HF as extra decoder layers (`{hf_layer}{L+k}.…`, `L` = the
/// `layers` hyper-parameter) and by MindFormers mcore as `{ms_mtp}{k}.…`: the layer's decoder tensors are planned
/// by the family's own rules as a decoder layer and renamed to `{ms_mtp}{k}.{ms_inner}…`; its own tensors are
/// renamed; its copies of main-model tensors are dropped forward (named rule) and re-created by the reverse.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mtp {
    /// HF decoder-layer prefix, e.g. `model.layers.`.
    pub hf_layer: &'static str,
    /// MindSpore decoder-layer prefix, e.g. `decoder.layers.`.
    pub ms_layer: &'static str,
    /// MindSpore MTP prefix, e.g. `mtp.layers.`.
    pub ms_mtp: &'static str,
    /// Where the MTP block's decoder layer sits under `{ms_mtp}{k}.`, e.g. `transformer_layer.`.
    pub ms_inner: &'static str,
    /// The MTP block's own tensors: (HF leaf, MindSpore leaf).
    pub own: &'static [(&'static str, &'static str)],
    /// Copies of main-model tensors: (HF leaf, HF name of the main tensor).
    pub copies: &'static [(&'static str, &'static str)],
}

/// One model family, as data. Every field but `name`, `description` and `rules` has a default in [`Family::BASE`]:
/// write `Family { name: .., description: .., rules: .., ..Family::BASE }`.
#[derive(Clone, Copy, Debug)]
pub struct Family {
    /// The `--model` key.
    pub name: &'static str,
    /// Other accepted spellings.
    pub aliases: &'static [&'static str],
    /// One line for `--list-models`: what the family is and what it needs.
    pub description: &'static str,
    pub generation: Generation,
    /// Rule tables, tried in order (a family may reuse another's table after its own rules). The reverse direction
    /// also drops MindSpore training state ([`rules::TRAINING_STATE`]).
    pub rules: &'static [&'static [rules::Rule]],
    /// Hyper-parameters that must be known (config.json or flags) before a non-empty input is planned.
    pub needs: &'static [Hyper],
    /// Word-embedding names, HF and MindSpore spellings (patterns): their width is the hidden size.
    pub embeddings: &'static [&'static str],
    /// Forward outputs whose final dtype the model fixes (MindSpore name pattern, dtype): floating tensors only.
    pub dtype_pins: &'static [(&'static str, DType)],
    /// Head synthesised from a tied embedding (forward), when the input has no head.
    pub tied_head: Option<TiedHead>,
    /// Checks run on every plan.
    pub checks: &'static [Check],
    /// MTP layers after the decoder layers, if the family has them.
    pub mtp: Option<Mtp>,
}

impl Family {
    /// Defaults for the optional fields.
    pub const BASE: Family = Family {
        name: "",
        aliases: &[],
        description: "",
        generation: Generation::V2023,
        rules: &[],
        needs: &[],
        embeddings: &[],
        dtype_pins: &[],
        tied_head: None,
        checks: &[Check::Layers, Check::Hidden, Check::MoeLayers],
        mtp: None,
    };

    /// The `--model` key.
    pub fn name(&self) -> &'static str {
        self.name
    }
    /// Other accepted spellings.
    pub fn aliases(&self) -> &'static [&'static str] {
        self.aliases
    }
    /// One line for `--list-models`.
    pub fn describe(&self) -> &'static str {
        self.description
    }
    /// HF/torch names → MindSpore names.
    pub fn forward(&self, inputs: &[TensorInfo], hp: &HyperParams) -> Result<Plan, ModelError> {
        planner::plan(self, inputs, hp, false)
    }
    /// MindSpore names → HF/torch names (`--reversed`).
    pub fn reverse(&self, inputs: &[TensorInfo], hp: &HyperParams) -> Result<Plan, ModelError> {
        planner::plan(self, inputs, hp, true)
    }
}

/// Look a family up by name or alias.
pub fn find(name: &str) -> Result<&'static Family, ModelError> {
    registry()
        .iter()
        .copied()
        .find(|f| f.name == name || f.aliases.contains(&name))
        .ok_or_else(|| ModelError::UnknownModel(name.to_string()))
}

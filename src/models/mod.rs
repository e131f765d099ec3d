//! Model families: name rules and tensor ops, both directions. Models see tensor headers and hyper-parameters
//! only, never bytes or files. Each family is one file; [`registry`] lists them.

use crate::ops::Plan;
use crate::tensor::TensorInfo;

pub mod baichuan;
pub mod blip;
pub mod bloom;
pub mod glm;
pub mod gpt;
pub mod internlm;
pub mod llama;
pub mod qwen;
pub mod rules;
pub mod skywork;
pub mod wizardcoder;

/// Errors of the model layer.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("unknown model '{0}' (see --list-models)")]
    UnknownModel(String),
    #[error("{family}: {} input tensor(s) match no rule: {}", names.len(), names.join(", "))]
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

/// Hyper-parameters a family may need. `None` means unknown (neither config.json nor a flag gave it).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HyperParams {
    pub n_head: Option<usize>,
    pub n_kv_head: Option<usize>,
    pub hidden_size: Option<usize>,
    pub layers: Option<usize>,
    pub head_dim: Option<usize>,
}

/// config.json spellings of each hyper-parameter (formats spec §3.3), first match wins.
const HEADS_KEYS: &[&str] = &["num_attention_heads", "n_head", "num_heads", "n_heads"];
const HIDDEN_KEYS: &[&str] = &["hidden_size", "n_embd", "n_embed", "d_model"];
const LAYERS_KEYS: &[&str] = &["num_hidden_layers", "n_layer", "num_layers", "n_layers"];
const KV_KEYS: &[&str] = &["num_key_value_heads", "num_kv_heads", "n_head_kv"];
const HEAD_DIM_KEYS: &[&str] = &["head_dim", "d_kv", "kv_channels"];

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
        }
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
}

/// One model family: its names and ops in both directions.
pub trait Family: Sync {
    /// The `--model` key.
    fn name(&self) -> &'static str;
    /// Other accepted spellings.
    fn aliases(&self) -> &'static [&'static str] {
        &[]
    }
    /// One line for `--list-models`: what the family is and what it needs.
    fn describe(&self) -> &'static str;
    /// HF/torch names → MindSpore names.
    fn forward(&self, inputs: &[TensorInfo], hp: &HyperParams) -> Result<Plan, ModelError>;
    /// MindSpore names → HF/torch names (`--reversed`).
    fn reverse(&self, inputs: &[TensorInfo], hp: &HyperParams) -> Result<Plan, ModelError>;
}

/// Every family, in `--list-models` order.
pub fn registry() -> &'static [&'static dyn Family] {
    &[
        &llama::Llama,
        &glm::Glm,
        &qwen::Qwen,
        &internlm::Internlm,
        &baichuan::Baichuan,
        &gpt::Gpt,
        &bloom::Bloom,
        &blip::Blip,
        &wizardcoder::Wizardcoder,
        &skywork::Skywork,
    ]
}

/// Look a family up by name or alias.
pub fn find(name: &str) -> Result<&'static dyn Family, ModelError> {
    registry()
        .iter()
        .copied()
        .find(|f| f.name() == name || f.aliases().contains(&name))
        .ok_or_else(|| ModelError::UnknownModel(name.to_string()))
}

//! The plan of one job, from headers only: what each output tensor is (an op tree over the inputs), the inputs
//! dropped on purpose, the dtype policy (the one place where output dtypes are decided, pins included), tied outputs
//! (plain copies that the writer may share), the dry-run rendering and the planned peak memory.
//!
//! [`crate::convert`] opens the input, asks this module for the plan, then executes and writes it.

use std::collections::HashMap;
use std::path::PathBuf;

use crate::formats::OutTensor;
use crate::models::{Family, HyperParams, ModelError};
use crate::ops::{Dropped, Expr, PlanItem, ShapeError};
use crate::tensor::{Checkpoint, DType, TensorInfo};

/// Errors of planning.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("tensor '{tensor}': {msg}")]
    Tensor { tensor: String, msg: String },
    #[error("{0}")]
    Usage(String),
}

/// How output names come from input names.
#[derive(Clone, Copy, Debug)]
pub enum Mapping<'a> {
    /// A pure format conversion: every input under its own name.
    Identity,
    /// A model family's rules, in one direction.
    Model {
        family: &'a Family,
        hp: &'a HyperParams,
        reversed: bool,
    },
}

/// A checked plan: output items with their final dtypes, output headers (with tied copies marked), drops.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct JobPlan {
    pub items: Vec<PlanItem>,
    /// Output headers, in item order.
    pub outs: Vec<OutTensor>,
    /// Inputs deliberately not converted, with the rule that drops each.
    pub dropped: Vec<Dropped>,
}

/// What planning (headers only) tells before running: used for dry runs and memory admission.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PlanSummary {
    pub inputs: Vec<(PathBuf, u64)>,
    /// One line per output tensor: `target name <- op tree over source names  dtype shape`.
    pub lines: Vec<String>,
    /// Output tensor names in write order.
    pub outputs: Vec<String>,
    /// Total bytes of the output tensors.
    pub out_bytes: u64,
    /// Planned peak of memory the job itself holds (bytes): about the two largest buffers in flight.
    pub peak_bytes: u64,
}

impl JobPlan {
    /// Plan `source` through `mapping`, apply the dtype policy (`dtype`: the global `--dtype`), check every item
    /// against the headers and mark tied outputs. An empty plan is an error (never an empty checkpoint).
    pub fn new(
        source: &Checkpoint,
        mapping: Mapping,
        dtype: Option<DType>,
    ) -> Result<JobPlan, PlanError> {
        let infos = source.infos();
        let plan = match mapping {
            Mapping::Identity => crate::ops::Plan {
                items: infos
                    .iter()
                    .enumerate()
                    .map(|(i, t)| PlanItem::new(t.name.clone(), Expr::Input(i)))
                    .collect(),
                dropped: Vec::new(),
            },
            Mapping::Model {
                family,
                hp,
                reversed: false,
            } => family.forward(&infos, hp)?,
            Mapping::Model {
                family,
                hp,
                reversed: true,
            } => family.reverse(&infos, hp)?,
        };
        if plan.items.is_empty() {
            return Err(PlanError::Usage(format!(
                "nothing to convert ({} input tensors, {} dropped by rules); refusing to write an empty checkpoint",
                infos.len(),
                plan.dropped.len()
            )));
        }
        if let Some(to) = dtype.filter(|d| !d.is_float()) {
            return Err(PlanError::Usage(format!(
                "--dtype {to}: only fp32, fp16 and bf16"
            )));
        }
        let mut items = plan.items;
        apply_dtype(&mut items, &infos, dtype)
            .map_err(|(tensor, e)| PlanError::Tensor { tensor, msg: e.0 })?;
        let outs = out_tensors(source, &infos, &items)?;
        Ok(JobPlan {
            items,
            outs,
            dropped: plan.dropped,
        })
    }

    /// Total bytes of the output tensors.
    pub fn out_bytes(&self) -> u64 {
        self.outs.iter().map(|o| o.info.nbytes() as u64).sum()
    }

    /// Planned peak of the memory the job itself holds: a borrowed tensor costs nothing beyond the map; a computed
    /// one holds its materialised inputs, the result and the output buffer, about three times its size; plus a
    /// fixed 16 MiB for buffers.
    pub fn peak_bytes(&self) -> u64 {
        let largest_computed = self
            .items
            .iter()
            .zip(&self.outs)
            .filter(|(i, _)| i.expr.as_plain_input().is_none())
            .map(|(_, o)| 3 * o.info.nbytes() as u64)
            .max()
            .unwrap_or(0);
        largest_computed + (16 << 20)
    }

    /// The dry-run lines: `target <- op tree over source names  dtype shape`.
    pub fn lines(&self, infos: &[TensorInfo]) -> Vec<String> {
        self.items
            .iter()
            .zip(&self.outs)
            .map(|(item, out)| {
                format!(
                    "{} <- {}  {} {:?}",
                    item.name,
                    render(&item.expr, infos),
                    out.info.dtype,
                    out.info.shape
                )
            })
            .collect()
    }

    /// The summary a dry run and the runner's admission see.
    pub fn summary(&self, source: &Checkpoint, inputs: Vec<(PathBuf, u64)>) -> PlanSummary {
        PlanSummary {
            inputs,
            lines: self.lines(&source.infos()),
            outputs: self.items.iter().map(|i| i.name.clone()).collect(),
            out_bytes: self.out_bytes(),
            peak_bytes: self.peak_bytes(),
        }
    }

    /// One warning per dropped input.
    pub fn drop_warnings(&self) -> Vec<String> {
        self.dropped
            .iter()
            .map(|d| format!("dropped '{}': {}", d.name, d.rule))
            .collect()
    }
}

/// `names[#i]` rendering of an expression for dry runs.
pub fn render(expr: &Expr, infos: &[TensorInfo]) -> String {
    match expr {
        Expr::Input(i) => infos.get(*i).map_or("?".into(), |t| t.name.clone()),
        Expr::Reshape(s, shape) => format!("reshape({}, {shape:?})", render(s, infos)),
        Expr::Narrow {
            src,
            dim,
            start,
            len,
        } => format!(
            "narrow({}, dim={dim}, {start}..{})",
            render(src, infos),
            start + len
        ),
        Expr::Transpose(s) => format!("transpose({})", render(s, infos)),
        Expr::Concat(parts, dim) => format!(
            "concat([{}], dim={dim})",
            parts
                .iter()
                .map(|p| render(p, infos))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Expr::Cast(s, d) => format!("cast({}, {d})", render(s, infos)),
        Expr::Zeros(shape, d) => format!("zeros({shape:?}, {d})"),
        Expr::Dequant {
            weight,
            scale,
            block,
            to,
        } => format!(
            "dequant({}, {}, block={}x{}, {to})",
            render(weight, infos),
            render(scale, infos),
            block[0],
            block[1]
        ),
    }
}

/// Output headers, with tied copies marked: a plain copy of a source tensor already written (or of one it is
/// tied to) shares that output.
fn out_tensors(
    source: &Checkpoint,
    infos: &[TensorInfo],
    items: &[PlanItem],
) -> Result<Vec<OutTensor>, PlanError> {
    let mut first_copy: HashMap<usize, usize> = HashMap::new();
    let mut seen_names: HashMap<&str, usize> = HashMap::new();
    let mut outs = Vec::with_capacity(items.len());
    for (k, item) in items.iter().enumerate() {
        if let Some(prev) = seen_names.insert(item.name.as_str(), k) {
            return Err(PlanError::Tensor {
                tensor: item.name.clone(),
                msg: format!("the plan writes this name twice (outputs #{prev} and #{k})"),
            });
        }
        let (dtype, shape) = item.expr.infer(infos).map_err(|e| PlanError::Tensor {
            tensor: item.name.clone(),
            msg: e.0,
        })?;
        let tied_to = match item.expr {
            Expr::Input(i) => {
                let root = source.tensors[i].tied_to.unwrap_or(i);
                match first_copy.get(&root) {
                    Some(&o) => Some(o),
                    None => {
                        first_copy.insert(root, k);
                        None
                    }
                }
            }
            _ => None,
        };
        outs.push(OutTensor {
            info: TensorInfo::new(item.name.clone(), dtype, shape),
            tied_to,
        });
    }
    Ok(outs)
}

/// The dtype policy, the one place where output dtypes are decided. For each floating item, from its source
/// dtype `d`: a global `dtype` (from `--dtype`) casts to it; a family's pin then fixes the final dtype (glm's
/// `input_layernorm` goes through `--dtype` first and is then cast to fp16, exactly as the reference's `.half()` of
/// the converted model). Integer and boolean tensors are never cast.
pub fn apply_dtype(
    items: &mut [PlanItem],
    inputs: &[TensorInfo],
    dtype: Option<DType>,
) -> Result<(), (String, ShapeError)> {
    for item in items.iter_mut() {
        let (src, _) = item
            .expr
            .infer(inputs)
            .map_err(|e| (item.name.clone(), e))?;
        let Some(mut chain) = dtype_chain(src, dtype, item.pin) else {
            continue;
        };
        // A block dequantisation rounds its f32 product once, straight to the first dtype asked for (not to bf16
        // and then again).
        if let (Expr::Dequant { to, .. }, Some(&first)) = (&mut item.expr, chain.first()) {
            *to = first;
            chain.remove(0);
        }
        for to in chain {
            item.expr = std::mem::replace(&mut item.expr, Expr::Zeros(vec![], to)).cast(to);
        }
    }
    Ok(())
}

/// The casts a tensor of dtype `src` goes through: `None` for non-floating tensors.
pub fn dtype_chain(src: DType, global: Option<DType>, pin: Option<DType>) -> Option<Vec<DType>> {
    if !src.is_float() {
        return None;
    }
    let mut chain = Vec::new();
    let mut cur = src;
    for to in [global, pin].into_iter().flatten() {
        if to != cur && to.is_float() {
            chain.push(to);
            cur = to;
        }
    }
    Some(chain)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dtype_chain_applies_global_then_pin() {
        use DType::*;
        assert_eq!(dtype_chain(F32, None, None), Some(vec![]));
        assert_eq!(dtype_chain(F32, Some(BF16), None), Some(vec![BF16]));
        assert_eq!(dtype_chain(F32, None, Some(F16)), Some(vec![F16]));
        assert_eq!(
            dtype_chain(F32, Some(BF16), Some(F16)),
            Some(vec![BF16, F16])
        );
        assert_eq!(dtype_chain(F16, Some(F16), Some(F16)), Some(vec![]));
        assert_eq!(dtype_chain(F32, Some(F16), Some(F16)), Some(vec![F16]));
        assert_eq!(dtype_chain(I64, Some(F16), None), None);
    }

    /// `--dtype` on a dequantised FP8 weight: the f32 product is rounded once, straight to the dtype asked for.
    #[test]
    fn dtype_on_a_dequantisation_rounds_once() {
        use DType::*;
        let inputs = [
            TensorInfo::new("w", F8E4M3, vec![200, 64]),
            TensorInfo::new("w_scale_inv", F32, vec![2, 1]),
        ];
        let deq = Expr::Input(0).dequant(Expr::Input(1), [128, 128], BF16);
        for (global, want) in [(Some(F32), F32), (Some(F16), F16), (None, BF16)] {
            let mut items = vec![PlanItem::new("w".to_string(), deq.clone())];
            apply_dtype(&mut items, &inputs, global).unwrap();
            match &items[0].expr {
                Expr::Dequant { to, .. } => assert_eq!(*to, want, "--dtype {global:?}"),
                other => {
                    panic!("--dtype {global:?}: expected a bare dequantisation, got {other:?}")
                }
            }
        }
    }
}

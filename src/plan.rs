//! The plan of one job: output items, drops, the dtype policy (one place), and what a dry run shows.

use crate::ops::{Expr, PlanItem, ShapeError};
use crate::tensor::{DType, TensorInfo};

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
        let Some(chain) = dtype_chain(src, dtype, item.pin) else {
            continue;
        };
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
}

//! The op tree: each output tensor is a small expression over input tensors. Models build these from headers
//! only; the executor ([`crate::exec`]) evaluates them with candle (or as plain byte copies where possible).

use std::fmt;

use crate::tensor::{numel, DType, TensorInfo};

/// An expression producing one tensor from the input checkpoint's tensors.
#[derive(Clone, Debug, PartialEq)]
pub enum Expr {
    /// Input tensor number `i` (index into the source's tensor list), as stored.
    Input(usize),
    /// Same elements, new shape (row-major), numel unchanged.
    Reshape(Box<Expr>, Vec<usize>),
    /// `len` entries of dimension `dim` from `start`.
    Narrow {
        src: Box<Expr>,
        dim: usize,
        start: usize,
        len: usize,
    },
    /// Swap the two dimensions of a 2-D tensor.
    Transpose(Box<Expr>),
    /// Concatenate along `dim`; all parts share dtype and the other dims.
    Concat(Vec<Expr>, usize),
    /// Convert the elements to a floating dtype (round to nearest even when narrowing).
    Cast(Box<Expr>, DType),
    /// A tensor of zeros.
    Zeros(Vec<usize>, DType),
    /// Block dequantisation ([`crate::fp8`]) of a 2-D FP8 `weight` by its `[⌈rows/bm⌉, ⌈cols/bn⌉]` `scale`
    /// (F32/BF16/F16/F8_E8M0): `weight × scale` in f32, rounded once to `to`.
    Dequant {
        weight: Box<Expr>,
        scale: Box<Expr>,
        block: [usize; 2],
        to: DType,
    },
}

/// Errors found while checking an expression against the input headers.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ShapeError(pub String);

impl Expr {
    pub fn input(i: usize) -> Expr {
        Expr::Input(i)
    }
    pub fn reshape(self, shape: Vec<usize>) -> Expr {
        Expr::Reshape(Box::new(self), shape)
    }
    pub fn narrow(self, dim: usize, start: usize, len: usize) -> Expr {
        Expr::Narrow {
            src: Box::new(self),
            dim,
            start,
            len,
        }
    }
    pub fn transpose(self) -> Expr {
        Expr::Transpose(Box::new(self))
    }
    pub fn cast(self, dtype: DType) -> Expr {
        Expr::Cast(Box::new(self), dtype)
    }
    /// Block dequantisation of `self` (FP8) by `scale`, see [`Expr::Dequant`].
    pub fn dequant(self, scale: Expr, block: [usize; 2], to: DType) -> Expr {
        Expr::Dequant {
            weight: Box::new(self),
            scale: Box::new(scale),
            block,
            to,
        }
    }

    /// Dtype and shape of the result, checked against the input headers.
    pub fn infer(&self, inputs: &[TensorInfo]) -> Result<(DType, Vec<usize>), ShapeError> {
        self.infer_by(&|i| inputs.get(i))
    }

    /// [`infer`](Self::infer) with the input headers looked up by index (so callers holding headers inside other
    /// structures need not copy them).
    pub fn infer_by<'a>(
        &self,
        inputs: &impl Fn(usize) -> Option<&'a TensorInfo>,
    ) -> Result<(DType, Vec<usize>), ShapeError> {
        match self {
            Expr::Input(i) => inputs(*i)
                .map(|t| (t.dtype, t.shape.clone()))
                .ok_or_else(|| ShapeError(format!("no input tensor #{i}"))),
            Expr::Reshape(src, shape) => {
                let (d, s) = src.infer_by(inputs)?;
                if numel(&s) != numel(shape) {
                    return Err(ShapeError(format!(
                        "cannot reshape {s:?} to {shape:?}: element counts differ"
                    )));
                }
                Ok((d, shape.clone()))
            }
            Expr::Narrow {
                src,
                dim,
                start,
                len,
            } => {
                let (d, mut s) = src.infer_by(inputs)?;
                match s.get(*dim) {
                    Some(&n) if start.checked_add(*len).is_some_and(|e| e <= n) => {
                        s[*dim] = *len;
                        Ok((d, s))
                    }
                    _ => Err(ShapeError(format!(
                        "cannot take [{start}, {start}+{len}) of dim {dim} of shape {s:?}"
                    ))),
                }
            }
            Expr::Transpose(src) => {
                let (d, s) = src.infer_by(inputs)?;
                if s.len() != 2 {
                    return Err(ShapeError(format!(
                        "transpose needs a 2-D tensor, got shape {s:?}"
                    )));
                }
                Ok((d, vec![s[1], s[0]]))
            }
            Expr::Concat(parts, dim) => {
                let mut it = parts.iter();
                let first = it
                    .next()
                    .ok_or_else(|| ShapeError("concat of nothing".into()))?;
                let (d, mut s) = first.infer_by(inputs)?;
                if *dim >= s.len() {
                    return Err(ShapeError(format!(
                        "concat dim {dim} out of range for {s:?}"
                    )));
                }
                for p in it {
                    let (pd, ps) = p.infer_by(inputs)?;
                    let same_rest = ps.len() == s.len()
                        && ps
                            .iter()
                            .zip(&s)
                            .enumerate()
                            .all(|(k, (a, b))| k == *dim || a == b);
                    if pd != d || !same_rest {
                        return Err(ShapeError(format!(
                            "cannot concatenate {pd} {ps:?} to {d} {s:?} along dim {dim}"
                        )));
                    }
                    s[*dim] += ps[*dim];
                }
                Ok((d, s))
            }
            Expr::Cast(src, to) => {
                let (d, s) = src.infer_by(inputs)?;
                if !d.is_float() || !to.is_float() {
                    return Err(ShapeError(format!(
                        "cast {d} -> {to}: only floating dtypes cast"
                    )));
                }
                Ok((*to, s))
            }
            Expr::Zeros(shape, d) => Ok((*d, shape.clone())),
            Expr::Dequant {
                weight,
                scale,
                block,
                to,
            } => {
                let (wd, ws) = weight.infer_by(inputs)?;
                let (sd, ss) = scale.infer_by(inputs)?;
                if !matches!(wd, DType::F8E4M3 | DType::F8E5M2) {
                    return Err(ShapeError(format!(
                        "dequantise: the weight is {wd}, expected F8_E4M3 or F8_E5M2"
                    )));
                }
                if !matches!(sd, DType::F32 | DType::BF16 | DType::F16 | DType::F8E8M0) {
                    return Err(ShapeError(format!(
                        "dequantise: the scale is {sd}, expected F32, BF16, F16 or F8_E8M0"
                    )));
                }
                if !matches!(to, DType::F32 | DType::BF16 | DType::F16) {
                    return Err(ShapeError(format!(
                        "dequantise to {to}: expected F32, BF16 or F16"
                    )));
                }
                crate::fp8::block_size(&ws, &ss, Some(*block)).map_err(ShapeError)?;
                Ok((*to, ws))
            }
        }
    }

    /// Input tensors this expression reads.
    pub fn inputs(&self, out: &mut Vec<usize>) {
        match self {
            Expr::Input(i) => out.push(*i),
            Expr::Reshape(s, _)
            | Expr::Narrow { src: s, .. }
            | Expr::Transpose(s)
            | Expr::Cast(s, _) => s.inputs(out),
            Expr::Concat(parts, _) => parts.iter().for_each(|p| p.inputs(out)),
            Expr::Zeros(..) => {}
            Expr::Dequant { weight, scale, .. } => {
                weight.inputs(out);
                scale.inputs(out);
            }
        }
    }

    /// Whether the result is an input's bytes unchanged (possibly reshaped): a plain byte copy.
    pub fn as_plain_input(&self) -> Option<usize> {
        match self {
            Expr::Input(i) => Some(*i),
            Expr::Reshape(s, _) => s.as_plain_input(),
            _ => None,
        }
    }
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expr::Input(i) => write!(f, "#{i}"),
            Expr::Reshape(s, shape) => write!(f, "reshape({s}, {shape:?})"),
            Expr::Narrow {
                src,
                dim,
                start,
                len,
            } => write!(f, "narrow({src}, dim={dim}, {start}..{})", start + len),
            Expr::Transpose(s) => write!(f, "transpose({s})"),
            Expr::Concat(parts, dim) => {
                write!(f, "concat(")?;
                for (k, p) in parts.iter().enumerate() {
                    if k > 0 {
                        write!(f, ", ")?;
                    }
                    write!(f, "{p}")?;
                }
                write!(f, "; dim={dim})")
            }
            Expr::Cast(s, d) => write!(f, "cast({s}, {d})"),
            Expr::Zeros(shape, d) => write!(f, "zeros({shape:?}, {d})"),
            Expr::Dequant {
                weight,
                scale,
                block,
                to,
            } => write!(
                f,
                "dequant({weight}, {scale}, block={}x{}, {to})",
                block[0], block[1]
            ),
        }
    }
}

/// One output tensor of a plan.
#[derive(Clone, Debug, PartialEq)]
pub struct PlanItem {
    pub name: String,
    pub expr: Expr,
    /// The model fixed this tensor's dtype (e.g. glm's fp16 `input_layernorm`): a global `--dtype` leaves it.
    pub pinned_dtype: bool,
}

impl PlanItem {
    pub fn new(name: impl Into<String>, expr: Expr) -> Self {
        PlanItem {
            name: name.into(),
            expr,
            pinned_dtype: false,
        }
    }
}

/// An input tensor that the plan deliberately does not convert, and the named rule that drops it.
#[derive(Clone, Debug, PartialEq)]
pub struct Dropped {
    pub name: String,
    pub rule: String,
}

/// What to write: output tensors in order, and the inputs dropped on purpose.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    pub items: Vec<PlanItem>,
    pub dropped: Vec<Dropped>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn infos() -> Vec<TensorInfo> {
        vec![
            TensorInfo::new("w", DType::F32, vec![12, 4]),
            TensorInfo::new("b", DType::F16, vec![12]),
        ]
    }

    #[test]
    fn infer_checks_shapes() {
        let i = infos();
        let e = Expr::input(0)
            .reshape(vec![2, 3, 2, 4])
            .narrow(1, 1, 1)
            .reshape(vec![4, 4]);
        assert_eq!(e.infer(&i).unwrap(), (DType::F32, vec![4, 4]));
        assert_eq!(Expr::input(0).transpose().infer(&i).unwrap().1, vec![4, 12]);
        assert!(Expr::input(0).narrow(0, 10, 3).infer(&i).is_err());
        assert!(Expr::input(1).transpose().infer(&i).is_err());
        let c = Expr::Concat(vec![Expr::input(0), Expr::input(0)], 1);
        assert_eq!(c.infer(&i).unwrap().1, vec![12, 8]);
        assert!(Expr::Concat(vec![Expr::input(0), Expr::input(1)], 0)
            .infer(&i)
            .is_err());
        assert_eq!(
            Expr::input(1).cast(DType::BF16).infer(&i).unwrap().0,
            DType::BF16
        );
    }
}

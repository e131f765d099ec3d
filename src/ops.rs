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

    /// The same expression with every `Input(i)` replaced by `f(i)`.
    pub fn map_inputs(&self, f: &impl Fn(usize) -> Expr) -> Expr {
        let b = |e: &Expr| Box::new(e.map_inputs(f));
        match self {
            Expr::Input(i) => f(*i),
            Expr::Reshape(s, shape) => Expr::Reshape(b(s), shape.clone()),
            Expr::Narrow {
                src,
                dim,
                start,
                len,
            } => Expr::Narrow {
                src: b(src),
                dim: *dim,
                start: *start,
                len: *len,
            },
            Expr::Transpose(s) => Expr::Transpose(b(s)),
            Expr::Concat(parts, dim) => {
                Expr::Concat(parts.iter().map(|p| p.map_inputs(f)).collect(), *dim)
            }
            Expr::Cast(s, d) => Expr::Cast(b(s), *d),
            Expr::Zeros(shape, d) => Expr::Zeros(shape.clone(), *d),
            Expr::Dequant {
                weight,
                scale,
                block,
                to,
            } => Expr::Dequant {
                weight: b(weight),
                scale: b(scale),
                block: *block,
                to: *to,
            },
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

// ------------------------------------------------------------------------------------------------------------------
// Layouts: how N parts sit inside one fused tensor, both ways.

/// Which axis a [`Layout::Concat`] uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Axis {
    /// Dimension 0 (rows).
    First,
    /// The last dimension (columns of a 2-D weight; dimension 0 of a 1-D bias).
    Last,
}

impl Axis {
    /// The dimension this axis names in a tensor of `rank` dimensions.
    pub fn dim(self, rank: usize) -> usize {
        match self {
            Axis::First => 0,
            Axis::Last => rank.saturating_sub(1),
        }
    }
}

/// How N parts sit inside one fused tensor. Every layout works both ways: [`Layout::split`] cuts a fused tensor
/// into its parts and [`Layout::fuse`] is its exact inverse. Both build views and row gathers only (reshape,
/// narrow, concat), so the executor streams them. Layouts know no hyper-parameters: the caller gives the numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// The parts one after another along an axis: `extents[p]` entries of that axis each.
    Concat(Axis),
    /// The parts alternate row by row: fused row `r·N + p` is row `r` of part `p` (N equal parts), as the
    /// MindFormers mcore fused gate/up weight (`linear_fc1`: row 2r = gate[r], 2r+1 = up[r]).
    InterleaveRows,
    /// Attention heads by KV group: the fused rows are `groups` blocks, and block g holds part 0's g-th slice,
    /// then part 1's g-th slice, and so on (`extents[p]` rows each). With parts q/k/v and extents
    /// `[q_heads_per_group·head_dim, head_dim, head_dim]` this is the MindFormers mcore `linear_qkv`; with
    /// `groups = n_head` and extents `[head_dim; 3]` it is bloom's `(n_head, 3, head_dim)` fused q/k/v.
    GroupedHeads { groups: usize },
    /// The parts stacked on a new leading axis: fused `[N, …]`, part p = fused[p].
    Stack,
    /// A gated MLP's gate and up parts in one tensor (MindFormers mcore `linear_fc1`): [`Layout::InterleaveRows`]
    /// (MindFormers 2.1.0) or [`Layout::Concat`] along rows (2.0.0), as the model's MLP layout says. The planner
    /// resolves it before splitting or fusing.
    GatedMlp,
}

impl Layout {
    /// Cut `fused` (of shape `shape`) into `extents.len()` parts. `extents` are the parts' extents along the cut
    /// (for [`Layout::GroupedHeads`], per group); [`Layout::InterleaveRows`] and [`Layout::Stack`] use only their
    /// count.
    pub fn split(
        self,
        fused: &Expr,
        shape: &[usize],
        extents: &[usize],
    ) -> Result<Vec<Expr>, ShapeError> {
        let n = extents.len();
        if n == 0 {
            return Err(ShapeError("split into no parts".into()));
        }
        let (&rows, rest) = shape
            .split_first()
            .ok_or_else(|| ShapeError("cannot split a scalar".into()))?;
        let with_rows = |r: usize| -> Vec<usize> {
            let mut v = vec![r];
            v.extend_from_slice(rest);
            v
        };
        match self {
            Layout::Concat(axis) => {
                let dim = axis.dim(shape.len());
                let total: usize = extents.iter().sum();
                if total != shape[dim] {
                    return Err(ShapeError(format!(
                        "dim {dim} of shape {shape:?} is {}, but the parts need {total} ({extents:?})",
                        shape[dim]
                    )));
                }
                let mut start = 0;
                Ok(extents
                    .iter()
                    .map(|&len| {
                        let e = fused.clone().narrow(dim, start, len);
                        start += len;
                        e
                    })
                    .collect())
            }
            Layout::InterleaveRows => {
                if rows % n != 0 {
                    return Err(ShapeError(format!(
                        "{rows} rows of shape {shape:?} do not interleave {n} equal parts"
                    )));
                }
                let r = rows / n;
                let mut grouped = vec![r, n];
                grouped.extend_from_slice(rest);
                Ok((0..n)
                    .map(|p| {
                        fused
                            .clone()
                            .reshape(grouped.clone())
                            .narrow(1, p, 1)
                            .reshape(with_rows(r))
                    })
                    .collect())
            }
            Layout::GroupedHeads { groups } => {
                let per: usize = extents.iter().sum();
                if groups == 0 || groups.checked_mul(per) != Some(rows) {
                    return Err(ShapeError(format!(
                        "{rows} rows of shape {shape:?} are not {groups} groups of {per} ({extents:?})"
                    )));
                }
                let mut grouped = vec![groups, per];
                grouped.extend_from_slice(rest);
                let mut start = 0;
                Ok(extents
                    .iter()
                    .map(|&len| {
                        let e = fused
                            .clone()
                            .reshape(grouped.clone())
                            .narrow(1, start, len)
                            .reshape(with_rows(groups * len));
                        start += len;
                        e
                    })
                    .collect())
            }
            Layout::GatedMlp => Err(ShapeError(
                "the gated-MLP layout must be resolved before splitting".into(),
            )),
            Layout::Stack => {
                if rows != n {
                    return Err(ShapeError(format!(
                        "dim 0 of shape {shape:?} is {rows}, expected {n} stacked parts"
                    )));
                }
                Ok((0..n)
                    .map(|p| fused.clone().narrow(0, p, 1).reshape(rest.to_vec()))
                    .collect())
            }
        }
    }

    /// Fuse `parts` (with their shapes) into one tensor: the inverse of [`Layout::split`].
    pub fn fuse(self, parts: &[Expr], shapes: &[Vec<usize>]) -> Result<Expr, ShapeError> {
        let first = shapes
            .first()
            .ok_or_else(|| ShapeError("fuse of no parts".into()))?;
        let same = || -> Result<(), ShapeError> {
            match shapes.iter().find(|s| *s != first) {
                Some(s) => Err(ShapeError(format!(
                    "parts must have equal shapes: {s:?} vs {first:?}"
                ))),
                None => Ok(()),
            }
        };
        let (&rows, rest) = first
            .split_first()
            .ok_or_else(|| ShapeError("cannot fuse scalars".into()))?;
        let n = parts.len();
        Ok(match self {
            Layout::Concat(axis) => Expr::Concat(parts.to_vec(), axis.dim(first.len())),
            Layout::InterleaveRows => {
                same()?;
                let mut one = vec![rows, 1];
                one.extend_from_slice(rest);
                let mut fused = vec![rows * n];
                fused.extend_from_slice(rest);
                Expr::Concat(
                    parts
                        .iter()
                        .map(|p| p.clone().reshape(one.clone()))
                        .collect(),
                    1,
                )
                .reshape(fused)
            }
            Layout::GroupedHeads { groups } => {
                let mut total = 0usize;
                let mut pieces = Vec::with_capacity(n);
                for (p, s) in parts.iter().zip(shapes) {
                    let (&r, prest) = s
                        .split_first()
                        .ok_or_else(|| ShapeError("cannot fuse scalars".into()))?;
                    if prest != rest || groups == 0 || r % groups != 0 {
                        return Err(ShapeError(format!(
                            "part of shape {s:?} does not split into {groups} groups beside {first:?}"
                        )));
                    }
                    let mut g = vec![groups, r / groups];
                    g.extend_from_slice(rest);
                    pieces.push(p.clone().reshape(g));
                    total += r;
                }
                let mut fused = vec![total];
                fused.extend_from_slice(rest);
                Expr::Concat(pieces, 1).reshape(fused)
            }
            Layout::GatedMlp => {
                return Err(ShapeError(
                    "the gated-MLP layout must be resolved before fusing".into(),
                ))
            }
            Layout::Stack => {
                same()?;
                let mut one = vec![1];
                one.extend_from_slice(first);
                Expr::Concat(
                    parts
                        .iter()
                        .map(|p| p.clone().reshape(one.clone()))
                        .collect(),
                    0,
                )
            }
        })
    }
}

/// One output tensor of a plan.
#[derive(Clone, Debug, PartialEq)]
pub struct PlanItem {
    pub name: String,
    pub expr: Expr,
    /// The model fixes this floating tensor's final dtype (e.g. glm's fp16 `input_layernorm`); the dtype policy
    /// ([`crate::plan::apply_dtype`]) applies it after a global `--dtype`.
    pub pin: Option<DType>,
}

impl PlanItem {
    pub fn new(name: impl Into<String>, expr: Expr) -> Self {
        PlanItem {
            name: name.into(),
            expr,
            pin: None,
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

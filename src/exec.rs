//! Evaluation of the op tree ([`crate::ops::Expr`]) into row-major bytes.
//!
//! A plain input (possibly reshaped) is handed out as borrowed bytes straight from the reader's memory map, and a
//! narrow along the leading dimension of one is a sub-slice of it: no tensor at all. Everything else — transposes,
//! head splits, fusions, casts — runs on candle tensors on the chosen device. Dtypes candle cannot hold are moved
//! as a candle dtype of the same width (movement is bit-exact whatever the bits mean); casts only touch floats.

use std::borrow::Cow;

use candle_core::{DType as CDType, Device, Tensor};
use rayon::prelude::*;

use crate::ops::Expr;
use crate::tensor::{DType, TensorEntry};

/// Errors of evaluation (candle failures, device problems).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ExecError(pub String);

impl From<candle_core::Error> for ExecError {
    fn from(e: candle_core::Error) -> Self {
        ExecError(e.to_string())
    }
}

type Result<T> = std::result::Result<T, ExecError>;

/// The device a job computes on.
#[derive(Clone, Debug)]
pub struct Compute {
    device: Device,
}

impl Compute {
    pub fn cpu() -> Compute {
        Compute {
            device: Device::Cpu,
        }
    }

    /// `cpu`, `cuda`, `cuda:N` or `auto` (CUDA when built with the `cuda` feature and a GPU is present).
    pub fn from_spec(spec: Option<&str>) -> Result<Compute> {
        let spec = spec.unwrap_or("auto");
        let device = match spec {
            "cpu" => Device::Cpu,
            "auto" => {
                if candle_core::utils::cuda_is_available() {
                    Device::cuda_if_available(0)?
                } else {
                    Device::Cpu
                }
            }
            s if s == "cuda" || s.starts_with("cuda:") => {
                let n = match s.strip_prefix("cuda:") {
                    Some(n) => n
                        .parse::<usize>()
                        .map_err(|_| ExecError(format!("bad device '{s}': expected cuda:N")))?,
                    None => 0,
                };
                if !candle_core::utils::cuda_is_available() {
                    return Err(ExecError(format!(
                        "device '{s}': this build has no CUDA support (build with --features cuda)"
                    )));
                }
                Device::new_cuda(n)?
            }
            s => {
                return Err(ExecError(format!(
                    "unknown device '{s}': expected cpu, cuda, cuda:N or auto"
                )))
            }
        };
        Ok(Compute { device })
    }

    pub fn name(&self) -> String {
        match &self.device {
            Device::Cpu => "cpu".into(),
            Device::Cuda(_) => "cuda".into(),
            Device::Metal(_) => "metal".into(),
        }
    }

    /// Evaluate `expr` over `inputs` into the result's row-major bytes, also counting values that a narrowing cast
    /// turned from finite into infinite (reported as a warning).
    pub fn eval<'a>(&self, expr: &Expr, inputs: &'a [TensorEntry]) -> Result<Evaluated<'a>> {
        if let Some(i) = expr.as_plain_input() {
            return Ok(Evaluated {
                bytes: input(inputs, i)?.data.bytes(),
                overflowed: 0,
            });
        }
        if let Some(b) = borrowed(expr, inputs) {
            return Ok(Evaluated {
                bytes: Cow::Borrowed(b),
                overflowed: 0,
            });
        }
        let mut overflowed = 0u64;
        // A cast of a plain input needs no movement: cast it chunk-wise in parallel.
        if let Expr::Cast(src, to) = expr {
            if let Some(b) = borrowed(src, inputs) {
                let from = infer_dtype(src, inputs)?;
                let bytes = self.cast_bytes(b, from, *to, &mut overflowed)?;
                return Ok(Evaluated {
                    bytes: Cow::Owned(bytes),
                    overflowed,
                });
            }
        }
        let (t, dtype) = self.tensor(expr, inputs, &mut overflowed)?;
        Ok(Evaluated {
            bytes: Cow::Owned(tensor_bytes(&t, dtype)?),
            overflowed,
        })
    }

    fn tensor(
        &self,
        expr: &Expr,
        inputs: &[TensorEntry],
        overflowed: &mut u64,
    ) -> Result<(Tensor, DType)> {
        if let Some(b) = borrowed(expr, inputs) {
            let (dtype, shape) = shape_of(expr, inputs)?;
            let t = Tensor::from_raw_buffer(b, carrier(dtype), &shape, &self.device)?;
            return Ok((t, dtype));
        }
        Ok(match expr {
            Expr::Input(i) => {
                let e = input(inputs, *i)?;
                let b = e.data.bytes();
                let t = Tensor::from_raw_buffer(
                    &b,
                    carrier(e.info.dtype),
                    &e.info.shape,
                    &self.device,
                )?;
                (t, e.info.dtype)
            }
            Expr::Reshape(src, shape) => {
                let (t, d) = self.tensor(src, inputs, overflowed)?;
                (t.reshape(shape.as_slice())?, d)
            }
            Expr::Narrow {
                src,
                dim,
                start,
                len,
            } => {
                let (t, d) = self.tensor(src, inputs, overflowed)?;
                (t.narrow(*dim, *start, *len)?, d)
            }
            Expr::Transpose(src) => {
                let (t, d) = self.tensor(src, inputs, overflowed)?;
                (t.t()?.contiguous()?, d)
            }
            Expr::Concat(parts, dim) => {
                let mut ts = Vec::with_capacity(parts.len());
                let mut dtype = None;
                for p in parts {
                    let (t, d) = self.tensor(p, inputs, overflowed)?;
                    dtype = Some(d);
                    ts.push(t);
                }
                let d = dtype.ok_or_else(|| ExecError("concat of nothing".into()))?;
                (Tensor::cat(&ts, *dim)?, d)
            }
            Expr::Cast(src, to) => {
                let (t, from) = self.tensor(src, inputs, overflowed)?;
                let t = t.contiguous()?;
                let out = t.to_dtype(carrier(*to))?;
                if narrowing(from, *to) {
                    *overflowed += count_inf(&out)?.saturating_sub(count_inf(&t)?);
                }
                (out, *to)
            }
            Expr::Zeros(shape, d) => (
                Tensor::zeros(shape.as_slice(), carrier(*d), &self.device)?,
                *d,
            ),
        })
    }

    /// Cast a flat buffer of `from` elements to `to`, in parallel chunks, each on a candle tensor.
    fn cast_bytes(
        &self,
        b: &[u8],
        from: DType,
        to: DType,
        overflowed: &mut u64,
    ) -> Result<Vec<u8>> {
        const CHUNK: usize = 1 << 20; // elements per chunk
        let n = b.len() / from.size();
        let mut out = vec![0u8; n * to.size()];
        let inf: u64 = out
            .par_chunks_mut(CHUNK * to.size())
            .zip(b.par_chunks(CHUNK * from.size()))
            .map(|(o, i)| -> Result<u64> {
                let k = i.len() / from.size();
                let t = Tensor::from_raw_buffer(i, carrier(from), &[k], &self.device)?;
                let c = t.to_dtype(carrier(to))?;
                let over = if narrowing(from, to) {
                    count_inf(&c)?.saturating_sub(count_inf(&t)?)
                } else {
                    0
                };
                o.copy_from_slice(&tensor_bytes(&c, to)?);
                Ok(over)
            })
            .try_reduce(|| 0, |a, b| Ok(a + b))?;
        *overflowed += inf;
        Ok(out)
    }
}

/// The result of evaluating one expression.
pub struct Evaluated<'a> {
    pub bytes: Cow<'a, [u8]>,
    /// Finite values that became ±inf in a narrowing cast.
    pub overflowed: u64,
}

fn input(inputs: &[TensorEntry], i: usize) -> Result<&TensorEntry> {
    inputs
        .get(i)
        .ok_or_else(|| ExecError(format!("no input tensor #{i}")))
}

/// Bytes of `expr` if they are a contiguous part of an input's contiguous bytes (plain copy or a leading-dim
/// narrow of one): no tensor needed.
fn borrowed<'a>(expr: &Expr, inputs: &'a [TensorEntry]) -> Option<&'a [u8]> {
    match expr {
        Expr::Input(i) => match &inputs.get(*i)?.data.bytes() {
            Cow::Borrowed(b) => Some(b),
            Cow::Owned(_) => None,
        },
        Expr::Reshape(src, _) => borrowed(src, inputs),
        Expr::Narrow {
            src,
            dim,
            start,
            len,
        } => {
            let (dtype, shape) = shape_of(src, inputs).ok()?;
            // Narrowing dim d is a contiguous byte range when every dim before d has size 1.
            if shape.get(..*dim)?.iter().any(|&s| s != 1) {
                return None;
            }
            let inner: usize = shape.get(dim + 1..)?.iter().product::<usize>() * dtype.size();
            let b = borrowed(src, inputs)?;
            b.get(start * inner..(start + len) * inner)
        }
        _ => None,
    }
}

fn shape_of(expr: &Expr, inputs: &[TensorEntry]) -> Result<(DType, Vec<usize>)> {
    let infos: Vec<_> = collect_infos(inputs);
    expr.infer(&infos).map_err(|e| ExecError(e.0))
}

fn infer_dtype(expr: &Expr, inputs: &[TensorEntry]) -> Result<DType> {
    Ok(shape_of(expr, inputs)?.0)
}

fn collect_infos(inputs: &[TensorEntry]) -> Vec<crate::tensor::TensorInfo> {
    inputs.iter().map(|e| e.info.clone()).collect()
}

/// The candle dtype that carries our dtype's bits: itself where candle has it, else one of the same width.
fn carrier(d: DType) -> CDType {
    match d {
        DType::F64 => CDType::F64,
        DType::F32 => CDType::F32,
        DType::F16 => CDType::F16,
        DType::BF16 => CDType::BF16,
        DType::I64 | DType::U64 => CDType::I64,
        DType::I32 => CDType::I32,
        DType::U32 => CDType::U32,
        DType::I16 | DType::U16 => CDType::I16,
        DType::I8 | DType::U8 | DType::Bool => CDType::U8,
    }
}

/// Whether a cast can turn a finite value into an infinite one.
fn narrowing(from: DType, to: DType) -> bool {
    let range = |d: DType| match d {
        DType::F16 => 0,
        DType::BF16 | DType::F32 => 1,
        _ => 2,
    };
    range(to) < range(from) || (from == DType::F32 && to == DType::BF16)
}

/// Number of infinite elements of a floating tensor.
fn count_inf(t: &Tensor) -> Result<u64> {
    let t = t.to_dtype(CDType::F32)?.flatten_all()?;
    let v = t.to_vec1::<f32>()?;
    Ok(v.par_iter().filter(|x| x.is_infinite()).count() as u64)
}

/// Row-major bytes of a tensor (copied to the host when it lives on a GPU).
pub fn tensor_bytes(t: &Tensor, dtype: DType) -> Result<Vec<u8>> {
    let t = t.to_device(&Device::Cpu)?.contiguous()?.flatten_all()?;
    fn raw<T: Copy>(v: Vec<T>) -> Vec<u8> {
        let n = std::mem::size_of_val(v.as_slice());
        let mut out = vec![0u8; n];
        // SAFETY: plain-old-data elements viewed as bytes (little-endian host).
        unsafe { std::ptr::copy_nonoverlapping(v.as_ptr() as *const u8, out.as_mut_ptr(), n) };
        out
    }
    Ok(match carrier(dtype) {
        CDType::U8 => t.to_vec1::<u8>()?,
        CDType::U32 => raw(t.to_vec1::<u32>()?),
        CDType::I16 => raw(t.to_vec1::<i16>()?),
        CDType::I32 => raw(t.to_vec1::<i32>()?),
        CDType::I64 => raw(t.to_vec1::<i64>()?),
        CDType::BF16 => raw(t.to_vec1::<half::bf16>()?),
        CDType::F16 => raw(t.to_vec1::<half::f16>()?),
        CDType::F32 => raw(t.to_vec1::<f32>()?),
        CDType::F64 => raw(t.to_vec1::<f64>()?),
        other => return Err(ExecError(format!("unexpected carrier dtype {other:?}"))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::{Backing, DataRef, TensorInfo};

    fn entry(name: &str, dtype: DType, shape: Vec<usize>, bytes: Vec<u8>) -> TensorEntry {
        let n = bytes.len();
        TensorEntry {
            info: TensorInfo::new(name, dtype, shape),
            data: DataRef::Contiguous {
                backing: Backing::owned(bytes),
                range: 0..n,
            },
            tied_to: None,
        }
    }

    fn f32s(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    #[test]
    fn movement_ops_are_row_major() {
        let c = Compute::cpu();
        let w = entry("w", DType::F32, vec![2, 3], f32s(&[0., 1., 2., 3., 4., 5.]));
        let inputs = vec![w];
        let t = c.eval(&Expr::input(0).transpose(), &inputs).unwrap();
        assert_eq!(t.bytes.as_ref(), f32s(&[0., 3., 1., 4., 2., 5.]));
        let n = c.eval(&Expr::input(0).narrow(0, 1, 1), &inputs).unwrap();
        assert!(matches!(n.bytes, Cow::Borrowed(_)));
        assert_eq!(n.bytes.as_ref(), f32s(&[3., 4., 5.]));
        let n = c.eval(&Expr::input(0).narrow(1, 1, 2), &inputs).unwrap();
        assert_eq!(n.bytes.as_ref(), f32s(&[1., 2., 4., 5.]));
        let cat = Expr::Concat(vec![Expr::input(0), Expr::input(0).narrow(0, 0, 1)], 0);
        assert_eq!(c.eval(&cat, &inputs).unwrap().bytes.len(), 36);
    }

    #[test]
    fn odd_dtypes_move_bit_exactly() {
        let c = Compute::cpu();
        let raw: Vec<u8> = (0..12u8).collect();
        for (d, shape) in [
            (DType::U16, vec![2, 3]),
            (DType::Bool, vec![3, 4]),
            (DType::I8, vec![4, 3]),
            (DType::U64, vec![1, 1]),
        ] {
            let bytes = raw[..shape.iter().product::<usize>() * d.size()].to_vec();
            let inputs = vec![entry("x", d, shape.clone(), bytes.clone())];
            let tt = Expr::input(0).transpose().transpose();
            assert_eq!(
                c.eval(&tt, &inputs).unwrap().bytes.as_ref(),
                bytes.as_slice()
            );
        }
    }

    #[test]
    fn casts_round_to_nearest_even_and_count_overflow() {
        let c = Compute::cpu();
        let vals = [
            f32::from_bits(0x3F80_8000),
            f32::from_bits(0x3F81_8000),
            f32::MAX,
            1.0,
        ];
        let inputs = vec![entry("x", DType::F32, vec![4], f32s(&vals))];
        let e = c.eval(&Expr::input(0).cast(DType::BF16), &inputs).unwrap();
        let got: Vec<u16> = e
            .bytes
            .chunks(2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
            .collect();
        assert_eq!(got, vec![0x3F80, 0x3F82, 0x7F80, 0x3F80]);
        assert_eq!(e.overflowed, 1);
        let h = c.eval(&Expr::input(0).cast(DType::F16), &inputs).unwrap();
        assert_eq!(h.overflowed, 1);
        // a cast inside a tree goes through candle too
        let t = c
            .eval(
                &Expr::input(0)
                    .reshape(vec![2, 2])
                    .transpose()
                    .cast(DType::F16),
                &inputs,
            )
            .unwrap();
        assert_eq!(t.overflowed, 1);
        assert_eq!(t.bytes.len(), 8);
    }
}

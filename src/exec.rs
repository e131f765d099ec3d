//! Evaluation of the op tree ([`crate::ops::Expr`]) into row-major bytes.
//!
//! A plain input (possibly reshaped) is handed out as borrowed bytes straight from the reader's memory map, and a
//! narrow along the leading dimension of one is a sub-slice of it: no tensor at all. Everything else — transposes,
//! head splits, fusions, casts — runs on candle tensors on the chosen device. Dtypes candle cannot hold are moved
//! as a candle dtype of the same width (movement is bit-exact whatever the bits mean); casts only touch floats.

use std::borrow::Cow;

use candle_core::{CpuStorage, DType as CDType, Device, Storage, Tensor};
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

    /// `cpu`, `cuda`, `cuda:N` or `auto` (CUDA when this build has it and a device answers; see [`crate::device`]).
    pub fn from_spec(spec: Option<&str>) -> Result<Compute> {
        let device = crate::device::resolve(spec).map_err(ExecError)?;
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
        self.eval_reusing(expr, inputs, Vec::new())
    }

    /// [`eval`](Self::eval), building a computed result in `scratch`'s allocation (its contents are discarded), so
    /// a caller converting many tensors can hand back the previous result's buffer instead of faulting in fresh
    /// pages for every tensor. A borrowed result leaves `scratch` unused.
    pub fn eval_reusing<'a>(
        &self,
        expr: &Expr,
        inputs: &'a [TensorEntry],
        scratch: Vec<u8>,
    ) -> Result<Evaluated<'a>> {
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
        #[cfg(feature = "cuda")]
        if !matches!(self.device, Device::Cpu)
            && !crate::exec_cuda::device_can_hold(expr, &|i| inputs.get(i).map(|e| e.info.dtype))
        {
            return Compute::cpu().eval_reusing(expr, inputs, scratch);
        }
        // Every fast path overwrites all of `out`: keep its length so that resizing does not zero it again.
        let mut out = scratch;
        let mut overflowed = 0u64;
        let cpu = matches!(self.device, Device::Cpu);
        match expr {
            // A cast of (a gather of) an input: chunk-wise in parallel, no movement.
            Expr::Cast(src, to) if cpu => {
                if let Some(b) = self.view_bytes(src, inputs)? {
                    let from = infer_dtype(src, inputs)?;
                    overflowed += self.cast_into(&b, from, *to, &mut out)?;
                    return Ok(Evaluated {
                        bytes: Cow::Owned(out),
                        overflowed,
                    });
                }
            }
            // A 2-D transpose of (a gather of) an input: candle transposes of row blocks, in parallel.
            Expr::Transpose(src) if cpu => {
                if let Some(b) = self.view_bytes(src, inputs)? {
                    let (dtype, shape) = shape_of(src, inputs)?;
                    if let [rows, cols] = shape[..] {
                        self.transpose_into(&b, dtype, rows, cols, &mut out)?;
                        return Ok(Evaluated {
                            bytes: Cow::Owned(out),
                            overflowed,
                        });
                    }
                }
            }
            // A cast of (a gather of) a host input on CUDA: streamed through the device (src/exec_cuda.rs).
            #[cfg(feature = "cuda")]
            Expr::Cast(src, to) if !cpu => {
                let from = infer_dtype(src, inputs)?;
                if let (Device::Cuda(dev), Some(_)) =
                    (&self.device, crate::exec_cuda::cast_kernel(from, *to))
                {
                    if let Some(b) = self.view_bytes(src, inputs)? {
                        overflowed += crate::exec_cuda::stream_cast(dev, &b, from, *to, &mut out)
                            .map_err(ExecError)?;
                        return Ok(Evaluated {
                            bytes: Cow::Owned(out),
                            overflowed,
                        });
                    }
                }
            }
            // FP8 block dequantisation: the weight's bytes (usually borrowed) and its scales, straight into `out`.
            Expr::Dequant { .. } => {
                overflowed += self.dequant_into(expr, inputs, &mut out)?;
                return Ok(Evaluated {
                    bytes: Cow::Owned(out),
                    overflowed,
                });
            }
            // Narrows and reshapes of an input whose rows stay contiguous (head splits): copies of those runs.
            _ => {
                if let Some((base, runs)) = gather_runs(expr, inputs) {
                    gather_into(base, &runs, &mut out);
                    return Ok(Evaluated {
                        bytes: Cow::Owned(out),
                        overflowed,
                    });
                }
                // A concatenation along the leading dimension (stacked experts, fused q/k/v) is its parts' bytes
                // one after another: evaluate and append one part at a time, so that only the result and one part
                // are ever held (not every part and the result).
                if let Expr::Concat(parts, 0) = expr {
                    if parts.len() > 1 {
                        let (dtype, shape) = shape_of(expr, inputs)?;
                        let total = shape.iter().product::<usize>() * dtype.size();
                        out.clear();
                        out.reserve_exact(total);
                        let mut scratch = Vec::new();
                        for p in parts {
                            let e = self.eval_reusing(p, inputs, std::mem::take(&mut scratch))?;
                            overflowed += e.overflowed;
                            out.extend_from_slice(&e.bytes);
                            if let Cow::Owned(v) = e.bytes {
                                scratch = v;
                            }
                        }
                        return Ok(Evaluated {
                            bytes: Cow::Owned(out),
                            overflowed,
                        });
                    }
                }
            }
        }
        let (t, dtype) = self.tensor(expr, inputs, &mut overflowed)?;
        tensor_bytes_into(&t, dtype, &mut out)?;
        Ok(Evaluated {
            bytes: Cow::Owned(out),
            overflowed,
        })
    }

    /// The row-major bytes of `expr` when it is an input, a contiguous part of one, or a gather of contiguous runs
    /// of one; `None` when it needs a tensor.
    fn view_bytes<'a>(
        &self,
        expr: &Expr,
        inputs: &'a [TensorEntry],
    ) -> Result<Option<Cow<'a, [u8]>>> {
        if let Some(i) = expr.as_plain_input() {
            return Ok(Some(input(inputs, i)?.data.bytes()));
        }
        if let Some(b) = borrowed(expr, inputs) {
            return Ok(Some(Cow::Borrowed(b)));
        }
        Ok(gather_runs(expr, inputs).map(|(base, runs)| {
            let mut v = Vec::new();
            gather_into(base, &runs, &mut v);
            Cow::Owned(v)
        }))
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
                let out = cast_tensor(&t, carrier(*to))?;
                if narrowing(from, *to) {
                    *overflowed += count_inf(&out, *to)?.saturating_sub(count_inf(&t, from)?);
                }
                (out, *to)
            }
            Expr::Zeros(shape, d) => (
                Tensor::zeros(shape.as_slice(), carrier(*d), &self.device)?,
                *d,
            ),
            Expr::Dequant { .. } => {
                let mut out = Vec::new();
                *overflowed += self.dequant_into(expr, inputs, &mut out)?;
                let (d, shape) = shape_of(expr, inputs)?;
                (
                    Tensor::from_raw_buffer(&out, carrier(d), &shape, &self.device)?,
                    d,
                )
            }
        })
    }

    /// Evaluate an [`Expr::Dequant`] into `out` on the host ([`crate::fp8::dequant_into`]): holds the weight's
    /// bytes (borrowed from the map when it is an input), its scales and the output. Returns the overflow count.
    fn dequant_into(&self, expr: &Expr, inputs: &[TensorEntry], out: &mut Vec<u8>) -> Result<u64> {
        let Expr::Dequant {
            weight,
            scale,
            block,
            to,
        } = expr
        else {
            return Err(ExecError("not a dequantisation".into()));
        };
        let (wd, ws) = shape_of(weight, inputs)?;
        let (sd, _) = shape_of(scale, inputs)?;
        let [rows, cols] = ws[..] else {
            return Err(ExecError(format!(
                "dequantise: weight shape {ws:?} is not 2-D"
            )));
        };
        let w = self.eval(weight, inputs)?;
        let s = self.eval(scale, inputs)?;
        crate::fp8::dequant_into(&w.bytes, wd, [rows, cols], &s.bytes, sd, *block, *to, out)
            .map_err(|e| ExecError(e.0))
    }

    /// Cast a flat buffer of `from` elements to `to` into `out`, in parallel chunks, each on a candle tensor small
    /// enough to stay in cache. Returns the number of finite values that became infinite.
    fn cast_into(&self, b: &[u8], from: DType, to: DType, out: &mut Vec<u8>) -> Result<u64> {
        const CHUNK: usize = 1 << 15; // elements per chunk
        let n = b.len() / from.size();
        out.resize(n * to.size(), 0);
        let check = narrowing(from, to);
        out.par_chunks_mut(CHUNK * to.size())
            .zip(b.par_chunks(CHUNK * from.size()))
            .map(|(o, i)| -> Result<u64> {
                if !cast_slice_direct(i, from, o, to) {
                    let k = i.len() / from.size();
                    let t = Tensor::from_raw_buffer(i, carrier(from), &[k], &self.device)?;
                    let c = cast_tensor(&t, carrier(to))?;
                    with_host_bytes(&c, |bytes| o.copy_from_slice(bytes))?;
                }
                // Values already infinite stay so; only count the input when the output has any.
                let out_inf = if check { count_inf_bytes(o, to) } else { 0 };
                Ok(if out_inf > 0 {
                    out_inf.saturating_sub(count_inf_bytes(i, from))
                } else {
                    0
                })
            })
            .try_reduce(|| 0, |a, b| Ok(a + b))
    }

    /// Transpose a row-major `[rows, cols]` buffer into `out` (`[cols, rows]`). Row blocks of the input are
    /// transposed by candle in parallel (each block small enough that its strided reads stay in cache), then their
    /// rows are placed into the output rows, in parallel over output rows.
    fn transpose_into(
        &self,
        b: &[u8],
        dtype: DType,
        rows: usize,
        cols: usize,
        out: &mut Vec<u8>,
    ) -> Result<()> {
        const BLOCK_BYTES: usize = 256 << 10; // input bytes per candle transpose
        const GROUP_BYTES: usize = 8 << 20; // input bytes transposed before placing them
        let es = dtype.size();
        out.resize(b.len(), 0);
        if b.is_empty() {
            return Ok(());
        }
        // 1, 2, 4 and 8-byte elements: a direct tiled transpose (no candle block copies, no placement copies).
        type Tiled = fn(&[u8], usize, usize, &mut [u8]);
        let tiled: Option<Tiled> = match es {
            1 => Some(transpose_tiled::<1>),
            2 => Some(transpose_tiled::<2>),
            4 => Some(transpose_tiled::<4>),
            8 => Some(transpose_tiled::<8>),
            _ => None,
        };
        if let Some(f) = tiled {
            f(b, rows, cols, out);
            return Ok(());
        }
        let row_bytes = cols * es;
        let block_rows = (BLOCK_BYTES / row_bytes.max(1)).clamp(1, rows);
        let group_rows = (GROUP_BYTES / row_bytes.max(1)).max(block_rows).min(rows);
        let group_rows = group_rows.div_ceil(block_rows) * block_rows;
        let mut r0 = 0;
        while r0 < rows {
            let r1 = (r0 + group_rows).min(rows);
            let starts: Vec<usize> = (r0..r1).step_by(block_rows).collect();
            let blocks: Vec<(usize, usize, Tensor)> = starts
                .par_iter()
                .map(|&s| -> Result<(usize, usize, Tensor)> {
                    let e = (s + block_rows).min(r1);
                    let t = Tensor::from_raw_buffer(
                        &b[s * row_bytes..e * row_bytes],
                        carrier(dtype),
                        &[e - s, cols],
                        &self.device,
                    )?;
                    Ok((s, e - s, t.t()?.contiguous()?))
                })
                .collect::<Result<_>>()?;
            // Hold each block's storage once, then fill output rows in parallel.
            let guards: Vec<_> = blocks
                .iter()
                .map(|(s, n, t)| (*s, *n, t.storage_and_layout()))
                .collect();
            let views: Vec<(usize, usize, &[u8])> = guards
                .iter()
                .map(|(s, n, (st, layout))| Ok((*s, *n, cpu_bytes(st, layout)?)))
                .collect::<Result<_>>()?;
            out.par_chunks_mut(rows * es)
                .enumerate()
                .for_each(|(c, orow)| {
                    for &(s, n, tb) in &views {
                        orow[s * es..(s + n) * es]
                            .copy_from_slice(&tb[c * n * es..(c + 1) * n * es]);
                    }
                });
            r0 = r1;
        }
        Ok(())
    }
}

/// Transpose a row-major `[rows, cols]` matrix of `N`-byte elements into `out` (`[cols, rows]`): bands of `TILE`
/// output rows (input columns) in parallel; each `TILE` × `TILE` tile is transposed into a small local buffer and
/// then written out as `TILE` whole runs of `TILE × N` bytes (writing elements one by one straight into the output
/// would keep `TILE` lines a power-of-two stride apart alive in L1, which alias to the same cache set). Bit-exact:
/// elements are moved, never interpreted.
fn transpose_tiled<const N: usize>(b: &[u8], rows: usize, cols: usize, out: &mut [u8]) {
    const TILE: usize = 32;
    let out_row = rows * N;
    out.par_chunks_mut(TILE * out_row)
        .enumerate()
        .for_each(|(band, ob)| {
            let c0 = band * TILE;
            let nc = ob.len() / out_row;
            let mut local = [[0u8; N]; TILE * TILE];
            for r0 in (0..rows).step_by(TILE) {
                let nr = TILE.min(rows - r0);
                for r in 0..nr {
                    let at = ((r0 + r) * cols + c0) * N;
                    for (c, el) in b[at..at + nc * N].chunks_exact(N).enumerate() {
                        local[c * TILE + r].copy_from_slice(el);
                    }
                }
                for c in 0..nc {
                    let dst = &mut ob[c * out_row + r0 * N..c * out_row + (r0 + nr) * N];
                    for (d, el) in dst.chunks_exact_mut(N).zip(&local[c * TILE..c * TILE + nr]) {
                        d.copy_from_slice(el);
                    }
                }
            }
        });
}

/// `b` as a slice of `T` when it is aligned for `T` and a whole number of them.
fn aligned<T: Copy>(b: &[u8]) -> Option<&[T]> {
    // SAFETY: only used with f32, f16 and bf16, for which every bit pattern is a valid value.
    let (head, mid, tail) = unsafe { b.align_to::<T>() };
    (head.is_empty() && tail.is_empty()).then_some(mid)
}

fn aligned_mut<T: Copy>(b: &mut [u8]) -> Option<&mut [T]> {
    // SAFETY: as in `aligned`.
    let (head, mid, tail) = unsafe { b.align_to_mut::<T>() };
    (head.is_empty() && tail.is_empty()).then_some(mid)
}

/// The float conversions of [`VecCast`] straight from input bytes into output bytes (no candle tensor, no
/// per-chunk allocation and copy), with the same `half` routines, so bit-exact with it. `false` when the pair is
/// not one of them or a slice is misaligned: the caller then goes through candle.
fn cast_slice_direct(i: &[u8], from: DType, o: &mut [u8], to: DType) -> bool {
    use half::slice::HalfFloatSliceExt;
    use half::{bf16, f16};
    fn halves<A: Copy, B: Copy>(i: &[u8], o: &mut [u8]) -> bool
    where
        [A]: HalfFloatSliceExt,
        [B]: HalfFloatSliceExt,
    {
        let (Some(src), Some(dst)) = (aligned::<A>(i), aligned_mut::<B>(o)) else {
            return false;
        };
        if src.len() != dst.len() {
            return false;
        }
        let mut tmp = [0f32; 4096];
        for (s, d) in src.chunks(4096).zip(dst.chunks_mut(4096)) {
            let t = &mut tmp[..s.len()];
            s.convert_to_f32_slice(t);
            d.convert_from_f32_slice(t);
        }
        true
    }
    match (from, to) {
        (DType::F32, DType::F16) | (DType::F32, DType::BF16) => {
            let Some(src) = aligned::<f32>(i) else {
                return false;
            };
            match to {
                DType::F16 => match aligned_mut::<f16>(o) {
                    Some(d) if d.len() == src.len() => d.convert_from_f32_slice(src),
                    _ => return false,
                },
                _ => match aligned_mut::<bf16>(o) {
                    Some(d) if d.len() == src.len() => d.convert_from_f32_slice(src),
                    _ => return false,
                },
            }
            true
        }
        (DType::F16, DType::F32) | (DType::BF16, DType::F32) => {
            let Some(dst) = aligned_mut::<f32>(o) else {
                return false;
            };
            match from {
                DType::F16 => match aligned::<f16>(i) {
                    Some(s) if s.len() == dst.len() => s.convert_to_f32_slice(dst),
                    _ => return false,
                },
                _ => match aligned::<bf16>(i) {
                    Some(s) if s.len() == dst.len() => s.convert_to_f32_slice(dst),
                    _ => return false,
                },
            }
            true
        }
        (DType::BF16, DType::F16) => halves::<bf16, f16>(i, o),
        (DType::F16, DType::BF16) => halves::<f16, bf16>(i, o),
        _ => false,
    }
}

/// Cast a candle tensor. On the CPU, the float conversions go through [`VecCast`], a candle op that converts whole
/// slices with `half`'s vectorised (F16C) routines; candle's own `to_dtype` converts one element per call. Both
/// round to nearest even; other devices and dtypes use `to_dtype`.
fn cast_tensor(t: &Tensor, to: CDType) -> Result<Tensor> {
    if t.device().is_cpu() && VecCast::supports(t.dtype(), to) && t.is_contiguous() {
        return Ok(t.apply_op1_no_bwd(&VecCast { to })?);
    }
    #[cfg(feature = "cuda")]
    if t.device().is_cuda() && t.dtype() != to {
        // Our kernels (bit-identical to the CPU path); other float casts go through the CPU path, so that a GPU
        // result never differs from a CPU one.
        let t = t.contiguous()?;
        if crate::exec_cuda::GpuCast::supports(t.dtype(), to) {
            return Ok(t.apply_op1_no_bwd(&crate::exec_cuda::GpuCast { to })?);
        }
        let host = cast_tensor(&t.to_device(&Device::Cpu)?, to)?;
        return Ok(host.to_device(t.device())?);
    }
    Ok(t.to_dtype(to)?)
}

/// Slice-at-a-time float conversion on contiguous CPU storage (see [`cast_tensor`]).
struct VecCast {
    to: CDType,
}

impl VecCast {
    fn supports(from: CDType, to: CDType) -> bool {
        use CDType::*;
        matches!(
            (from, to),
            (F32, F16) | (F32, BF16) | (F16, F32) | (BF16, F32) | (BF16, F16) | (F16, BF16)
        )
    }
}

impl candle_core::CustomOp1 for VecCast {
    fn name(&self) -> &'static str {
        "vec-cast"
    }

    fn cpu_fwd(
        &self,
        storage: &candle_core::CpuStorage,
        layout: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        use candle_core::CpuStorage as S;
        use half::slice::HalfFloatSliceExt;
        use half::{bf16, f16};
        let (start, end) = layout
            .contiguous_offsets()
            .ok_or_else(|| candle_core::Error::Msg("vec-cast needs a contiguous tensor".into()))?;
        let out = match (storage, self.to) {
            (S::F32(v), CDType::F16) => {
                let src = &v[start..end];
                let mut o = vec![f16::ZERO; src.len()];
                o.convert_from_f32_slice(src);
                S::F16(o)
            }
            (S::F32(v), CDType::BF16) => {
                let src = &v[start..end];
                let mut o = vec![bf16::ZERO; src.len()];
                o.convert_from_f32_slice(src);
                S::BF16(o)
            }
            (S::F16(v), CDType::F32) => S::F32(v[start..end].to_f32_vec()),
            (S::BF16(v), CDType::F32) => S::F32(v[start..end].to_f32_vec()),
            (S::BF16(v), CDType::F16) => S::F16(via_f32(&v[start..end], f16::ZERO)),
            (S::F16(v), CDType::BF16) => S::BF16(via_f32(&v[start..end], bf16::ZERO)),
            (_, to) => {
                return Err(candle_core::Error::Msg(format!(
                    "vec-cast to {to:?}: unsupported source dtype"
                )))
            }
        };
        Ok((out, layout.shape().clone()))
    }
}

/// Convert between the two half formats through an f32 staging buffer (exact widening, one rounding).
fn via_f32<A, B: Copy>(src: &[A], zero: B) -> Vec<B>
where
    [A]: half::slice::HalfFloatSliceExt,
    [B]: half::slice::HalfFloatSliceExt,
{
    use half::slice::HalfFloatSliceExt;
    const STEP: usize = 4096;
    let mut out = vec![zero; src.len()];
    let mut tmp = [0f32; STEP];
    for (src, dst) in src.chunks(STEP).zip(out.chunks_mut(STEP)) {
        let t = &mut tmp[..src.len()];
        src.convert_to_f32_slice(t);
        dst.convert_from_f32_slice(t);
    }
    out
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
        Expr::Input(i) => inputs.get(*i)?.data.borrowed(),
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
    expr.infer_by(&|i| inputs.get(i).map(|e| &e.info))
        .map_err(|e| ExecError(e.0))
}

fn infer_dtype(expr: &Expr, inputs: &[TensorEntry]) -> Result<DType> {
    Ok(shape_of(expr, inputs)?.0)
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
        DType::F8E4M3 | DType::F8E5M2 | DType::F8E8M0 => CDType::U8,
    }
}

/// [`narrowing`] for the GPU half of the executor.
#[cfg(feature = "cuda")]
pub(crate) fn narrowing_cast(from: DType, to: DType) -> bool {
    narrowing(from, to)
}

/// [`count_inf_bytes`] for the GPU half of the executor.
#[cfg(feature = "cuda")]
pub(crate) fn count_inf_in(b: &[u8], dtype: DType) -> u64 {
    count_inf_bytes(b, dtype)
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
fn count_inf(t: &Tensor, dtype: DType) -> Result<u64> {
    let t = t.to_device(&Device::Cpu)?.contiguous()?;
    with_host_bytes(&t, |b| count_inf_bytes(b, dtype))
}

/// Number of ±inf values in row-major `dtype` bytes, read from their bit patterns (integers have none).
fn count_inf_bytes(b: &[u8], dtype: DType) -> u64 {
    /// Count elements of `N` bytes whose little-endian value `v` has `v & mask == inf`, as native words when the
    /// bytes are aligned for them (a loop the compiler vectorises), else element by element.
    fn count<T, const N: usize>(b: &[u8], mask: T, inf: T, from_le: fn([u8; N]) -> T) -> u64
    where
        T: Copy + PartialEq + std::ops::BitAnd<Output = T> + Send + Sync,
    {
        // SAFETY: every bit pattern is a valid unsigned integer; align_to only yields aligned, in-bounds words.
        let (head, words, tail) = unsafe { b.align_to::<T>() };
        if head.is_empty() && tail.is_empty() && cfg!(target_endian = "little") {
            return words
                .par_chunks(1 << 15)
                .map(|c| c.iter().filter(|&&v| v & mask == inf).count() as u64)
                .sum();
        }
        b.chunks_exact(N)
            .filter(|e| <[u8; N]>::try_from(*e).is_ok_and(|a| from_le(a) & mask == inf))
            .count() as u64
    }
    match dtype {
        DType::F16 => count(b, 0x7FFFu16, 0x7C00, u16::from_le_bytes),
        DType::BF16 => count(b, 0x7FFFu16, 0x7F80, u16::from_le_bytes),
        DType::F32 => count(b, 0x7FFF_FFFFu32, 0x7F80_0000, u32::from_le_bytes),
        DType::F64 => count(
            b,
            0x7FFF_FFFF_FFFF_FFFFu64,
            0x7FF0_0000_0000_0000,
            u64::from_le_bytes,
        ),
        _ => 0,
    }
}

/// The bytes of a contiguous CPU storage region (no copy).
fn cpu_bytes<'s>(storage: &'s Storage, layout: &candle_core::Layout) -> Result<&'s [u8]> {
    let Storage::Cpu(cpu) = storage else {
        return Err(ExecError("expected a tensor in host memory".into()));
    };
    let (start, end) = layout
        .contiguous_offsets()
        .ok_or_else(|| ExecError("expected a contiguous tensor".into()))?;
    fn bytes_of<T: Copy>(v: &[T], start: usize, end: usize) -> Result<&[u8]> {
        let s = v
            .get(start..end)
            .ok_or_else(|| ExecError("tensor layout out of its storage".into()))?;
        // SAFETY: plain-old-data elements (integers and IEEE floats) viewed as bytes of a little-endian host;
        // the byte slice covers exactly the same memory and borrows from `v`.
        Ok(
            unsafe {
                std::slice::from_raw_parts(s.as_ptr().cast::<u8>(), std::mem::size_of_val(s))
            },
        )
    }
    match cpu {
        CpuStorage::U8(v) => bytes_of(v, start, end),
        CpuStorage::U32(v) => bytes_of(v, start, end),
        CpuStorage::I16(v) => bytes_of(v, start, end),
        CpuStorage::I32(v) => bytes_of(v, start, end),
        CpuStorage::I64(v) => bytes_of(v, start, end),
        CpuStorage::BF16(v) => bytes_of(v, start, end),
        CpuStorage::F16(v) => bytes_of(v, start, end),
        CpuStorage::F32(v) => bytes_of(v, start, end),
        CpuStorage::F64(v) => bytes_of(v, start, end),
        _ => Err(ExecError("unexpected storage dtype".into())),
    }
}

/// Call `f` with the row-major bytes of a contiguous host tensor, read in place from its storage.
fn with_host_bytes<R>(t: &Tensor, f: impl FnOnce(&[u8]) -> R) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    Ok(f(cpu_bytes(&storage, layout)?))
}

/// Row-major bytes of a tensor into `out` (replacing its contents; copied to the host when it lives on a GPU).
fn tensor_bytes_into(t: &Tensor, dtype: DType, out: &mut Vec<u8>) -> Result<()> {
    if t.dtype() != carrier(dtype) {
        return Err(ExecError(format!(
            "tensor holds {:?}, expected {dtype}",
            t.dtype()
        )));
    }
    let t = t.to_device(&Device::Cpu)?.contiguous()?;
    with_host_bytes(&t, |b| {
        out.clear();
        out.extend_from_slice(b);
    })
}

/// Row-major bytes of a tensor (copied to the host when it lives on a GPU).
pub fn tensor_bytes(t: &Tensor, dtype: DType) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    tensor_bytes_into(t, dtype, &mut out)?;
    Ok(out)
}

/// A view of one input's bytes: element offset, shape and element strides.
struct View {
    offset: usize,
    shape: Vec<usize>,
    strides: Vec<usize>,
}

impl View {
    fn row_major(shape: Vec<usize>) -> View {
        let mut strides = vec![1; shape.len()];
        for k in (0..shape.len().saturating_sub(1)).rev() {
            strides[k] = strides[k + 1] * shape[k + 1];
        }
        View {
            offset: 0,
            shape,
            strides,
        }
    }

    fn is_row_major(&self) -> bool {
        let mut expect = 1;
        for (&d, &s) in self.shape.iter().zip(&self.strides).rev() {
            if d != 1 && s != expect {
                return false;
            }
            expect *= d;
        }
        true
    }

    /// Element ranges of the view in row-major order, the innermost contiguous dims merged into one run.
    fn runs(&self) -> Vec<std::ops::Range<usize>> {
        // Merge trailing dims that are contiguous with each other.
        let mut run = 1;
        let mut k = self.shape.len();
        while k > 0 && (self.shape[k - 1] == 1 || self.strides[k - 1] == run) {
            run *= self.shape[k - 1];
            k -= 1;
        }
        let outer = &self.shape[..k];
        let total: usize = outer.iter().product();
        let mut out = Vec::with_capacity(total);
        let mut idx = vec![0usize; k];
        for _ in 0..total {
            let start = self.offset
                + idx
                    .iter()
                    .zip(&self.strides)
                    .map(|(i, s)| i * s)
                    .sum::<usize>();
            out.push(start..start + run);
            for d in (0..k).rev() {
                idx[d] += 1;
                if idx[d] < outer[d] {
                    break;
                }
                idx[d] = 0;
            }
        }
        out
    }
}

/// A view (or an ordered list of runs, once a reshape cannot be expressed with strides) of one input.
enum Gather {
    View(View),
    Runs(Vec<std::ops::Range<usize>>),
}

/// Runs shorter than this on average are left to candle (a per-run copy would cost more than it moves).
const MIN_RUN_BYTES: usize = 256;

/// If `expr` is narrows and reshapes of one input whose bytes are contiguous in memory, that input's bytes and
/// the byte ranges of `expr`'s elements, in order.
fn gather_runs<'a>(
    expr: &Expr,
    inputs: &'a [TensorEntry],
) -> Option<(&'a [u8], Vec<std::ops::Range<usize>>)> {
    fn walk<'a>(
        expr: &Expr,
        inputs: &'a [TensorEntry],
    ) -> Option<(&'a [u8], DType, Vec<usize>, Gather)> {
        match expr {
            Expr::Input(i) => {
                let e = inputs.get(*i)?;
                let b = e.data.borrowed()?;
                let shape = e.info.shape.clone();
                Some((
                    b,
                    e.info.dtype,
                    shape.clone(),
                    Gather::View(View::row_major(shape)),
                ))
            }
            Expr::Reshape(src, shape) => {
                let (b, d, _, g) = walk(src, inputs)?;
                let g = match g {
                    Gather::View(v) if v.is_row_major() => Gather::View(View {
                        offset: v.offset,
                        ..View::row_major(shape.clone())
                    }),
                    Gather::View(v) => Gather::Runs(v.runs()),
                    runs => runs,
                };
                Some((b, d, shape.clone(), g))
            }
            Expr::Narrow {
                src,
                dim,
                start,
                len,
            } => {
                let (b, d, mut shape, g) = walk(src, inputs)?;
                let mut v = match g {
                    Gather::View(v) => v,
                    Gather::Runs(r) if r.len() == 1 => View {
                        offset: r[0].start,
                        ..View::row_major(shape.clone())
                    },
                    Gather::Runs(_) => return None,
                };
                let stride = *v.strides.get(*dim)?;
                if start.checked_add(*len)? > *shape.get(*dim)? {
                    return None;
                }
                v.offset += start * stride;
                v.shape[*dim] = *len;
                shape[*dim] = *len;
                Some((b, d, shape, Gather::View(v)))
            }
            _ => None,
        }
    }
    let (b, dtype, _, g) = walk(expr, inputs)?;
    let runs = match g {
        Gather::View(v) => v.runs(),
        Gather::Runs(r) => r,
    };
    let es = dtype.size();
    let total: usize = runs.iter().map(|r| r.len()).sum::<usize>() * es;
    if runs.is_empty() || total / runs.len() < MIN_RUN_BYTES {
        return None;
    }
    let byte_runs = runs
        .into_iter()
        .map(|r| r.start * es..r.end * es)
        .collect::<Vec<_>>();
    byte_runs
        .iter()
        .all(|r| r.end <= b.len())
        .then_some((b, byte_runs))
}

/// Concatenate byte ranges of `base` into `out` (replacing its contents), in parallel.
fn gather_into(base: &[u8], runs: &[std::ops::Range<usize>], out: &mut Vec<u8>) {
    let total = runs.iter().map(|r| r.len()).sum();
    out.resize(total, 0); // every byte is overwritten below

    let mut pieces = Vec::with_capacity(runs.len());
    let mut rest: &mut [u8] = out;
    for r in runs {
        let (head, tail) = rest.split_at_mut(r.len());
        pieces.push((head, &base[r.clone()]));
        rest = tail;
    }
    pieces
        .into_par_iter()
        .for_each(|(o, i)| o.copy_from_slice(i));
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

    /// The result of the general candle path, for comparison with the fast paths.
    fn via_candle(c: &Compute, expr: &Expr, inputs: &[TensorEntry]) -> (Vec<u8>, u64) {
        let mut o = 0;
        let (t, d) = c.tensor(expr, inputs, &mut o).unwrap();
        (tensor_bytes(&t, d).unwrap(), o)
    }

    fn pattern(n: usize) -> Vec<u8> {
        (0..n)
            .map(|i| (i.wrapping_mul(2654435761) >> 7) as u8)
            .collect()
    }

    #[test]
    fn blocked_transpose_matches_candle() {
        let c = Compute::cpu();
        // shapes: one block, several blocks with a ragged last one, several groups (> 8 MiB), a single row/column
        for (d, r, k) in [
            (DType::F16, 3, 5),
            (DType::F32, 1000, 77),
            (DType::BF16, 4099, 1100),
            (DType::U8, 1, 9),
            (DType::F64, 9, 1),
        ] {
            let inputs = vec![entry("w", d, vec![r, k], pattern(r * k * d.size()))];
            let e = Expr::input(0).transpose();
            let fast = c.eval(&e, &inputs).unwrap();
            assert_eq!(
                fast.bytes.as_ref(),
                via_candle(&c, &e, &inputs).0,
                "{d} [{r}, {k}]"
            );
        }
    }

    #[test]
    fn head_split_gathers_rows_like_candle() {
        let c = Compute::cpu();
        let (nh, hd, h) = (4, 8, 32); // rows of 32 f32 = 128 bytes; runs of hd rows = 1 KiB
        let inputs = vec![entry(
            "qkv",
            DType::F32,
            vec![3 * nh * hd, h],
            pattern(3 * nh * hd * h * 4),
        )];
        for k in 0..3 {
            let e = Expr::input(0)
                .reshape(vec![nh, 3, hd, h])
                .narrow(1, k, 1)
                .reshape(vec![nh * hd, h]);
            assert!(gather_runs(&e, &inputs).is_some());
            let fast = c.eval(&e, &inputs).unwrap();
            assert_eq!(fast.bytes.as_ref(), via_candle(&c, &e, &inputs).0);
            // followed by a transpose, and by a cast
            let t = e.clone().transpose();
            assert_eq!(
                c.eval(&t, &inputs).unwrap().bytes.as_ref(),
                via_candle(&c, &t, &inputs).0
            );
        }
        // column blocks: runs too short for a gather, left to candle, same bytes
        let e = Expr::input(0).narrow(1, 4, 2);
        assert!(gather_runs(&e, &inputs).is_none());
        assert_eq!(
            c.eval(&e, &inputs).unwrap().bytes.as_ref(),
            via_candle(&c, &e, &inputs).0
        );
        // a narrow after a reshape of a gather: not a gather, still correct
        let e = Expr::input(0)
            .reshape(vec![nh, 3, hd, h])
            .narrow(1, 1, 1)
            .reshape(vec![nh * hd, h])
            .narrow(1, 0, 16);
        assert_eq!(
            c.eval(&e, &inputs).unwrap().bytes.as_ref(),
            via_candle(&c, &e, &inputs).0
        );
    }

    #[test]
    fn chunked_cast_matches_candle_and_counts_overflow() {
        let c = Compute::cpu();
        // more than one chunk, overflowing values spread over chunks, an input inf that is not counted
        let n = 3 * (1 << 15) + 123;
        let mut v: Vec<f32> = (0..n).map(|i| (i as f32 - 5000.0) * 0.37).collect();
        v[10] = 70000.0;
        v[40000] = -1e30;
        v[n - 1] = f32::INFINITY;
        let inputs = vec![entry("x", DType::F32, vec![n], f32s(&v))];
        for to in [DType::F16, DType::BF16, DType::F64] {
            let e = Expr::input(0).cast(to);
            let fast = c.eval(&e, &inputs).unwrap();
            let (slow, _) = via_candle(&c, &e, &inputs);
            assert_eq!(fast.bytes.as_ref(), slow, "{to}");
            let want = if to == DType::F16 { 2 } else { 0 };
            assert_eq!(fast.overflowed, want, "{to}");
        }
        // reusing a buffer gives the same result
        let e = Expr::input(0).cast(DType::F16);
        let again = c.eval_reusing(&e, &inputs, vec![7u8; 10]).unwrap();
        assert_eq!(
            again.bytes.as_ref(),
            c.eval(&e, &inputs).unwrap().bytes.as_ref()
        );
    }

    #[test]
    fn inf_counting_reads_bit_patterns() {
        let h = [0x7C00u16, 0xFC00, 0x7E00, 0x3C00];
        let b: Vec<u8> = h.iter().flat_map(|x| x.to_le_bytes()).collect();
        assert_eq!(count_inf_bytes(&b, DType::F16), 2);
        // the same bytes at an odd address take the element-by-element path
        let mut odd = vec![0u8];
        odd.extend_from_slice(&b);
        assert_eq!(count_inf_bytes(&odd[1..], DType::F16), 2);
        let f = f32s(&[f32::INFINITY, f32::NAN, -f32::INFINITY, 1.0]);
        assert_eq!(count_inf_bytes(&f, DType::F32), 2);
        assert_eq!(count_inf_bytes(&f, DType::I32), 0);
    }

    #[test]
    fn direct_casts_equal_the_candle_op_byte_for_byte() {
        // Every f16/bf16 bit pattern and a spread of f32 patterns, straight between byte slices vs the candle op.
        let halves: Vec<u8> = (0..=u16::MAX).flat_map(|b| b.to_le_bytes()).collect();
        let words: Vec<u8> = (0..=u16::MAX as u32)
            .flat_map(|x| x.wrapping_mul(0x9E37_79B9).to_le_bytes())
            .collect();
        for (from, to, bytes) in [
            (DType::F32, DType::F16, &words),
            (DType::F32, DType::BF16, &words),
            (DType::F16, DType::F32, &halves),
            (DType::BF16, DType::F32, &halves),
            (DType::BF16, DType::F16, &halves),
            (DType::F16, DType::BF16, &halves),
        ] {
            let n = bytes.len() / from.size();
            let mut out = vec![0u8; n * to.size()];
            assert!(cast_slice_direct(bytes, from, &mut out, to), "{from}->{to}");
            let t = Tensor::from_raw_buffer(bytes, carrier(from), &[n], &Device::Cpu).unwrap();
            let want = tensor_bytes(&cast_tensor(&t, carrier(to)).unwrap(), to).unwrap();
            assert!(out == want, "{from}->{to}");
        }
        // misaligned input: not handled here (the caller goes through candle)
        let mut out = vec![0u8; 8];
        assert!(!cast_slice_direct(
            &halves[1..17],
            DType::F16,
            &mut out,
            DType::F32
        ));
        assert!(!cast_slice_direct(
            &halves[..8],
            DType::F16,
            &mut out,
            DType::I32
        ));
    }

    #[test]
    fn vectorised_casts_equal_candle_to_dtype_bit_for_bit() {
        // Every f16/bf16 bit pattern, and f32 patterns around ties, overflow, subnormals and specials.
        let halves: Vec<u8> = (0..=u16::MAX).flat_map(|b| b.to_le_bytes()).collect();
        let mut f32s: Vec<u32> = (0..=u16::MAX as u32)
            .map(|x| x.wrapping_mul(0x9E37_79B9))
            .collect();
        f32s.extend([
            0x3F80_8000,
            0x3F81_8000,
            0x7F7F_FFFF,
            0x477F_F000,
            0x477F_EFFF,
            1,
            0x0080_0000,
        ]);
        f32s.extend([0x7F80_0000, 0xFF80_0000, 0x8000_0000]);
        let words: Vec<u8> = f32s.iter().flat_map(|b| b.to_le_bytes()).collect();
        let dev = Device::Cpu;
        for (from, to, bytes) in [
            (CDType::F32, CDType::F16, &words),
            (CDType::F32, CDType::BF16, &words),
            (CDType::F16, CDType::F32, &halves),
            (CDType::BF16, CDType::F32, &halves),
            (CDType::BF16, CDType::F16, &halves),
            (CDType::F16, CDType::BF16, &halves),
        ] {
            let n = bytes.len() / from.size_in_bytes();
            let t = Tensor::from_raw_buffer(bytes, from, &[n], &dev).unwrap();
            let ours = cast_tensor(&t, to).unwrap();
            let theirs = t.to_dtype(to).unwrap();
            let (a, b) = (
                ours.to_dtype(CDType::F64)
                    .unwrap()
                    .to_vec1::<f64>()
                    .unwrap(),
                theirs
                    .to_dtype(CDType::F64)
                    .unwrap()
                    .to_vec1::<f64>()
                    .unwrap(),
            );
            for (k, (x, y)) in a.iter().zip(&b).enumerate() {
                assert!(
                    x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan()),
                    "{from:?}->{to:?} element {k}: {x} vs {y}"
                );
            }
        }
    }
}

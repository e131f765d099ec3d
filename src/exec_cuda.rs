//! The GPU half of the executor (only with `--features cuda`).
//!
//! Float casts run in this module's own kernels (compiled once per process with NVRTC): integer-only ports of the
//! conversions the CPU path uses (`half` 2.x: round to nearest even; NaN keeps its high payload bits and gets the
//! quiet bit), so GPU and CPU results are equal bit for bit, NaNs included. candle's CUDA `to_dtype` is not used
//! for casts because its NaN outputs are canonical and would differ from the CPU's.
//!
//! Two entry points:
//! - [`GpuCast`], a candle custom op: a cast inside an expression tree whose tensors already live on the device
//!   (after transposes, head splits, concatenations of experts, which candle's copy kernels do bit-exactly);
//! - [`stream_cast`]: a cast of a whole input held in host memory (the common case: a checkpoint-wide dtype
//!   change), streamed host → device → host in chunks through page-locked buffers, two chunks in flight on two
//!   streams, so that the bus, the kernel and the host-side copies of the neighbouring chunks overlap.
//!
//! FP8 → bf16 with block scales: the hook is [`fp8_block_dequant_kernel`] (see its doc); it is wired once the
//! FP8 dtypes and the CPU reference (`src/fp8.rs`, the `mcore-rust` branch) are on main.

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::{Arc, Mutex, OnceLock};

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc;
use candle_core::cuda_backend::cudarc::driver::{result as cu, sys, PushKernelArg};
use candle_core::{CudaDevice, CudaStorage, DType as CDType, Layout, Shape};
use rayon::prelude::*;

use crate::tensor::DType;

/// Kernel source: bit-level ports of `half` 2.x's software conversions (the same results as its F16C paths).
const CAST_SRC: &str = r#"
typedef unsigned int u32;
typedef unsigned short u16;
typedef unsigned long long u64;

__device__ __forceinline__ u16 f32_to_f16(u32 x) {
    u32 sign = x & 0x80000000u, exp = x & 0x7F800000u, man = x & 0x007FFFFFu;
    if (exp == 0x7F800000u) {
        u32 nan_bit = man == 0 ? 0u : 0x0200u;
        return (u16)((sign >> 16) | 0x7C00u | nan_bit | (man >> 13));
    }
    u32 half_sign = sign >> 16;
    int half_exp = (int)(exp >> 23) - 127 + 15;
    if (half_exp >= 0x1F) return (u16)(half_sign | 0x7C00u);
    if (half_exp <= 0) {
        if (14 - half_exp > 24) return (u16)half_sign;
        man = man | 0x00800000u;
        u32 half_man = man >> (14 - half_exp);
        u32 round_bit = 1u << (13 - half_exp);
        if ((man & round_bit) != 0 && (man & (3u * round_bit - 1u)) != 0) half_man += 1;
        return (u16)(half_sign | half_man);
    }
    u32 he = ((u32)half_exp) << 10;
    u32 hm = man >> 13;
    u32 round_bit = 0x00001000u;
    if ((man & round_bit) != 0 && (man & (3u * round_bit - 1u)) != 0) return (u16)((half_sign | he | hm) + 1u);
    return (u16)(half_sign | he | hm);
}

__device__ __forceinline__ u32 f16_to_f32(u16 i) {
    if ((i & 0x7FFFu) == 0) return ((u32)i) << 16;
    u32 half_sign = i & 0x8000u, half_exp = i & 0x7C00u, half_man = i & 0x03FFu;
    if (half_exp == 0x7C00u) {
        if (half_man == 0) return (half_sign << 16) | 0x7F800000u;
        return (half_sign << 16) | 0x7FC00000u | (half_man << 13);
    }
    u32 sign = half_sign << 16;
    int unbiased_exp = (int)(half_exp >> 10) - 15;
    if (half_exp == 0) {
        int e = (__clz(half_man) - 16) - 6;
        u32 ex = ((u32)(127 - 15 - e)) << 23;
        u32 m = (half_man << (14 + e)) & 0x7FFFFFu;
        return sign | ex | m;
    }
    u32 ex = ((u32)(unbiased_exp + 127)) << 23;
    u32 m = (half_man & 0x03FFu) << 13;
    return sign | ex | m;
}

__device__ __forceinline__ u16 f32_to_bf16(u32 x) {
    if ((x & 0x7FFFFFFFu) > 0x7F800000u) return (u16)((x >> 16) | 0x0040u);
    u32 round_bit = 0x00008000u;
    if ((x & round_bit) != 0 && (x & (3u * round_bit - 1u)) != 0) return (u16)((x >> 16) + 1u);
    return (u16)(x >> 16);
}

__device__ __forceinline__ u32 bf16_to_f32(u16 i) {
    if ((i & 0x7FFFu) > 0x7F80u) return (((u32)i) | 0x0040u) << 16;
    return ((u32)i) << 16;
}

#define CW_CAST(NAME, TIN, TOUT, EXPR) \
extern "C" __global__ void NAME(const TIN* in, TOUT* out, u64 n) { \
    for (u64 k = (u64)blockIdx.x * blockDim.x + threadIdx.x; k < n; k += (u64)gridDim.x * blockDim.x) { \
        TIN v = in[k]; out[k] = (EXPR); \
    } \
}

CW_CAST(cw_cast_f32_f16, u32, u16, f32_to_f16(v))
CW_CAST(cw_cast_f32_bf16, u32, u16, f32_to_bf16(v))
CW_CAST(cw_cast_f16_f32, u16, u32, f16_to_f32(v))
CW_CAST(cw_cast_bf16_f32, u16, u32, bf16_to_f32(v))
CW_CAST(cw_cast_bf16_f16, u16, u16, f32_to_f16(bf16_to_f32(v)))
CW_CAST(cw_cast_f16_bf16, u16, u16, f32_to_bf16(f16_to_f32(v)))
"#;

const MODULE: &str = "convert_weight_cast";

/// The kernel for a cast, if this module has one.
pub fn cast_kernel(from: DType, to: DType) -> Option<&'static str> {
    use DType::*;
    Some(match (from, to) {
        (F32, F16) => "cw_cast_f32_f16",
        (F32, BF16) => "cw_cast_f32_bf16",
        (F16, F32) => "cw_cast_f16_f32",
        (BF16, F32) => "cw_cast_bf16_f32",
        (BF16, F16) => "cw_cast_bf16_f16",
        (F16, BF16) => "cw_cast_f16_bf16",
        _ => return None,
    })
}

/// Hook for FP8 (e4m3/e5m2) → bf16 with per-block scales (`Expr::Dequant`). Not wired yet: `Expr::Dequant` runs
/// on the host (see [`device_can_hold`]), with `crate::fp8` as the reference. To wire it: an `extern "C"` kernel in
/// [`CAST_SRC`] reproducing `crate::fp8`'s arithmetic bit for bit (weight × scale in f32, one rounding to `to`; one
/// thread per element, `scale[row / bm][col / bn]`), its name returned here, `device_can_hold` letting `Dequant`
/// through, and a [`stream_cast`]-style chunked path with the scale tensor uploaded once; plus an FP8 case in
/// tests/gpu.rs.
pub fn fp8_block_dequant_kernel() -> Option<&'static str> {
    None
}

fn ptx() -> candle_core::Result<&'static str> {
    static PTX: OnceLock<Result<String, String>> = OnceLock::new();
    PTX.get_or_init(|| {
        cudarc::nvrtc::compile_ptx(CAST_SRC)
            .map(|p| p.to_src())
            .map_err(|e| format!("compiling the cast kernels with NVRTC: {e}"))
    })
    .as_deref()
    .map_err(|e| candle_core::Error::Msg(e.clone()))
}

fn candle_dtype(d: CDType) -> Option<DType> {
    Some(match d {
        CDType::F32 => DType::F32,
        CDType::F16 => DType::F16,
        CDType::BF16 => DType::BF16,
        _ => return None,
    })
}

fn launch_config(n: usize) -> cudarc::driver::LaunchConfig {
    const THREADS: u32 = 256;
    let blocks = n.div_ceil(THREADS as usize).clamp(1, 65_535) as u32;
    cudarc::driver::LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// A float cast of a contiguous CUDA tensor with this module's kernels (see the module doc).
pub struct GpuCast {
    pub to: CDType,
}

impl GpuCast {
    pub fn supports(from: CDType, to: CDType) -> bool {
        match (candle_dtype(from), candle_dtype(to)) {
            (Some(f), Some(t)) => cast_kernel(f, t).is_some(),
            _ => false,
        }
    }
}

impl candle_core::CustomOp1 for GpuCast {
    fn name(&self) -> &'static str {
        "cw-gpu-cast"
    }

    fn cpu_fwd(
        &self,
        _: &candle_core::CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, Shape)> {
        Err(candle_core::Error::Msg(
            "cw-gpu-cast runs on CUDA tensors only".into(),
        ))
    }

    fn cuda_fwd(
        &self,
        storage: &CudaStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let msg = |s: String| candle_core::Error::Msg(s);
        let from = storage.dtype();
        let (start, end) = layout
            .contiguous_offsets()
            .ok_or_else(|| msg("cw-gpu-cast needs a contiguous tensor".into()))?;
        let name = match (candle_dtype(from), candle_dtype(self.to)) {
            (Some(f), Some(t)) => cast_kernel(f, t),
            _ => None,
        }
        .ok_or_else(|| {
            msg(format!(
                "cw-gpu-cast: no kernel for {from:?} -> {:?}",
                self.to
            ))
        })?;
        let dev: CudaDevice = storage.device().clone();
        let n = end - start;
        let func = dev.get_or_load_custom_func(name, MODULE, ptx()?)?;
        let cfg = launch_config(n);
        let n64 = n as u64;
        let drv = |e: cudarc::driver::DriverError| msg(format!("cw-gpu-cast: {e}"));
        macro_rules! run {
            ($tin:ty, $tout:ty) => {{
                let src = storage.as_cuda_slice::<$tin>()?;
                let src = src.slice(start..end);
                // SAFETY: the kernel writes every one of the n elements before anyone reads them.
                let mut out = unsafe { dev.alloc::<$tout>(n)? };
                let mut b = func.builder();
                b.arg(&src);
                b.arg(&mut out);
                b.arg(&n64);
                // SAFETY: the kernel's signature is (const TIN*, TOUT*, u64), matching the arguments above.
                unsafe { b.launch(cfg) }.map_err(drv)?;
                CudaStorage::wrap_cuda_slice(out, dev.clone())
            }};
        }
        use half::{bf16, f16};
        let out = match (from, self.to) {
            (CDType::F32, CDType::F16) => run!(f32, f16),
            (CDType::F32, CDType::BF16) => run!(f32, bf16),
            (CDType::F16, CDType::F32) => run!(f16, f32),
            (CDType::BF16, CDType::F32) => run!(bf16, f32),
            (CDType::BF16, CDType::F16) => run!(bf16, f16),
            (CDType::F16, CDType::BF16) => run!(f16, bf16),
            _ => unreachable!("checked by cast_kernel"),
        };
        Ok((out, layout.shape().clone()))
    }
}

/// Elements per chunk of a streamed cast: 8 Mi elements = 32 MiB of f32 on each side of a slot.
const CHUNK_ELEMS: usize = 8 << 20;
const SLOT_BYTES: usize = CHUNK_ELEMS * 4;

/// One in-flight chunk's resources: a stream, page-locked host staging buffers and device buffers.
struct Slot {
    stream: sys::CUstream,
    h_in: *mut u8,
    h_out: *mut u8,
    d_in: sys::CUdeviceptr,
    d_out: sys::CUdeviceptr,
}

/// Two slots, allocated once per device and reused by every streamed cast (page-locked allocations are slow).
struct Buffers {
    ctx: Arc<cudarc::driver::CudaContext>,
    slots: [Slot; 2],
}

// SAFETY: the raw pointers are owned by `Buffers` (freed in Drop) and only used by the thread that took the
// buffers out of the pool.
unsafe impl Send for Buffers {}

impl Buffers {
    fn new(ctx: &Arc<cudarc::driver::CudaContext>) -> Result<Buffers, String> {
        ctx.bind_to_thread().map_err(|e| e.to_string())?;
        let slot = || -> Result<Slot, String> {
            // SAFETY: plain driver allocations, freed in Drop; host buffers are written before being read.
            unsafe {
                let stream = cu::stream::create(cu::stream::StreamKind::NonBlocking)
                    .map_err(|e| e.to_string())?;
                let h_in = cu::malloc_host(SLOT_BYTES, sys::CU_MEMHOSTALLOC_WRITECOMBINED)
                    .map_err(|e| e.to_string())? as *mut u8;
                let h_out = cu::malloc_host(SLOT_BYTES, 0).map_err(|e| e.to_string())? as *mut u8;
                let d_in = cu::malloc_sync(SLOT_BYTES).map_err(|e| e.to_string())?;
                let d_out = cu::malloc_sync(SLOT_BYTES).map_err(|e| e.to_string())?;
                Ok(Slot {
                    stream,
                    h_in,
                    h_out,
                    d_in,
                    d_out,
                })
            }
        };
        Ok(Buffers {
            ctx: ctx.clone(),
            slots: [slot()?, slot()?],
        })
    }
}

impl Drop for Buffers {
    fn drop(&mut self) {
        let _ = self.ctx.bind_to_thread();
        for s in &self.slots {
            // SAFETY: allocated in `new`, not in use (every stream is synchronised before a cast returns).
            unsafe {
                let _ = cu::stream::synchronize(s.stream);
                let _ = cu::free_host(s.h_in as *mut c_void);
                let _ = cu::free_host(s.h_out as *mut c_void);
                let _ = cu::free_sync(s.d_in);
                let _ = cu::free_sync(s.d_out);
                let _ = cu::stream::destroy(s.stream);
            }
        }
    }
}

fn pool() -> &'static Mutex<HashMap<usize, Vec<Buffers>>> {
    static POOL: OnceLock<Mutex<HashMap<usize, Vec<Buffers>>>> = OnceLock::new();
    POOL.get_or_init(Default::default)
}

fn function(
    ctx: &Arc<cudarc::driver::CudaContext>,
    name: &str,
) -> Result<cudarc::driver::CudaFunction, String> {
    static MODULES: OnceLock<Mutex<HashMap<usize, Arc<cudarc::driver::CudaModule>>>> =
        OnceLock::new();
    let mut m = MODULES
        .get_or_init(Default::default)
        .lock()
        .map_err(|_| "cast module cache poisoned".to_string())?;
    let module = match m.get(&ctx.ordinal()) {
        Some(md) => md.clone(),
        None => {
            let ptx = ptx().map_err(|e| e.to_string())?;
            let md = ctx
                .load_module(cudarc::nvrtc::Ptx::from_src(ptx))
                .map_err(|e| format!("loading the cast kernels: {e}"))?;
            m.insert(ctx.ordinal(), md.clone());
            md
        }
    };
    module
        .load_function(name)
        .map_err(|e| format!("cast kernel {name}: {e}"))
}

/// Cast the elements of `input` (`from`, row-major host bytes) to `to` into `out` on CUDA device `dev`, streamed
/// in chunks through two page-locked slots (two chunks in flight). Returns the number of finite values that became
/// infinite, counted like the CPU path. Bytes are identical to the CPU path's (see the module doc).
pub fn stream_cast(
    dev: &CudaDevice,
    input: &[u8],
    from: DType,
    to: DType,
    out: &mut Vec<u8>,
) -> Result<u64, String> {
    let name = cast_kernel(from, to).ok_or_else(|| format!("no GPU kernel for {from} -> {to}"))?;
    let (es_in, es_out) = (from.size(), to.size());
    let n = input.len() / es_in;
    out.resize(n * es_out, 0);
    if n == 0 {
        return Ok(0);
    }
    let stream = dev.cuda_stream();
    let ctx = stream.context().clone();
    let func = function(&ctx, name)?;
    let taken = pool()
        .lock()
        .ok()
        .and_then(|mut p| p.get_mut(&ctx.ordinal()).and_then(|v| v.pop()));
    let bufs = match taken {
        Some(b) => b,
        None => Buffers::new(&ctx)?,
    };
    ctx.bind_to_thread().map_err(|e| e.to_string())?;
    let check = crate::exec::narrowing_cast(from, to);
    let mut overflowed = 0u64;
    let mut pending: [Option<(usize, usize)>; 2] = [None, None];
    let drv = |e: cudarc::driver::DriverError| format!("CUDA cast: {e}");

    // Wait for slot `k`'s chunk, copy it out of the page-locked buffer, count its new infinities.
    let mut finish =
        |k: usize, p: &mut [Option<(usize, usize)>; 2], out: &mut Vec<u8>| -> Result<(), String> {
            let Some((start, count)) = p[k].take() else {
                return Ok(());
            };
            let s = &bufs.slots[k];
            // SAFETY: the stream's copies into h_out are complete after synchronize; h_out holds SLOT_BYTES.
            unsafe { cu::stream::synchronize(s.stream) }.map_err(drv)?;
            let src = unsafe { std::slice::from_raw_parts(s.h_out, count * es_out) };
            let dst = &mut out[start * es_out..(start + count) * es_out];
            par_copy(dst, src);
            if check {
                let o = crate::exec::count_inf_in(dst, to);
                if o > 0 {
                    let i = &input[start * es_in..(start + count) * es_in];
                    overflowed += o.saturating_sub(crate::exec::count_inf_in(i, from));
                }
            }
            Ok(())
        };

    let mut result = Ok(());
    for (c, start) in (0..n).step_by(CHUNK_ELEMS).enumerate() {
        let k = c % 2;
        if let Err(e) = finish(k, &mut pending, out) {
            result = Err(e);
            break;
        }
        let count = CHUNK_ELEMS.min(n - start);
        let s = &bufs.slots[k];
        // SAFETY: h_in/h_out/d_in/d_out hold SLOT_BYTES ≥ count × 4 ≥ count × element size; the slot's previous
        // work finished (synchronised in `finish`); the kernel signature is (const TIN*, TOUT*, u64).
        let launched = unsafe {
            let h_in = std::slice::from_raw_parts_mut(s.h_in, count * es_in);
            par_copy(h_in, &input[start * es_in..(start + count) * es_in]);
            cu::memcpy_htod_async(s.d_in, &*h_in, s.stream)
                .and_then(|_| {
                    let (mut a, mut b, mut m) = (s.d_in, s.d_out, count as u64);
                    let mut params = [
                        &mut a as *mut _ as *mut c_void,
                        &mut b as *mut _ as *mut c_void,
                        &mut m as *mut _ as *mut c_void,
                    ];
                    let cfg = launch_config(count);
                    cu::launch_kernel(
                        func.cu_function(),
                        cfg.grid_dim,
                        cfg.block_dim,
                        0,
                        s.stream,
                        &mut params,
                    )
                })
                .and_then(|_| {
                    let h_out = std::slice::from_raw_parts_mut(s.h_out, count * es_out);
                    cu::memcpy_dtoh_async(h_out, s.d_out, s.stream)
                })
        };
        if let Err(e) = launched {
            result = Err(drv(e));
            break;
        }
        pending[k] = Some((start, count));
    }
    // Drain in chunk order (the older chunk first); on an error, still wait for both streams before reuse.
    let last = (n.div_ceil(CHUNK_ELEMS)) % 2;
    for k in [last, 1 - last] {
        let r = finish(k, &mut pending, out);
        if result.is_ok() {
            result = r;
        }
    }
    if result.is_ok() {
        if let Ok(mut p) = pool().lock() {
            p.entry(ctx.ordinal()).or_default().push(bufs);
        }
    }
    result.map(|_| overflowed)
}

/// Copy `src` into `dst` (same length) with several threads when it is large.
fn par_copy(dst: &mut [u8], src: &[u8]) {
    const PIECE: usize = 4 << 20;
    if dst.len() <= PIECE {
        dst.copy_from_slice(src);
        return;
    }
    dst.par_chunks_mut(PIECE)
        .zip(src.par_chunks(PIECE))
        .for_each(|(d, s)| d.copy_from_slice(s));
}

/// Whether candle's CUDA backend has copy kernels for every dtype in `expr` (it has none for the 16- and 32-bit
/// signed carriers, i.e. our I16/U16/I32): trees that touch those are evaluated on the host instead.
pub fn device_can_hold(expr: &crate::ops::Expr, dtype_of: &dyn Fn(usize) -> Option<DType>) -> bool {
    use crate::ops::Expr;
    let ok = |d: DType| !matches!(d, DType::I16 | DType::U16 | DType::I32);
    match expr {
        Expr::Input(i) => dtype_of(*i).is_some_and(ok),
        Expr::Zeros(_, d) => ok(*d),
        Expr::Reshape(s, _) | Expr::Transpose(s) | Expr::Cast(s, _) => device_can_hold(s, dtype_of),
        Expr::Narrow { src, .. } => device_can_hold(src, dtype_of),
        Expr::Concat(parts, _) => parts.iter().all(|p| device_can_hold(p, dtype_of)),
        // FP8 block dequantisation runs on the host until the GPU hook is wired (fp8_block_dequant_kernel).
        Expr::Dequant { .. } => false,
    }
}

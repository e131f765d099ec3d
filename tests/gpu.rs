//! GPU-vs-CPU bit identity of the executor: every dtype, every op and shape class that conversions produce
//! (plain copies, casts in every float direction, transposes, column narrows, q/k/v head splits and interleaves,
//! expert stacking, zeros, inputs held as one range, as MindSpore chunks and as torch strided views), evaluated on
//! `cuda` and on `cpu`, compared byte for byte together with the overflow count.
//!
//! Compiled in every build. Where no CUDA device answers (a CPU build, or no GPU), each test prints
//! `SKIPPED (no CUDA device)` with the reason straight to the terminal (not captured) and counts itself, then runs
//! its cases CPU against CPU (so the cases themselves are checked everywhere); this is the only skip the suite allows. `CONVERT_WEIGHT_REQUIRE_GPU=1` (tools/gpu-check.sh sets it) turns a skip into a
//! failure, so a GPU machine whose device does not answer cannot pass silently.

use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};

use convert_weight::exec::Compute;
use convert_weight::ops::Expr;
use convert_weight::tensor::{Backing, DType, DataRef, TensorEntry, TensorInfo};

static SKIPPED: AtomicUsize = AtomicUsize::new(0);
const TESTS: usize = 7;

/// The CUDA compute; without one, a loud, counted skip of the GPU comparison, and the CPU in its place, so that
/// every case still runs (CPU against CPU: the test's own expressions are checked everywhere).
fn gpu(test: &str) -> Compute {
    match Compute::from_spec(Some("cuda")) {
        Ok(c) => c,
        Err(e) => {
            if std::env::var_os("CONVERT_WEIGHT_REQUIRE_GPU").is_some_and(|v| v == "1") {
                panic!(
                    "{test}: CONVERT_WEIGHT_REQUIRE_GPU=1 but no CUDA device: {}",
                    e.0
                );
            }
            let k = SKIPPED.fetch_add(1, Ordering::SeqCst) + 1;
            // One write, straight to the terminal: not captured by the harness, not interleaved with others.
            let line = format!(
                "SKIPPED (no CUDA device) gpu::{test}: {} [{k} of {TESTS} GPU tests skipped so far]\n",
                e.0
            );
            let _ = std::io::stderr().write_all(line.as_bytes());
            Compute::cpu()
        }
    }
}

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

/// Deterministic bytes with every bit pattern class (a multiplicative hash).
fn pattern(n: usize, seed: u64) -> Vec<u8> {
    (0..n as u64)
        .map(|i| ((i.wrapping_add(seed).wrapping_mul(0x9E37_79B9_7F4A_7C15)) >> 29) as u8)
        .collect()
}

/// Every dtype but FP8 (FP8 bytes are moved as U8; their dequantisation stays on the host).
fn movable() -> Vec<DType> {
    DType::ALL.into_iter().filter(|d| !d.is_fp8()).collect()
}

const FLOATS: [DType; 4] = [DType::F64, DType::F32, DType::F16, DType::BF16];

/// Evaluate on both devices and compare bytes and overflow counts.
fn same(gpu: &Compute, what: &str, expr: &Expr, inputs: &[TensorEntry]) {
    let c = Compute::cpu()
        .eval(expr, inputs)
        .unwrap_or_else(|e| panic!("{what}: cpu: {}", e.0));
    let g = gpu
        .eval(expr, inputs)
        .unwrap_or_else(|e| panic!("{what}: cuda: {}", e.0));
    assert_eq!(c.bytes.len(), g.bytes.len(), "{what}: lengths");
    if let Some(k) = c.bytes.iter().zip(g.bytes.iter()).position(|(a, b)| a != b) {
        panic!(
            "{what}: first difference at byte {k}: cpu {:#04x}, cuda {:#04x}",
            c.bytes[k], g.bytes[k]
        );
    }
    assert_eq!(c.overflowed, g.overflowed, "{what}: overflow counts");
}

/// Every f16/bf16 bit pattern, and f32 patterns around rounding ties, overflow, subnormals, NaN payloads.
fn cast_inputs() -> Vec<(DType, Vec<u8>)> {
    let halves: Vec<u8> = (0..=u16::MAX).flat_map(|b| b.to_le_bytes()).collect();
    let mut words: Vec<u32> = (0..=u16::MAX as u32)
        .map(|x| x.wrapping_mul(0x9E37_79B9))
        .collect();
    words.extend([
        0x3F80_8000,
        0x3F81_8000,
        0x7F7F_FFFF,
        0x477F_F000,
        0x477F_EFFF,
        1,
        0x0080_0000,
        0x3380_0000,
        0x3380_0001,
        0x387F_E000,
        0x7F80_0000,
        0xFF80_0000,
        0x8000_0000,
        0x7F80_0001,
        0xFFC0_1234,
        0x7FBF_FFFF,
    ]);
    let f32s: Vec<u8> = words.iter().flat_map(|b| b.to_le_bytes()).collect();
    let f64s: Vec<u8> = words
        .iter()
        .flat_map(|&b| (f32::from_bits(b) as f64 * 1.000_000_1).to_le_bytes())
        .collect();
    vec![
        (DType::F16, halves.clone()),
        (DType::BF16, halves),
        (DType::F32, f32s),
        (DType::F64, f64s),
    ]
}

#[test]
fn casts_every_float_direction_every_bit_pattern() {
    let g = gpu("casts_every_float_direction_every_bit_pattern");
    let mut n = 0;
    for (from, bytes) in cast_inputs() {
        let len = bytes.len() / from.size();
        let inputs = vec![entry("x", from, vec![len], bytes)];
        for to in FLOATS {
            // streamed (a cast of a host input) and in a tree (after a device-side reshape + transpose)
            same(
                &g,
                &format!("{from}->{to}"),
                &Expr::input(0).cast(to),
                &inputs,
            );
            if len % 4 == 0 {
                let tree = Expr::input(0)
                    .reshape(vec![4, len / 4])
                    .transpose()
                    .cast(to);
                same(&g, &format!("{from}->{to} after transpose"), &tree, &inputs);
            }
            n += 1;
        }
    }
    println!("gpu: {n} cast directions compared");
    assert_eq!(n, 16);
}

#[test]
fn streamed_cast_over_several_chunks() {
    let g = gpu("streamed_cast_over_several_chunks");
    // 8 Mi elements per chunk: three chunks and a ragged tail, with overflowing values in several chunks.
    let n = 3 * (8 << 20) + 12_345;
    let mut v: Vec<f32> = (0..n)
        .map(|i| ((i % 100_003) as f32 - 50_000.0) * 1.37)
        .collect();
    for k in [7, 9 << 20, 17 << 20, n - 2] {
        v[k] = 1.0e6;
    }
    v[n - 1] = f32::INFINITY;
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    let inputs = vec![entry("x", DType::F32, vec![n], bytes)];
    for to in [DType::F16, DType::BF16] {
        same(
            &g,
            &format!("f32->{to} ({n} elements)"),
            &Expr::input(0).cast(to),
            &inputs,
        );
    }
    let half = Compute::cpu()
        .eval(&Expr::input(0).cast(DType::BF16), &inputs)
        .unwrap()
        .bytes
        .into_owned();
    let inputs = vec![entry("h", DType::BF16, vec![n], half)];
    same(
        &g,
        "bf16->f16 (large)",
        &Expr::input(0).cast(DType::F16),
        &inputs,
    );
    same(
        &g,
        "bf16->f32 (large)",
        &Expr::input(0).cast(DType::F32),
        &inputs,
    );
}

#[test]
fn movement_of_every_dtype() {
    let g = gpu("movement_of_every_dtype");
    let all = movable();
    for &d in &all {
        let (r, c) = (96, 40);
        let inputs = vec![
            entry("w", d, vec![r, c], pattern(r * c * d.size(), 1)),
            entry("v", d, vec![r, c], pattern(r * c * d.size(), 2)),
        ];
        let cases = [
            ("plain copy", Expr::input(0)),
            ("transpose", Expr::input(0).transpose()),
            ("row narrow", Expr::input(0).narrow(0, 8, 40)),
            ("column narrow", Expr::input(0).narrow(1, 4, 12)),
            (
                "concat dim 0",
                Expr::Concat(vec![Expr::input(0), Expr::input(1)], 0),
            ),
            (
                "concat dim 1",
                Expr::Concat(vec![Expr::input(0), Expr::input(1)], 1),
            ),
            ("zeros", Expr::Zeros(vec![3, 5], d)),
            (
                "transpose of a narrow",
                Expr::input(0).narrow(1, 8, 16).transpose(),
            ),
        ];
        for (what, e) in &cases {
            same(&g, &format!("{d} {what}"), e, &inputs);
        }
    }
    println!("gpu: movement compared on {} dtypes", all.len());
}

#[test]
fn head_splits_and_interleaves() {
    let g = gpu("head_splits_and_interleaves");
    let (nh, hd, h) = (8, 16, 128);
    for d in [DType::F32, DType::F16, DType::BF16] {
        let qkv = entry(
            "qkv",
            d,
            vec![3 * nh * hd, h],
            pattern(3 * nh * hd * h * d.size(), 3),
        );
        let q = entry("q", d, vec![nh * hd, h], pattern(nh * hd * h * d.size(), 4));
        let k = entry("k", d, vec![nh * hd, h], pattern(nh * hd * h * d.size(), 5));
        let v = entry("v", d, vec![nh * hd, h], pattern(nh * hd * h * d.size(), 6));
        let inputs = vec![qkv, q, k, v];
        for part in 0..3 {
            // bloom-style fused [nh, 3, hd, h] split, alone, transposed, cast
            let split = Expr::input(0)
                .reshape(vec![nh, 3, hd, h])
                .narrow(1, part, 1)
                .reshape(vec![nh * hd, h]);
            same(&g, &format!("{d} split {part}"), &split, &inputs);
            same(
                &g,
                &format!("{d} split {part} transposed"),
                &split.clone().transpose(),
                &inputs,
            );
            for to in FLOATS {
                same(
                    &g,
                    &format!("{d} split {part} -> {to}"),
                    &split.clone().cast(to),
                    &inputs,
                );
            }
        }
        // interleave q, k, v per head back into one tensor, then cast
        let per_head = |i: usize| Expr::input(i).reshape(vec![nh, 1, hd, h]);
        let fused = Expr::Concat(vec![per_head(1), per_head(2), per_head(3)], 1)
            .reshape(vec![3 * nh * hd, h]);
        same(&g, &format!("{d} interleave"), &fused, &inputs);
        same(
            &g,
            &format!("{d} interleave -> f16"),
            &fused.clone().cast(DType::F16),
            &inputs,
        );
        // rotary half interleave: [nh, hd/2, 2, h] -> [nh, 2, hd/2, h] as narrows + concat
        let rot = Expr::input(1).reshape(vec![nh, hd / 2, 2, h]);
        let swapped = Expr::Concat(vec![rot.clone().narrow(2, 0, 1), rot.narrow(2, 1, 1)], 1)
            .reshape(vec![nh * hd, h]);
        same(&g, &format!("{d} rotary permutation"), &swapped, &inputs);
    }
}

#[test]
fn expert_stacking() {
    let g = gpu("expert_stacking");
    let (experts, rows, cols) = (8, 64, 48);
    for d in [DType::F32, DType::F16, DType::BF16] {
        let inputs: Vec<TensorEntry> = (0..experts)
            .map(|e| {
                entry(
                    &format!("experts.{e}.w"),
                    d,
                    vec![rows, cols],
                    pattern(rows * cols * d.size(), 10 + e as u64),
                )
            })
            .collect();
        let stacked = Expr::Concat(
            (0..experts)
                .map(|e| Expr::input(e).reshape(vec![1, rows, cols]))
                .collect(),
            0,
        );
        same(&g, &format!("{d} stack"), &stacked, &inputs);
        let stacked_t = Expr::Concat(
            (0..experts)
                .map(|e| Expr::input(e).transpose().reshape(vec![1, cols, rows]))
                .collect(),
            0,
        );
        same(&g, &format!("{d} stack transposed"), &stacked_t, &inputs);
        for to in FLOATS {
            same(
                &g,
                &format!("{d} stack -> {to}"),
                &stacked.clone().cast(to),
                &inputs,
            );
        }
        // and the reverse: one expert out of a stacked tensor
        let all = entry(
            "stacked",
            d,
            vec![experts, rows, cols],
            pattern(experts * rows * cols * d.size(), 99),
        );
        let one = Expr::input(0)
            .narrow(0, 3, 1)
            .reshape(vec![rows, cols])
            .transpose();
        same(&g, &format!("{d} unstack"), &one, &[all]);
    }
}

#[test]
fn inputs_held_as_chunks_and_strided_views() {
    let g = gpu("inputs_held_as_chunks_and_strided_views");
    for d in [DType::F32, DType::BF16, DType::F16, DType::I64, DType::U8] {
        let (r, c) = (32, 24);
        let bytes = pattern(r * c * d.size() + 512, 7);
        let es = d.size();
        // MindSpore: the tensor cut into pieces
        let cut = r * c * es / 3;
        let chunks = TensorEntry {
            info: TensorInfo::new("chunks", d, vec![r, c]),
            data: DataRef::Chunks {
                backing: Backing::owned(bytes.clone()),
                ranges: vec![0..cut, cut..2 * cut, 2 * cut..r * c * es],
            },
            tied_to: None,
        };
        // torch: a transposed view of a [c, r] storage, 16 elements in
        let strided = TensorEntry {
            info: TensorInfo::new("strided", d, vec![r, c]),
            data: DataRef::Strided {
                backing: Backing::owned(bytes.clone()),
                storage: 0..bytes.len() / es * es,
                elem_size: es,
                offset: 16,
                shape: vec![r, c],
                strides: vec![1, r],
            },
            tied_to: None,
        };
        let inputs = vec![chunks, strided];
        for i in 0..2 {
            same(&g, &format!("{d} #{i} copy"), &Expr::input(i), &inputs);
            same(
                &g,
                &format!("{d} #{i} transpose"),
                &Expr::input(i).transpose(),
                &inputs,
            );
            if FLOATS.contains(&d) {
                for to in FLOATS {
                    same(
                        &g,
                        &format!("{d} #{i} -> {to}"),
                        &Expr::input(i).cast(to),
                        &inputs,
                    );
                }
            }
        }
    }
}

#[test]
fn device_errors_are_one_line() {
    // Runs everywhere: an ordinal that does not exist is a one-line error, never a crash.
    match Compute::from_spec(Some("cuda:97")) {
        Ok(_) => panic!("cuda:97 should not exist"),
        Err(e) => assert!(
            e.0.starts_with("device 'cuda:97': ") && !e.0.contains('\n'),
            "{}",
            e.0
        ),
    }
    if gpu("device_errors_are_one_line").name() != "cuda" {
        return;
    }
    let auto = Compute::from_spec(Some("auto")).unwrap();
    assert_eq!(
        auto.name(),
        "cuda",
        "auto must pick the device that answered"
    );
}

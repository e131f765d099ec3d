//! FP8: decoding of the three 8-bit float formats and block dequantisation (`weight × scale` per block).
//!
//! Formats, as the OCP 8-bit float and MX specifications define them (and torch's `float8_e4m3fn`, `float8_e5m2`,
//! `float8_e8m0fnu` implement them):
//! * e4m3fn: sign, 4 exponent bits (bias 7), 3 mantissa bits; no infinities; `S.1111.111` is NaN; max 448.
//! * e5m2: sign, 5 exponent bits (bias 15), 2 mantissa bits; IEEE-like: exponent 31 is ±inf (mantissa 0) or NaN.
//! * e8m0fnu: unsigned exponent only, value 2^(e−127) (e = 0 is 2^−127); 0xFF is NaN.
//!
//! Every FP8 value is exactly representable in f32, so decoding is a 256-entry table lookup. Block
//! dequantisation (DeepSeek-V3's published `weight_dequant`, MindFormers 2.1.0's `_dequantize_blockwise`) computes
//! `decode(w[i, j]) × decode(scale[i / bm, j / bn])` in f32, one rounding, then rounds that product once to the
//! output dtype (round to nearest even). Edge blocks are partial: a `[rows, cols]` weight has
//! `[⌈rows/bm⌉, ⌈cols/bn⌉]` scales.
//!
//! Where MindFormers 2.1.0's numpy decoder differs from the formats' definitions it is on special patterns only
//! (it reads e4m3 `S.1111.111` as ±480 and e5m2 exponent 31 as finite ±2^16·(1+m/4), and e8m0 0 as 0.0 and 0xFF as
//! +inf); we follow the definitions. Finite values agree bit for bit.

use std::sync::OnceLock;

use half::{bf16, f16};
use rayon::prelude::*;

use crate::tensor::DType;

/// The default (and DeepSeek-V3's) block: 128 × 128.
pub const DEFAULT_BLOCK: [usize; 2] = [128, 128];

/// Sign bit into an f32 bit pattern.
fn signed(b: u8, magnitude: f32) -> f32 {
    if b & 0x80 != 0 {
        -magnitude
    } else {
        magnitude
    }
}

/// A quiet NaN carrying the byte's sign.
fn nan(b: u8) -> f32 {
    f32::from_bits(0x7FC0_0000 | (u32::from(b >> 7) << 31))
}

/// Decode one e4m3fn byte.
pub fn decode_e4m3fn(b: u8) -> f32 {
    let e = u32::from((b >> 3) & 0x0F);
    let m = u32::from(b & 0x07);
    if e == 0x0F && m == 0x07 {
        return nan(b);
    }
    let mag = if e == 0 {
        // subnormal: m/8 · 2^-6 = m · 2^-9 (exact in f32)
        m as f32 * f32::from_bits((127 - 9) << 23)
    } else {
        f32::from_bits(((e + 127 - 7) << 23) | (m << 20))
    };
    signed(b, mag)
}

/// Decode one e5m2 byte.
pub fn decode_e5m2(b: u8) -> f32 {
    let e = u32::from((b >> 2) & 0x1F);
    let m = u32::from(b & 0x03);
    if e == 0x1F {
        return if m == 0 {
            signed(b, f32::INFINITY)
        } else {
            nan(b)
        };
    }
    let mag = if e == 0 {
        // subnormal: m/4 · 2^-14 = m · 2^-16
        m as f32 * f32::from_bits((127 - 16) << 23)
    } else {
        f32::from_bits(((e + 127 - 15) << 23) | (m << 21))
    };
    signed(b, mag)
}

/// Decode one e8m0fnu byte: 2^(b−127), NaN for 0xFF.
pub fn decode_e8m0(b: u8) -> f32 {
    match b {
        0xFF => f32::NAN,
        // 2^-127 is an f32 subnormal: mantissa bit 22.
        0 => f32::from_bits(0x0040_0000),
        _ => f32::from_bits(u32::from(b) << 23),
    }
}

/// The 256-entry f32 decoding table of an FP8 dtype (`None` for other dtypes).
pub fn table(d: DType) -> Option<&'static [f32; 256]> {
    fn build(f: fn(u8) -> f32) -> [f32; 256] {
        let mut t = [0f32; 256];
        for (i, v) in t.iter_mut().enumerate() {
            *v = f(i as u8);
        }
        t
    }
    static E4M3: OnceLock<[f32; 256]> = OnceLock::new();
    static E5M2: OnceLock<[f32; 256]> = OnceLock::new();
    static E8M0: OnceLock<[f32; 256]> = OnceLock::new();
    match d {
        DType::F8E4M3 => Some(E4M3.get_or_init(|| build(decode_e4m3fn))),
        DType::F8E5M2 => Some(E5M2.get_or_init(|| build(decode_e5m2))),
        DType::F8E8M0 => Some(E8M0.get_or_init(|| build(decode_e8m0))),
        _ => None,
    }
}

/// Errors of decoding and dequantisation: one line saying what was expected.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Fp8Error(pub String);

type Result<T> = std::result::Result<T, Fp8Error>;

/// Writes one f32 as an output element (little-endian) into `o`; returns whether a finite value became infinite.
fn put(to: DType, v: f32, o: &mut [u8]) -> bool {
    match to {
        DType::BF16 => {
            let h = bf16::from_f32(v);
            o.copy_from_slice(&h.to_le_bytes());
            h.is_infinite() && v.is_finite()
        }
        DType::F16 => {
            let h = f16::from_f32(v);
            o.copy_from_slice(&h.to_le_bytes());
            h.is_infinite() && v.is_finite()
        }
        DType::F32 => {
            o.copy_from_slice(&v.to_le_bytes());
            false
        }
        DType::F64 => {
            o.copy_from_slice(&f64::from(v).to_le_bytes());
            false
        }
        _ => unreachable!("checked by out_dtype"),
    }
}

fn out_dtype(to: DType) -> Result<()> {
    match to {
        DType::BF16 | DType::F16 | DType::F32 | DType::F64 => Ok(()),
        _ => Err(Fp8Error(format!(
            "FP8 decodes to BF16, F16, F32 or F64, not {to}"
        ))),
    }
}

/// Values of a scale tensor as f32 (F32, F64, BF16, F16 or FP8, typically F8_E8M0).
pub fn scales_f32(b: &[u8], d: DType) -> Result<Vec<f32>> {
    if let Some(t) = table(d) {
        return Ok(b.iter().map(|&x| t[x as usize]).collect());
    }
    Ok(match d {
        DType::F32 => b
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        DType::F64 => b
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")) as f32)
            .collect(),
        DType::BF16 => b
            .chunks_exact(2)
            .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        DType::F16 => b
            .chunks_exact(2)
            .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        _ => {
            return Err(Fp8Error(format!(
                "a block scale must be F32, BF16, F16 or F8_E8M0, not {d}"
            )))
        }
    })
}

/// Decode FP8 bytes (no scale) into `to` elements in `out`. Returns the number of finite values that became
/// infinite (only e5m2 → f16 cannot overflow; e8m0 → f16 can).
pub fn decode_into(b: &[u8], from: DType, to: DType, out: &mut Vec<u8>) -> Result<u64> {
    let t = table(from).ok_or_else(|| Fp8Error(format!("{from} is not an FP8 dtype")))?;
    out_dtype(to)?;
    let w = to.size();
    out.resize(b.len() * w, 0);
    const CHUNK: usize = 1 << 16;
    let n = out
        .par_chunks_mut(CHUNK * w)
        .zip(b.par_chunks(CHUNK))
        .map(|(o, i)| {
            i.iter()
                .zip(o.chunks_exact_mut(w))
                .map(|(&x, e)| u64::from(put(to, t[x as usize], e)))
                .sum::<u64>()
        })
        .sum();
    Ok(n)
}

/// The block size that maps a `[rows, cols]` weight onto its `[srows, scols]` scales.
///
/// With a `hint` (a model's `quantization_config.weight_block_size`), the scales must be `[⌈rows/bm⌉, ⌈cols/bn⌉]`.
/// Without one, 128 × 128 when the scale shape fits it (partial edge blocks), else the exact division that
/// MindFormers 2.1.0 infers (`rows / srows`, `cols / scols`) when both divide; anything else is an error.
pub fn block_size(
    weight: &[usize],
    scale: &[usize],
    hint: Option<[usize; 2]>,
) -> std::result::Result<[usize; 2], String> {
    let (&[r, c], &[sr, sc]) = (weight, scale) else {
        return Err(format!(
            "block dequantisation needs a 2-D weight and 2-D scales, got {weight:?} and {scale:?}"
        ));
    };
    let fits =
        |[bm, bn]: [usize; 2]| bm > 0 && bn > 0 && r.div_ceil(bm) == sr && c.div_ceil(bn) == sc;
    if let Some(h) = hint {
        return if fits(h) {
            Ok(h)
        } else {
            Err(format!(
                "scales {scale:?} do not cover weight {weight:?} in {}x{} blocks (expected [{}, {}])",
                h[0],
                h[1],
                r.div_ceil(h[0].max(1)),
                c.div_ceil(h[1].max(1))
            ))
        };
    }
    if fits(DEFAULT_BLOCK) {
        return Ok(DEFAULT_BLOCK);
    }
    if sr > 0 && sc > 0 && r % sr == 0 && c % sc == 0 && r > 0 && c > 0 {
        return Ok([r / sr, c / sc]);
    }
    Err(format!(
        "scales {scale:?} do not tile weight {weight:?}: expected [{}, {}] for 128x128 blocks",
        r.div_ceil(128),
        c.div_ceil(128)
    ))
}

/// Block dequantisation of a row-major `[rows, cols]` FP8 weight with row-major `[⌈rows/bm⌉, ⌈cols/bn⌉]` scales
/// into `to` (BF16 normally), written to `out`. Works one output row at a time, rows in parallel; holds the output
/// and the decoded scales (one f32 per block), nothing else. Returns the number of finite products that became
/// infinite in `to`.
#[allow(clippy::too_many_arguments)]
pub fn dequant_into(
    w: &[u8],
    wdtype: DType,
    [rows, cols]: [usize; 2],
    s: &[u8],
    sdtype: DType,
    [bm, bn]: [usize; 2],
    to: DType,
    out: &mut Vec<u8>,
) -> Result<u64> {
    let t = match wdtype {
        DType::F8E4M3 | DType::F8E5M2 => table(wdtype).expect("fp8"),
        _ => {
            return Err(Fp8Error(format!(
                "block dequantisation reads an F8_E4M3 or F8_E5M2 weight, not {wdtype}"
            )))
        }
    };
    out_dtype(to)?;
    if bm == 0 || bn == 0 {
        return Err(Fp8Error("block size 0".into()));
    }
    if w.len() != rows * cols {
        return Err(Fp8Error(format!(
            "weight has {} bytes, expected {rows}x{cols}",
            w.len()
        )));
    }
    let (sr, sc) = (rows.div_ceil(bm), cols.div_ceil(bn));
    let scales = scales_f32(s, sdtype)?;
    if scales.len() != sr * sc {
        return Err(Fp8Error(format!(
            "{} scales, expected {sr}x{sc} for a {rows}x{cols} weight in {bm}x{bn} blocks",
            scales.len()
        )));
    }
    let ws = to.size();
    out.resize(rows * cols * ws, 0);
    if rows == 0 || cols == 0 {
        return Ok(0);
    }
    let n = out
        .par_chunks_mut(cols * ws)
        .zip(w.par_chunks(cols))
        .enumerate()
        .map(|(i, (o, wr))| {
            let srow = &scales[(i / bm) * sc..(i / bm + 1) * sc];
            let mut over = 0u64;
            for (k, (wb, ob)) in wr.chunks(bn).zip(o.chunks_mut(bn * ws)).enumerate() {
                let sv = srow[k];
                for (&x, e) in wb.iter().zip(ob.chunks_exact_mut(ws)) {
                    over += u64::from(put(to, t[x as usize] * sv, e));
                }
            }
            over
        })
        .sum();
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Independent definition: (-1)^s · 2^(e-bias) · (1 + m/2^M), subnormals 2^(1-bias) · m/2^M, in f64.
    fn by_definition(b: u8, ebits: u32, mbits: u32, bias: i32) -> f64 {
        let s = if b >> 7 == 1 { -1.0 } else { 1.0 };
        let e = ((b as u32) >> mbits) & ((1 << ebits) - 1);
        let m = (b as u32) & ((1 << mbits) - 1);
        let frac = m as f64 / (1u32 << mbits) as f64;
        if e == 0 {
            s * 2f64.powi(1 - bias) * frac
        } else {
            s * 2f64.powi(e as i32 - bias) * (1.0 + frac)
        }
    }

    #[test]
    fn e4m3fn_all_256_patterns() {
        let mut nans = 0;
        for b in 0..=255u8 {
            let v = decode_e4m3fn(b);
            let f = float8::F8E4M3::from_bits(b).to_f32();
            if b & 0x7F == 0x7F {
                assert!(v.is_nan() && f.is_nan(), "{b:#04x}");
                assert_eq!(v.is_sign_negative(), b >> 7 == 1);
                nans += 1;
                continue;
            }
            assert!(v.is_finite(), "{b:#04x}: e4m3fn has no infinities");
            assert_eq!(v as f64, by_definition(b, 4, 3, 7), "{b:#04x}");
            assert_eq!(v.to_bits(), f.to_bits(), "{b:#04x} vs float8 crate");
        }
        assert_eq!(nans, 2);
        assert_eq!(decode_e4m3fn(0x7E), 448.0);
        assert_eq!(decode_e4m3fn(0x01), 2f32.powi(-9)); // smallest subnormal
        assert_eq!(decode_e4m3fn(0x08), 2f32.powi(-6)); // smallest normal
        assert_eq!(decode_e4m3fn(0x80).to_bits(), (-0.0f32).to_bits());
        assert_eq!(decode_e4m3fn(0x38), 1.0);
    }

    #[test]
    fn e5m2_all_256_patterns() {
        let (mut nans, mut infs) = (0, 0);
        for b in 0..=255u8 {
            let v = decode_e5m2(b);
            let f = float8::F8E5M2::from_bits(b).to_f32();
            if (b >> 2) & 0x1F == 0x1F {
                if b & 3 == 0 {
                    assert_eq!(
                        v,
                        if b >> 7 == 1 {
                            f32::NEG_INFINITY
                        } else {
                            f32::INFINITY
                        }
                    );
                    assert_eq!(v, f);
                    infs += 1;
                } else {
                    assert!(v.is_nan() && f.is_nan(), "{b:#04x}");
                    nans += 1;
                }
                continue;
            }
            assert_eq!(v as f64, by_definition(b, 5, 2, 15), "{b:#04x}");
            assert_eq!(v.to_bits(), f.to_bits(), "{b:#04x} vs float8 crate");
            // e5m2 is the top byte of an f16
            assert_eq!(
                f16::from_bits(u16::from(b) << 8).to_f32().to_bits(),
                v.to_bits()
            );
        }
        assert_eq!((nans, infs), (6, 2));
        assert_eq!(decode_e5m2(0x7B), 57344.0);
        assert_eq!(decode_e5m2(0x01), 2f32.powi(-16));
    }

    #[test]
    fn e8m0_all_256_patterns() {
        for b in 0..=254u8 {
            let v = decode_e8m0(b);
            assert_eq!(v as f64, 2f64.powi(b as i32 - 127), "{b}");
            assert!(v > 0.0);
        }
        assert!(decode_e8m0(0xFF).is_nan());
        assert_eq!(decode_e8m0(127), 1.0);
        assert_eq!(decode_e8m0(0), 2f32.powi(-127)); // subnormal in f32, exact
        assert_eq!(decode_e8m0(254), 2f32.powi(127));
    }

    #[test]
    fn decode_into_bf16_is_exact_for_every_finite_pattern() {
        let all: Vec<u8> = (0..=255).collect();
        for d in [DType::F8E4M3, DType::F8E5M2, DType::F8E8M0] {
            let mut out = Vec::new();
            let over = decode_into(&all, d, DType::BF16, &mut out).unwrap();
            assert_eq!(over, 0);
            for (b, c) in all.iter().zip(out.chunks_exact(2)) {
                let v = table(d).unwrap()[*b as usize];
                let h = bf16::from_le_bytes([c[0], c[1]]).to_f32();
                if v.is_nan() {
                    assert!(h.is_nan());
                } else {
                    assert_eq!(h.to_bits(), v.to_bits(), "{d} {b:#04x}");
                }
            }
        }
        // e8m0 to f16 overflows above 2^15 (and underflows to 0 below 2^-24)
        let mut out = Vec::new();
        assert_eq!(
            decode_into(&[143, 142, 127], DType::F8E8M0, DType::F16, &mut out).unwrap(),
            1
        );
        assert!(decode_into(&[1], DType::F8E4M3, DType::I32, &mut out).is_err());
        assert!(decode_into(&[1], DType::BF16, DType::F32, &mut out).is_err());
    }

    #[test]
    fn block_sizes() {
        assert_eq!(block_size(&[256, 384], &[2, 3], None), Ok([128, 128]));
        // partial edge blocks
        assert_eq!(block_size(&[200, 130], &[2, 2], None), Ok([128, 128]));
        assert_eq!(block_size(&[1, 1], &[1, 1], None), Ok([128, 128]));
        // the reference's exact division when 128 does not fit
        assert_eq!(block_size(&[64, 64], &[4, 2], None), Ok([16, 32]));
        assert!(block_size(&[200, 130], &[3, 2], None).is_err());
        assert_eq!(
            block_size(&[200, 130], &[4, 3], Some([64, 64])),
            Ok([64, 64])
        );
        assert!(block_size(&[200, 130], &[2, 2], Some([64, 64])).is_err());
        assert!(block_size(&[4, 4, 4], &[1, 1], None).is_err());
        assert!(block_size(&[0, 4], &[0, 1], None).is_ok());
    }

    /// Straightforward per-element reference of the semantics: f32 product, one rounding to bf16.
    fn naive(w: &[u8], wd: DType, r: usize, c: usize, s: &[f32], [bm, bn]: [usize; 2]) -> Vec<u8> {
        let sc = c.div_ceil(bn);
        let mut out = Vec::new();
        for i in 0..r {
            for j in 0..c {
                let x = match wd {
                    DType::F8E4M3 => decode_e4m3fn(w[i * c + j]),
                    _ => decode_e5m2(w[i * c + j]),
                };
                let p = x * s[(i / bm) * sc + j / bn];
                out.extend_from_slice(&bf16::from_f32(p).to_le_bytes());
            }
        }
        out
    }

    #[test]
    fn dequant_matches_the_definition_on_partial_blocks() {
        let mut seed = 0x1234_5678u32;
        let mut rnd = || {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            seed
        };
        for &(r, c, bm, bn) in &[
            (300usize, 257usize, 128usize, 128usize),
            (128, 128, 128, 128),
            (1, 5, 128, 128),
            (37, 64, 16, 32),
        ] {
            let (sr, sc) = (r.div_ceil(bm), c.div_ceil(bn));
            let w: Vec<u8> = (0..r * c)
                .map(|_| {
                    let b = rnd() as u8;
                    if b & 0x7F == 0x7F {
                        0x3F
                    } else {
                        b
                    }
                })
                .collect();
            // e8m0 scales, and the same scales as f32 and bf16 (powers of two are exact in all three)
            let e8: Vec<u8> = (0..sr * sc).map(|_| 110 + (rnd() % 30) as u8).collect();
            let sf: Vec<f32> = e8.iter().map(|&b| decode_e8m0(b)).collect();
            let want = naive(&w, DType::F8E4M3, r, c, &sf, [bm, bn]);
            let f32b: Vec<u8> = sf.iter().flat_map(|v| v.to_le_bytes()).collect();
            let bf: Vec<u8> = sf
                .iter()
                .flat_map(|v| bf16::from_f32(*v).to_le_bytes())
                .collect();
            for (s, sd) in [
                (&e8, DType::F8E8M0),
                (&f32b, DType::F32),
                (&bf, DType::BF16),
            ] {
                let mut out = Vec::new();
                dequant_into(
                    &w,
                    DType::F8E4M3,
                    [r, c],
                    s,
                    sd,
                    [bm, bn],
                    DType::BF16,
                    &mut out,
                )
                .unwrap();
                assert_eq!(out, want, "{r}x{c} scales {sd}");
            }
            // arbitrary f32 scales (DeepSeek-V3's weight_scale_inv): the product rounds once to f32, then bf16
            let sf: Vec<f32> = (0..sr * sc)
                .map(|_| (rnd() % 100000) as f32 * 1.37e-7)
                .collect();
            let f32b: Vec<u8> = sf.iter().flat_map(|v| v.to_le_bytes()).collect();
            let mut out = Vec::new();
            dequant_into(
                &w,
                DType::F8E4M3,
                [r, c],
                &f32b,
                DType::F32,
                [bm, bn],
                DType::BF16,
                &mut out,
            )
            .unwrap();
            assert_eq!(out, naive(&w, DType::F8E4M3, r, c, &sf, [bm, bn]));
            let mut out = Vec::new();
            dequant_into(
                &w,
                DType::F8E5M2,
                [r, c],
                &f32b,
                DType::F32,
                [bm, bn],
                DType::BF16,
                &mut out,
            )
            .unwrap();
            assert_eq!(out, naive(&w, DType::F8E5M2, r, c, &sf, [bm, bn]));
        }
    }

    #[test]
    fn dequant_refuses_bad_inputs() {
        let mut out = Vec::new();
        let w = [0u8; 6];
        let s = 1f32.to_le_bytes();
        assert!(dequant_into(
            &w,
            DType::F8E4M3,
            [2, 3],
            &s,
            DType::F32,
            [128, 128],
            DType::BF16,
            &mut out
        )
        .is_ok());
        assert!(dequant_into(
            &w,
            DType::F8E4M3,
            [2, 4],
            &s,
            DType::F32,
            [128, 128],
            DType::BF16,
            &mut out
        )
        .is_err());
        assert!(dequant_into(
            &w,
            DType::F8E4M3,
            [2, 3],
            &s,
            DType::F32,
            [1, 128],
            DType::BF16,
            &mut out
        )
        .is_err());
        assert!(dequant_into(
            &w,
            DType::BF16,
            [2, 3],
            &s,
            DType::F32,
            [128, 128],
            DType::BF16,
            &mut out
        )
        .is_err());
        assert!(dequant_into(
            &w,
            DType::F8E4M3,
            [2, 3],
            &s,
            DType::I32,
            [128, 128],
            DType::BF16,
            &mut out
        )
        .is_err());
        assert!(dequant_into(
            &w,
            DType::F8E4M3,
            [2, 3],
            &s,
            DType::F32,
            [128, 128],
            DType::U8,
            &mut out
        )
        .is_err());
    }

    #[test]
    fn dequant_expr_in_the_executor() {
        use crate::exec::Compute;
        use crate::ops::Expr;
        use crate::tensor::{Backing, DataRef, TensorEntry, TensorInfo};
        let entry = |name: &str, d: DType, shape: Vec<usize>, b: Vec<u8>| TensorEntry {
            info: TensorInfo::new(name, d, shape),
            data: DataRef::Contiguous {
                range: 0..b.len(),
                backing: Backing::owned(b),
            },
            tied_to: None,
        };
        let (r, c) = (130usize, 3usize);
        let w: Vec<u8> = (0..r * c).map(|k| (k * 7 % 250) as u8).collect();
        let s = vec![126u8, 129];
        let inputs = vec![
            entry("w", DType::F8E4M3, vec![r, c], w.clone()),
            entry("s", DType::F8E8M0, vec![2, 1], s.clone()),
        ];
        let e = Expr::input(0).dequant(Expr::input(1), DEFAULT_BLOCK, DType::BF16);
        let infos: Vec<_> = inputs.iter().map(|t| t.info.clone()).collect();
        assert_eq!(e.infer(&infos).unwrap(), (DType::BF16, vec![r, c]));
        let mut want = Vec::new();
        dequant_into(
            &w,
            DType::F8E4M3,
            [r, c],
            &s,
            DType::F8E8M0,
            DEFAULT_BLOCK,
            DType::BF16,
            &mut want,
        )
        .unwrap();
        let got = Compute::cpu().eval(&e, &inputs).unwrap();
        assert_eq!(got.bytes.as_ref(), &want[..]);
        // inside a tensor expression (transposed) too
        let t = Compute::cpu()
            .eval(&e.clone().transpose(), &inputs)
            .unwrap();
        assert_eq!(t.bytes.len(), want.len());
        assert_eq!(&t.bytes[..2], &want[..2]);
        assert_eq!(&t.bytes[2..4], &want[c * 2..c * 2 + 2]);
        // wrong scale shape or dtype is refused at planning time
        let bad = Expr::input(0).dequant(Expr::input(0), DEFAULT_BLOCK, DType::BF16);
        assert!(bad.infer(&infos).is_err());
        let bad = Expr::input(1).dequant(Expr::input(1), DEFAULT_BLOCK, DType::BF16);
        assert!(bad.infer(&infos).is_err());
    }
}

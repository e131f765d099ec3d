//! Compares the cast kernels run as host C (tools/check-cast-kernels.sh) with the `half` crate, bit for bit.
use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};
fn main() {
    let c = std::fs::read(std::env::args().nth(1).expect("kernel output file")).unwrap();
    let h: Vec<u16> = (0..=u16::MAX).collect();
    let hf: Vec<f16> = h.iter().map(|&b| f16::from_bits(b)).collect();
    let hb: Vec<bf16> = h.iter().map(|&b| bf16::from_bits(b)).collect();
    let a = hf.to_f32_vec();
    let b = hb.to_f32_vec();
    let mut cc = vec![f16::ZERO; h.len()];
    cc.convert_from_f32_slice(&b);
    let mut dd = vec![bf16::ZERO; h.len()];
    dd.convert_from_f32_slice(&a);
    let mut bad = 0;
    let mut off = 0;
    for i in 0..h.len() {
        let ga = u32::from_le_bytes(c[off..off + 4].try_into().unwrap());
        let gb = u32::from_le_bytes(c[off + 4..off + 8].try_into().unwrap());
        let gc = u16::from_le_bytes(c[off + 8..off + 10].try_into().unwrap());
        let gd = u16::from_le_bytes(c[off + 10..off + 12].try_into().unwrap());
        off += 12;
        for (name, g, w) in [
            ("f16->f32", ga as u64, a[i].to_bits() as u64),
            ("bf16->f32", gb as u64, b[i].to_bits() as u64),
            ("bf16->f16", gc as u64, cc[i].to_bits() as u64),
            ("f16->bf16", gd as u64, dd[i].to_bits() as u64),
        ] {
            if g != w {
                if bad < 10 { println!("{name} {:#06x}: kernel {g:#x} half {w:#x}", h[i]); }
                bad += 1;
            }
        }
    }
    let xs: Vec<f32> = (0..(1u64 << 32)).step_by(4099).map(|i| f32::from_bits(i as u32)).collect();
    let mut e = vec![f16::ZERO; xs.len()];
    e.convert_from_f32_slice(&xs);
    let mut fb = vec![bf16::ZERO; xs.len()];
    fb.convert_from_f32_slice(&xs);
    for i in 0..xs.len() {
        let ge = u16::from_le_bytes(c[off..off + 2].try_into().unwrap());
        let gf = u16::from_le_bytes(c[off + 2..off + 4].try_into().unwrap());
        off += 4;
        if ge != e[i].to_bits() { if bad < 20 { println!("f32->f16 {:#x}: kernel {ge:#x} half {:#x}", xs[i].to_bits(), e[i].to_bits()); } bad += 1; }
        if gf != fb[i].to_bits() { if bad < 20 { println!("f32->bf16 {:#x}: kernel {gf:#x} half {:#x}", xs[i].to_bits(), fb[i].to_bits()); } bad += 1; }
    }
    assert_eq!(off, c.len());
    println!("compared {} u16 patterns x4 and {} f32 patterns x2: {bad} differences; f16c: {}", h.len(), xs.len(), std::is_x86_feature_detected!("f16c"));
}

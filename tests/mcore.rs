//! The MindFormers 2.x ("mcore") families against the real reference's outputs (`tests/fixtures/mcore/`, made by
//! `tools/make-mcore-fixtures.py` with mindformers 2.1.0): forward (both fc1 layouts), reverse, round trip, compared
//! tensor by tensor (name, dtype, shape, sha256); and the FP8 decoding of every code.

mod common;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::*;
use convert_weight::formats;
use convert_weight::fp8;
use convert_weight::tensor::DType;
use serde_json::Value;

/// `tests/fixtures/mcore` of this repository. Missing is a failure: these fixtures are committed.
fn root() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mcore");
    assert!(
        p.join("index.json").is_file(),
        "{}: missing (the mcore oracle fixtures are committed with the repository)",
        p.display()
    );
    p
}

struct Variant {
    dir: PathBuf,
    family: String,
    name: String,
    /// Output file (relative to dir) → its index entry.
    outputs: BTreeMap<String, Value>,
}

fn variants() -> Vec<Variant> {
    let r = root();
    let index = read_json(&r.join("index.json"));
    let vs: Vec<Variant> = index["variants"]
        .as_array()
        .expect("index.json: variants")
        .iter()
        // fp8_decode is the decoding table (its own test), not a model
        .filter(|v| v["family"] != "fp8_decode")
        .map(|v| Variant {
            dir: r.join(v["dir"].as_str().unwrap()),
            family: v["family"].as_str().unwrap().to_string(),
            name: v["variant"].as_str().unwrap().to_string(),
            outputs: v["outputs"]
                .as_object()
                .map(|o| o.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                .unwrap_or_default(),
        })
        .collect();
    assert!(!vs.is_empty(), "index.json lists no variants");
    vs
}

fn is_fp8_variant(v: &Variant) -> bool {
    v.name.starts_with("fp8")
}

/// The fc1 layout flag for an output of the index.
fn layout_flag(entry: &Value) -> &'static str {
    match entry["use_interleaved_weight_layout_mlp"].as_bool() {
        Some(false) => "contiguous",
        _ => "interleaved",
    }
}

fn convert(args: &[&str]) {
    cw_ok(args);
}

/// A directory holding `file` (copied) and the variant's config.json: where a user keeps a converted model.
fn with_config(v: &Variant, file: &Path, tmp: &Path, name: &str) -> PathBuf {
    let d = tmp.join(name);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::copy(v.dir.join("hf/config.json"), d.join("config.json")).unwrap();
    let f = d.join(file.file_name().unwrap());
    std::fs::copy(file, &f).unwrap();
    f
}

#[test]
fn forward_matches_reference() {
    let tmp = tempfile::tempdir().unwrap();
    let mut n = 0;
    let mut per: BTreeMap<String, usize> = BTreeMap::new();
    for v in variants() {
        let input = v.dir.join("hf/model.safetensors");
        assert!(input.is_file(), "{}: missing", input.display());
        for (file, entry) in &v.outputs {
            if !file.starts_with("ms/") {
                continue;
            }
            let want = sorted(sidecar(&v.dir.join(file)));
            let o = tmp
                .path()
                .join(format!("{}-{}.safetensors", v.family, v.name));
            convert(&[
                "--model",
                &v.family,
                "--input_path",
                s(&input),
                "--output_path",
                s(&o),
                "--mlp-layout",
                layout_flag(entry),
            ]);
            let got = sorted(inspect(&o));
            assert_same(&got, &want, &format!("{}/{}: {file}", v.family, v.name));
            n += 1;
            *per.entry(format!(
                "{} {} {}",
                v.family,
                layout_flag(entry),
                dtype_of(&want)
            ))
            .or_default() += 1;
        }
    }
    for (k, c) in &per {
        println!("forward {k}: {c}");
    }
    println!("forward outputs compared: {n}");
    assert!(n > 0, "no forward outputs in the fixtures");
}

/// The dtypes of a tensor list, for the report.
fn dtype_of(ts: &[T]) -> String {
    let mut d: Vec<&str> = ts.iter().map(|t| t.dtype.as_str()).collect();
    d.sort();
    d.dedup();
    d.join("+")
}

#[test]
fn forward_to_ckpt_holds_the_same_tensors() {
    // One ckpt per family (the default layout): the same tensors in MindSpore's own format.
    let tmp = tempfile::tempdir().unwrap();
    let mut n = 0;
    for v in variants() {
        let file = "ms/expected.safetensors";
        if !v.outputs.contains_key(file) {
            continue;
        }
        let o = tmp.path().join(format!("{}-{}.ckpt", v.family, v.name));
        convert(&[
            "--model",
            &v.family,
            "--input_path",
            s(&v.dir.join("hf/model.safetensors")),
            "--output_path",
            s(&o),
        ]);
        assert_same(
            &sorted(inspect(&o)),
            &sorted(sidecar(&v.dir.join(file))),
            &format!("{}/{}: {file} as .ckpt", v.family, v.name),
        );
        n += 1;
    }
    println!("ckpt outputs compared: {n}");
    assert!(n > 0);
}

#[test]
fn reverse_matches_reference() {
    let tmp = tempfile::tempdir().unwrap();
    let mut n = 0;
    for v in variants() {
        for (file, entry) in &v.outputs {
            let Some(from) = entry["from"].as_str() else {
                continue;
            };
            if !file.starts_with("reversed/") {
                continue;
            }
            let src_entry = &v.outputs[from];
            let src = with_config(
                &v,
                &v.dir.join(from),
                tmp.path(),
                &format!("{}-{}", v.family, v.name),
            );
            let o = tmp
                .path()
                .join(format!("{}-{}-rev.safetensors", v.family, v.name));
            convert(&[
                "--model",
                &v.family,
                "--reversed",
                "--input_path",
                s(&src),
                "--output_path",
                s(&o),
                "--mlp-layout",
                layout_flag(src_entry),
            ]);
            assert_same(
                &sorted(inspect(&o)),
                &sorted(sidecar(&v.dir.join(file))),
                &format!("{}/{}: {file}", v.family, v.name),
            );
            n += 1;
        }
    }
    println!("reverse outputs compared: {n}");
    assert!(n > 0, "no reverse outputs in the fixtures");
}

#[test]
fn round_trip_gives_the_input_back() {
    let tmp = tempfile::tempdir().unwrap();
    let mut n = 0;
    for v in variants() {
        let input = v.dir.join("hf/model.safetensors");
        // FP8 inputs come back dequantised (bf16): the reference's reverse of its own forward.
        let want = if is_fp8_variant(&v) {
            sorted(sidecar(&v.dir.join("reversed/from_expected.safetensors")))
        } else {
            sorted(sidecar(&input))
        };
        for layout in ["interleaved", "contiguous"] {
            let d = tmp.path().join(format!("{}-{}-{layout}", v.family, v.name));
            std::fs::create_dir_all(&d).unwrap();
            std::fs::copy(v.dir.join("hf/config.json"), d.join("config.json")).unwrap();
            let ms = d.join("ms.safetensors");
            let back = tmp
                .path()
                .join(format!("{}-{}-{layout}-back.safetensors", v.family, v.name));
            convert(&[
                "--model",
                &v.family,
                "--input_path",
                s(&input),
                "--output_path",
                s(&ms),
                "--mlp-layout",
                layout,
            ]);
            convert(&[
                "--model",
                &v.family,
                "--reversed",
                "--input_path",
                s(&ms),
                "--output_path",
                s(&back),
                "--mlp-layout",
                layout,
            ]);
            assert_same(
                &sorted(inspect(&back)),
                &want,
                &format!("{}/{}: round trip ({layout})", v.family, v.name),
            );
            n += 1;
        }
    }
    println!("round trips: {n}");
    assert!(n > 0);
}

#[test]
fn fp8_decoding_of_every_code_matches_the_reference() {
    let d = root().join("fp8_decode");
    let codes = formats::open_file(&d.join("codes.safetensors")).expect("codes.safetensors");
    let decoded =
        formats::open_file(&d.join("decoded_f32.safetensors")).expect("decoded_f32.safetensors");
    let mut n = 0;
    for (name, dtype) in [
        ("e4m3", DType::F8E4M3),
        ("e5m2", DType::F8E5M2),
        ("e8m0", DType::F8E8M0),
    ] {
        let c = codes
            .find(name)
            .unwrap_or_else(|| panic!("codes.safetensors: no tensor {name}"));
        assert_eq!(c.info.dtype, dtype, "{name}");
        let r = decoded
            .find(name)
            .unwrap_or_else(|| panic!("decoded_f32.safetensors: no tensor {name}"));
        assert_eq!(r.info.dtype, DType::F32, "{name}");
        let cb = c.data.bytes();
        let rb = r.data.bytes();
        let table = fp8::table(dtype).unwrap();
        let mut special = 0;
        for (k, &code) in cb.iter().enumerate() {
            let theirs = f32::from_le_bytes(rb[4 * k..4 * k + 4].try_into().unwrap());
            let ours = table[code as usize];
            // The reference's decoder ignores the formats' special codes (docs/mcore-reference.md R6): NaN codes of
            // e4m3fn read as ±480, e5m2's exponent 31 as finite, e8m0's 0 as 0.0 and 0xFF as +inf. We follow the
            // OCP definitions there; every other code decodes bit for bit the same.
            let is_special = match dtype {
                DType::F8E4M3 => code & 0x7F == 0x7F,
                DType::F8E5M2 => (code >> 2) & 0x1F == 0x1F,
                _ => code == 0 || code == 0xFF,
            };
            if is_special {
                special += 1;
                assert!(
                    ours.is_nan() || ours.is_infinite() || ours < 1e-38,
                    "{name} {code:#04x}: {ours}"
                );
                continue;
            }
            assert_eq!(
                ours.to_bits(),
                theirs.to_bits(),
                "{name} {code:#04x}: ours {ours} reference {theirs}"
            );
            n += 1;
        }
        println!(
            "{name}: {} codes equal, {special} special codes per OCP",
            cb.len() - special
        );
    }
    assert!(n > 0);
}

#[test]
fn fp8_block_dequant_matches_reference_on_every_block_shape() {
    // Every FP8 weight of the FP8 variants, dequantised with its `weight_scale_inv` by the kernel, equals the
    // reference's bf16 tensor of the same HF name (its reverse output: the dequantised HF model).
    let mut n = 0;
    let mut shapes = std::collections::BTreeSet::new();
    for v in variants() {
        if !is_fp8_variant(&v) {
            continue;
        }
        let hf = formats::open_file(&v.dir.join("hf/model.safetensors")).expect("hf model");
        let want: BTreeMap<String, T> = sidecar(&v.dir.join("reversed/from_expected.safetensors"))
            .into_iter()
            .map(|t| (t.name.clone(), t))
            .collect();
        for t in hf
            .tensors
            .iter()
            .filter(|t| t.info.dtype.is_fp8() && t.info.name.ends_with(".weight"))
        {
            let sname = format!("{}_scale_inv", t.info.name);
            let sc = hf
                .find(&sname)
                .unwrap_or_else(|| panic!("{}: no {sname}", v.dir.display()));
            let block = fp8::block_size(&t.info.shape, &sc.info.shape, None).unwrap();
            let mut out = Vec::new();
            fp8::dequant_into(
                &t.data.bytes(),
                t.info.dtype,
                [t.info.shape[0], t.info.shape[1]],
                &sc.data.bytes(),
                sc.info.dtype,
                block,
                DType::BF16,
                &mut out,
            )
            .unwrap();
            let w = want
                .get(&t.info.name)
                .unwrap_or_else(|| panic!("{}: reference has no {}", v.dir.display(), t.info.name));
            assert_eq!(w.dtype, "BF16");
            assert_eq!(
                sha256_hex(&out),
                w.sha256,
                "{}/{}: {} ({:?}, scales {} {:?})",
                v.family,
                v.name,
                t.info.name,
                t.info.shape,
                sc.info.dtype,
                sc.info.shape
            );
            shapes.insert((
                t.info.shape.clone(),
                sc.info.shape.clone(),
                sc.info.dtype.name(),
            ));
            n += 1;
        }
    }
    println!(
        "FP8 tensors dequantised bit-exactly: {n}; (weight, scale, scale dtype) shapes: {shapes:?}"
    );
    assert!(n > 0, "no FP8 tensors in the fixtures");
}

fn sha256_hex(b: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

#[test]
fn fp8_is_kept_without_a_family_and_refused_by_ckpt() {
    // A format conversion keeps FP8 tensors (and their scales) byte for byte where the target holds them.
    let tmp = tempfile::tempdir().unwrap();
    let mut n = 0;
    for v in variants() {
        if !is_fp8_variant(&v) {
            continue;
        }
        let input = v.dir.join("hf/model.safetensors");
        let o = tmp.path().join(format!("{}.safetensors", v.name));
        convert(&["--input_path", s(&input), "--output_path", s(&o)]);
        let got = sorted(inspect(&o));
        assert_same(
            &got,
            &sorted(sidecar(&input)),
            &format!("{}: FP8 kept", v.name),
        );
        assert!(got.iter().any(|t| t.dtype.starts_with("F8_")));
        let c = tmp.path().join(format!("{}.ckpt", v.name));
        let out = cw(&["--input_path", s(&input), "--output_path", s(&c)]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("F8_E4M3") && err.contains(".ckpt"),
            "{err}"
        );
        assert!(!c.exists(), "no half-written ckpt");
        n += 1;
    }
    println!("FP8 inputs kept as they are: {n}");
    assert!(n > 0);
}

/// A variant's HF model copied into `dir` with its config.json edited by `edit`.
fn edited_copy(family: &str, variant: &str, dir: &Path, edit: impl Fn(&mut Value)) -> PathBuf {
    let src = root().join(family).join(variant).join("hf");
    std::fs::create_dir_all(dir).unwrap();
    let mut cfg = read_json(&src.join("config.json"));
    edit(&mut cfg);
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    let m = dir.join("model.safetensors");
    std::fs::copy(src.join("model.safetensors"), &m).unwrap();
    m
}

fn fails_with(args: &[&str], words: &[&str]) {
    let out = cw(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} succeeded");
    for w in words {
        assert!(err.contains(w), "{args:?}: '{w}' not in: {err}");
    }
}

#[test]
fn contradictions_are_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let o = tmp.path().join("o.safetensors");
    // the flag contradicts config.json's MLP layout
    let m = edited_copy("qwen3", "bf16", &tmp.path().join("a"), |c| {
        c["use_interleaved_weight_layout_mlp"] = Value::Bool(false)
    });
    fails_with(
        &[
            "--model",
            "qwen3",
            "--input_path",
            s(&m),
            "--output_path",
            s(&o),
            "--mlp-layout",
            "interleaved",
        ],
        &["config.json", "mlp-layout", "contiguous"],
    );
    // ... and config.json alone picks the contiguous layout
    convert(&[
        "--model",
        "qwen3",
        "--input_path",
        s(&m),
        "--output_path",
        s(&o),
    ]);
    let f = root().join("qwen3/bf16/ms/expected_contiguous.safetensors");
    assert_same(
        &sorted(inspect(&o)),
        &sorted(sidecar(&f)),
        "layout from config.json",
    );
    // experts where config.json says the layer is dense (mlp_only_layers)
    let m = edited_copy("qwen3_moe", "bf16", &tmp.path().join("b"), |c| {
        c["mlp_only_layers"] = serde_json::json!([0, 1])
    });
    fails_with(
        &[
            "--model",
            "qwen3-moe",
            "--input_path",
            s(&m),
            "--output_path",
            s(&o),
        ],
        &["qwen3_moe", "experts"],
    );
    // an expert count that contradicts config.json
    let m = edited_copy("glm4_moe", "bf16", &tmp.path().join("c"), |c| {
        c["n_routed_experts"] = 8.into()
    });
    fails_with(
        &[
            "--model",
            "glm4_moe",
            "--input_path",
            s(&m),
            "--output_path",
            s(&o),
        ],
        &["n_experts is 8"],
    );
    // an MTP layer past num_nextn_predict_layers
    let m = edited_copy("deepseek3", "bf16_mtp", &tmp.path().join("d"), |c| {
        c["num_nextn_predict_layers"] = 0.into()
    });
    fails_with(
        &[
            "--model",
            "deepseek3",
            "--input_path",
            s(&m),
            "--output_path",
            s(&o),
        ],
        &["model.layers.2.", "MTP"],
    );
}

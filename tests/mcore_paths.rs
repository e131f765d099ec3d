//! The MindFormers 2.x ("mcore") families on the paths `tests/mcore.rs` does not take: torch `.bin` input, sharded
//! output (`--max-shard-size`: MindSpore shards forward, HF shards reverse), `verify --model`, `--dry-run`, the `mlp_layout` manifest key of `convert-batch`, and
//! an FP8 model read from an HF shard set. Every result is compared with the real reference's outputs vendored in
//! `tests/fixtures/mcore/` (sidecars of `ms/expected*.safetensors`), found through the fixture locator.

mod common;
use std::path::{Path, PathBuf};

use common::*;
use serde_json::Value;

/// Model variants of `mcore/index.json` (the decoding table `fp8_decode` is not a model).
const MODEL_VARIANTS: usize = 13;
/// Of which FP8 (no `_contiguous` output).
const FP8_VARIANTS: usize = 2;

struct Variant {
    dir: PathBuf,
    family: String,
    name: String,
}

impl Variant {
    fn label(&self) -> String {
        format!("{}/{}", self.family, self.name)
    }
    fn hf(&self) -> PathBuf {
        require(self.dir.join("hf/model.safetensors"))
    }
    fn config(&self) -> PathBuf {
        require(self.dir.join("hf/config.json"))
    }
    fn expected(&self) -> Vec<T> {
        sorted(sidecar(&require(self.dir.join("ms/expected.safetensors"))))
    }
    fn is_fp8(&self) -> bool {
        self.name.starts_with("fp8")
    }
}

fn variants() -> Vec<Variant> {
    let index = read_json(&fixture("mcore/index.json"));
    let vs: Vec<Variant> = index["variants"]
        .as_array()
        .expect("mcore/index.json: variants")
        .iter()
        .filter(|v| v["family"] != "fp8_decode")
        .map(|v| Variant {
            dir: fixture(&format!("mcore/{}", v["dir"].as_str().expect("dir"))),
            family: v["family"].as_str().expect("family").to_string(),
            name: v["variant"].as_str().expect("variant").to_string(),
        })
        .collect();
    checked("mcore model variants listed", vs.len(), MODEL_VARIANTS);
    assert_eq!(
        vs.iter().filter(|v| v.is_fp8()).count(),
        FP8_VARIANTS,
        "FP8 variants in mcore/index.json"
    );
    vs
}

/// A fresh directory `tmp/name` holding the variant's config.json.
fn model_dir(v: &Variant, tmp: &Path, name: &str) -> PathBuf {
    let d = tmp.join(name);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::copy(v.config(), d.join("config.json")).unwrap();
    d
}

/// Forward-convert `input` of `v` to `output` (extra flags appended).
fn forward(v: &Variant, input: &Path, output: &Path, extra: &[&str]) {
    let mut args = vec![
        "--model",
        &v.family,
        "--input_path",
        s(input),
        "--output_path",
        s(output),
    ];
    args.extend_from_slice(extra);
    cw_ok(&args);
}

#[test]
fn torch_bin_input_gives_the_reference_output() {
    let tmp = tempfile::tempdir().unwrap();
    let mut n = 0;
    for v in variants() {
        // The pure format conversion first (no --model): safetensors -> torch zip, FP8 included.
        let d = model_dir(&v, tmp.path(), &format!("{}-{}", v.family, v.name));
        let bin = d.join("pytorch_model.bin");
        cw_ok(&["--input_path", s(&v.hf()), "--output_path", s(&bin)]);
        assert_same(
            &sorted(inspect(&bin)),
            &sorted(inspect(&v.hf())),
            &format!("{}: .bin copy", v.label()),
        );
        let out = tmp
            .path()
            .join(format!("{}-{}.safetensors", v.family, v.name));
        forward(&v, &bin, &out, &[]);
        assert_same(
            &sorted(inspect(&out)),
            &v.expected(),
            &format!("{}: forward from .bin", v.label()),
        );
        n += 1;
        if v.is_fp8() {
            continue; // no _contiguous reference for the FP8 variants
        }
        forward(&v, &bin, &out, &["--mlp-layout", "contiguous"]);
        assert_same(
            &sorted(inspect(&out)),
            &sorted(sidecar(&require(
                v.dir.join("ms/expected_contiguous.safetensors"),
            ))),
            &format!("{}: forward from .bin, contiguous fc1", v.label()),
        );
        n += 1;
    }
    checked(
        "mcore forward outputs from torch .bin",
        n,
        2 * MODEL_VARIANTS - FP8_VARIANTS,
    );
}

/// The data files of a shard set written to `dir`: every `<stem>-0000i-of-0000n.<ext>` (no index).
fn shard_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_str().unwrap();
            n.contains("-of-") && !n.ends_with(".json")
        })
        .collect();
    v.sort();
    v
}

#[test]
fn sharded_output_holds_the_reference_tensors_both_ways() {
    let tmp = tempfile::tempdir().unwrap();
    let mut n = 0;
    for v in variants() {
        // Forward into a new directory (named with a final '/'): MindSpore shards + index. 8 KiB: every tiny model
        // of the fixtures spans several shards.
        let out = tmp.path().join(format!("{}-{}-ms", v.family, v.name));
        let dir_arg = PathBuf::from(format!("{}/", s(&out)));
        forward(&v, &v.hf(), &dir_arg, &["--max-shard-size", "8KiB"]);
        let shards = shard_files(&out);
        assert!(
            shards.len() >= 2 && shards.iter().all(|p| s(p).ends_with(".ckpt")),
            "{}: forward shards {shards:?}",
            v.label()
        );
        let index = require(out.join("mindspore_model.ckpt.index.json"));
        assert_same(
            &sorted(inspect(&index)),
            &v.expected(),
            &format!("{}: forward into shards", v.label()),
        );

        // Reverse into HF shards: model-0000i-of-0000n.safetensors + model.safetensors.index.json.
        let ms = model_dir(&v, tmp.path(), &format!("{}-{}-in", v.family, v.name));
        let input = ms.join("model.safetensors");
        std::fs::copy(require(v.dir.join("ms/expected.safetensors")), &input).unwrap();
        let hf = tmp.path().join(format!("{}-{}-hf", v.family, v.name));
        cw_ok(&[
            "--model",
            &v.family,
            "--reversed",
            "--input_path",
            s(&input),
            "--output_path",
            &format!("{}/", s(&hf)),
            "--max-shard-size",
            "8KiB",
        ]);
        let shards = shard_files(&hf);
        assert!(
            shards.len() >= 2 && shards.iter().all(|p| s(p).ends_with(".safetensors")),
            "{}: HF shards {shards:?}",
            v.label()
        );
        let index = require(hf.join("model.safetensors.index.json"));
        assert_same(
            &sorted(inspect(&index)),
            &sorted(sidecar(&v.dir.join("reversed/from_expected.safetensors"))),
            &format!("{}: reverse into HF shards", v.label()),
        );
        n += 1;
    }
    checked(
        "mcore variants written as shards both ways",
        n,
        MODEL_VARIANTS,
    );
}

/// A copy of the safetensors file `src` with one byte of its first tensor changed.
fn with_one_byte_changed(src: &Path, dst: &Path) -> String {
    let mut b = std::fs::read(src).unwrap();
    let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&b[8..8 + n]).unwrap();
    let (name, t) = header
        .as_object()
        .unwrap()
        .iter()
        .find(|(k, t)| {
            *k != "__metadata__" && t["data_offsets"][1].as_u64() > t["data_offsets"][0].as_u64()
        })
        .expect("a tensor with data");
    let at = 8 + n + t["data_offsets"][0].as_u64().unwrap() as usize;
    b[at] ^= 0x01;
    std::fs::write(dst, b).unwrap();
    name.clone()
}

#[test]
fn verify_with_model_accepts_the_forward_output_and_names_a_changed_tensor() {
    let tmp = tempfile::tempdir().unwrap();
    let mut n = 0;
    for v in variants() {
        let out = tmp
            .path()
            .join(format!("{}-{}.safetensors", v.family, v.name));
        forward(&v, &v.hf(), &out, &[]);
        let ok = cw(&["verify", "--model", &v.family, s(&v.hf()), s(&out)]);
        assert_eq!(
            ok.status.code(),
            Some(0),
            "{}: verify of its own forward output: {}{}",
            v.label(),
            String::from_utf8_lossy(&ok.stdout),
            String::from_utf8_lossy(&ok.stderr)
        );
        assert!(String::from_utf8_lossy(&ok.stdout).contains("identical"));

        let bad = tmp
            .path()
            .join(format!("{}-{}-changed.safetensors", v.family, v.name));
        let changed = with_one_byte_changed(&out, &bad);
        let r = cw(&["verify", "--model", &v.family, s(&v.hf()), s(&bad)]);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&r.stdout),
            String::from_utf8_lossy(&r.stderr)
        );
        assert_eq!(
            r.status.code(),
            Some(1),
            "{}: changed tensor: {text}",
            v.label()
        );
        assert!(
            text.contains(&changed),
            "{}: the difference names '{changed}': {text}",
            v.label()
        );
        n += 1;
    }
    checked(
        "mcore variants verified (identical and changed)",
        n,
        MODEL_VARIANTS,
    );
}

/// `(name, dtype, shape)` of every line of a `--dry-run` plan: `TARGET <- EXPR  DTYPE [d0, d1]`.
fn dry_run_tensors(out: &str) -> Vec<(String, String, Vec<u64>)> {
    let mut v: Vec<_> = out
        .lines()
        .filter(|l| l.contains(" <- "))
        .map(|l| {
            let name = l.split(" <- ").next().unwrap().to_string();
            let (head, shape) = l.rsplit_once(" [").expect("shape");
            let dtype = head.rsplit(' ').next().unwrap().to_string();
            let shape = shape
                .trim_end_matches(']')
                .split(", ")
                .filter(|d| !d.is_empty())
                .map(|d| d.parse().unwrap())
                .collect();
            (name, dtype, shape)
        })
        .collect();
    v.sort();
    v
}

#[test]
fn dry_run_lists_exactly_the_tensors_written() {
    let tmp = tempfile::tempdir().unwrap();
    let mut n = 0;
    for v in variants() {
        for reversed in [false, true] {
            let (input, out) = if reversed {
                (
                    require(v.dir.join("ms/expected.safetensors")),
                    tmp.path()
                        .join(format!("{}-{}-rev.safetensors", v.family, v.name)),
                )
            } else {
                (
                    v.hf(),
                    tmp.path()
                        .join(format!("{}-{}.safetensors", v.family, v.name)),
                )
            };
            // the reverse reads the config beside its MindSpore input
            let input = if reversed {
                let d = model_dir(&v, tmp.path(), &format!("{}-{}-ms", v.family, v.name));
                let f = d.join("model.safetensors");
                std::fs::copy(&input, &f).unwrap();
                f
            } else {
                input
            };
            let mut args = vec![
                "--model",
                v.family.as_str(),
                "--input_path",
                s(&input),
                "--output_path",
                s(&out),
            ];
            if reversed {
                args.push("--reversed");
            }
            let mut dry = args.clone();
            dry.push("--dry-run");
            let plan = dry_run_tensors(&cw_ok(&dry));
            assert!(
                !out.exists(),
                "{}: --dry-run wrote {}",
                v.label(),
                out.display()
            );
            cw_ok(&args);
            let mut written: Vec<_> = inspect(&out)
                .into_iter()
                .map(|t| (t.name, t.dtype, t.shape))
                .collect();
            written.sort();
            assert_eq!(
                plan,
                written,
                "{} ({}): dry-run plan vs tensors written",
                v.label(),
                if reversed { "reverse" } else { "forward" }
            );
            n += 1;
        }
    }
    checked("mcore dry-run plans compared", n, 2 * MODEL_VARIANTS);
}

#[test]
fn mlp_layout_manifest_key_selects_the_fc1_layout() {
    let tmp = tempfile::tempdir().unwrap();
    let mut jobs = String::new();
    let mut want = Vec::new();
    for v in variants() {
        if v.is_fp8() {
            continue; // no _contiguous reference for the FP8 variants
        }
        for (layout, file) in [
            ("interleaved", "ms/expected.safetensors"),
            ("contiguous", "ms/expected_contiguous.safetensors"),
        ] {
            let name = format!("{}-{}-{layout}", v.family, v.name);
            let out = tmp.path().join(format!("{name}.safetensors"));
            jobs.push_str(&format!(
                "[[job]]\nname = \"{name}\"\nmodel = \"{}\"\nmlp_layout = \"{layout}\"\ninput = \"{}\"\noutput = \"{}\"\n\n",
                v.family,
                s(&v.hf()),
                s(&out)
            ));
            want.push((v.label(), out, sorted(sidecar(&require(v.dir.join(file))))));
        }
    }
    let manifest = tmp.path().join("jobs.toml");
    std::fs::write(&manifest, jobs).unwrap();
    let r = run("convert-batch", &[s(&manifest)]);
    assert!(
        r.status.success(),
        "convert-batch: {}",
        String::from_utf8_lossy(&r.stderr)
    );
    for (label, out, expected) in &want {
        assert_same(
            &sorted(inspect(out)),
            expected,
            &format!("{label}: {}", out.display()),
        );
    }
    checked(
        "mcore batch jobs with mlp_layout",
        want.len(),
        2 * (MODEL_VARIANTS - FP8_VARIANTS),
    );
}

#[test]
fn fp8_model_converts_from_an_hf_shard_set() {
    let tmp = tempfile::tempdir().unwrap();
    let mut n = 0;
    for v in variants() {
        if !v.is_fp8() {
            continue;
        }
        // The FP8 HF model split into shards by the pure format conversion (FP8 kept as it is), config beside.
        let d = model_dir(&v, tmp.path(), &v.name);
        cw_ok(&[
            "--input_path",
            s(&v.hf()),
            "--output_path",
            s(&d),
            "--max-shard-size",
            "4KiB",
        ]);
        let shards = shard_files(&d);
        assert!(
            shards.len() >= 2,
            "{}: {} shard(s)",
            v.label(),
            shards.len()
        );
        let index = require(d.join("model.safetensors.index.json"));
        assert!(
            inspect(&index).iter().any(|t| t.dtype.starts_with("F8_")),
            "{}: the shards keep FP8",
            v.label()
        );
        for (input, what) in [(index.clone(), "index"), (d.clone(), "directory")] {
            let out = tmp.path().join(format!("{}-{what}.safetensors", v.name));
            forward(&v, &input, &out, &[]);
            assert_same(
                &sorted(inspect(&out)),
                &v.expected(),
                &format!("{}: forward from the shards' {what}", v.label()),
            );
            n += 1;
        }
    }
    checked("FP8 conversions from HF shard sets", n, 2 * FP8_VARIANTS);
}

//! The one locator of the vendored golden fixtures (`tests/fixtures/`, see its README.md), shared by every test
//! helper module (`tests/common`, `tests/ms_common`, `tests/common_corrupt`): a missing fixture is a test failure
//! with a message naming it, never a skip.
//!
//! The vendored set is listed in `tools/refresh-fixtures.sh`; the counts below follow from that list and are
//! asserted by the tests that loop over fixtures, so a lost file or a walk that finds nothing fails loudly.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// Variants vendored whole (inputs in every layout, every reference output), as listed in `index.json`.
pub const FULL_VARIANTS: usize = 12;
/// Variants vendored as metadata only (manifest, config, sidecars).
pub const SIDECAR_VARIANTS: usize = 12;
/// Data files with a sidecar under the golden data dirs (full variants + `edge/`).
pub const SIDECARS: usize = 91;
/// `.ckpt` files under the golden data dirs (2 reference outputs per full variant + 3 in `edge/`).
pub const CKPTS: usize = 27;
/// `.safetensors` files under the golden data dirs.
pub const SAFETENSORS: usize = 13;
/// torch files (zip and legacy) with a sidecar under the golden data dirs.
pub const TORCH_FILES: usize = 51;
/// `pytorch_model.bin.index.json` shard indexes (one per full variant).
pub const TORCH_SHARD_INDEXES: usize = 12;

const HOW_TO_RESTORE: &str =
    "the golden fixtures are vendored in the repository: restore them with \
     `git checkout -- tests/fixtures` (or rerun tools/refresh-fixtures.sh)";

/// `tests/fixtures/` of this repository. Panics (the test fails) when its `index.json` is missing.
pub fn fixtures() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    if !p.join("index.json").is_file() {
        panic!(
            "missing fixture {}: {HOW_TO_RESTORE}",
            p.join("index.json").display()
        );
    }
    p
}

/// A path under `tests/fixtures/` that must exist (file or directory); the test fails naming it otherwise.
pub fn fixture(rel: &str) -> PathBuf {
    require(fixtures().join(rel))
}

/// `p` itself, or a failure naming it when it does not exist.
pub fn require(p: PathBuf) -> PathBuf {
    if !p.exists() {
        panic!("missing fixture {}: {HOW_TO_RESTORE}", p.display());
    }
    p
}

fn read_index() -> serde_json::Value {
    let p = fixtures().join("index.json");
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// `dir` of every `index.json` variant whose `vendored` field is `kind` ("full" or "sidecars"), each checked to
/// exist.
pub fn variant_dirs(kind: &str) -> Vec<PathBuf> {
    let root = fixtures();
    read_index()["variants"]
        .as_array()
        .expect("index.json: variants")
        .iter()
        .filter(|v| v["vendored"].as_str() == Some(kind))
        .map(|v| require(root.join(v["dir"].as_str().expect("index.json: dir"))))
        .collect()
}

/// Whether the variant at `dir` (relative, as in `index.json`) is vendored whole.
pub fn is_full_variant(dir: &str) -> bool {
    read_index()["variants"]
        .as_array()
        .expect("index.json: variants")
        .iter()
        .find(|v| v["dir"].as_str() == Some(dir))
        .unwrap_or_else(|| panic!("variant {dir} is not in tests/fixtures/index.json"))["vendored"]
        .as_str()
        == Some("full")
}

/// The directories holding golden data files: every full variant and `edge/`. Walks over fixtures start here, so
/// sidecar-only variants and other helpers' folders (`mcore/`, `wild/`, ...) are never picked up by accident.
pub fn golden_data_dirs() -> Vec<PathBuf> {
    let mut dirs = variant_dirs("full");
    assert_eq!(
        dirs.len(),
        FULL_VARIANTS,
        "full variants in tests/fixtures/index.json"
    );
    dirs.push(fixture("edge"));
    dirs
}

/// Every file under the golden data dirs whose name ends with `suffix`, sorted.
pub fn golden_files(suffix: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for dir in golden_data_dirs() {
        let mut stack = vec![dir];
        while let Some(d) = stack.pop() {
            let rd = std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display()));
            for e in rd {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else if p.to_str().unwrap().ends_with(suffix) {
                    out.push(p);
                }
            }
        }
    }
    out.sort();
    out
}

/// Every data file that has a sidecar (`<file>.tensors.json`) under the golden data dirs, each checked to exist.
pub fn golden_sidecar_files() -> Vec<PathBuf> {
    golden_files(".tensors.json")
        .into_iter()
        .map(|p| {
            require(PathBuf::from(
                p.to_str().unwrap().strip_suffix(".tensors.json").unwrap(),
            ))
        })
        .collect()
}

/// Print how many fixture cases a test checked (visible with `--nocapture`) and fail unless it is `want`.
pub fn checked(what: &str, n: usize, want: usize) {
    println!("checked {n} {what}");
    assert!(n > 0, "checked no {what}");
    assert_eq!(
        n, want,
        "checked {n} {what}, expected {want} (a vendored fixture lost, or tools/refresh-fixtures.sh changed without \
         updating tests/common/fixtures.rs)"
    );
}

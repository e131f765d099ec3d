//! Shared helpers for integration tests: the fixture oracle and running the real binaries.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

// The fixture locator (`fixtures()`, `fixture(rel)`, the golden walks and counts), shared with the other helpers.
#[path = "fixtures.rs"]
mod locate;
#[allow(unused_imports)]
pub use locate::*;

/// One tensor as a sidecar (or `inspect --json --hash`) lists it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct T {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<u64>,
    pub sha256: String,
}

pub fn tensors_of(doc: &Value) -> Vec<T> {
    doc["tensors"]
        .as_array()
        .expect("tensors array")
        .iter()
        .map(|t| T {
            name: t["name"].as_str().unwrap().to_string(),
            dtype: t["dtype"].as_str().unwrap().to_string(),
            shape: t["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap())
                .collect(),
            sha256: t["sha256"].as_str().unwrap_or("").to_string(),
        })
        .collect()
}

pub fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Tensors of a fixture's sidecar.
pub fn sidecar(file: &Path) -> Vec<T> {
    let mut p = file.as_os_str().to_owned();
    p.push(".tensors.json");
    tensors_of(&read_json(Path::new(&p)))
}

/// Every `*.tensors.json` under `dir`, as the data file it describes.
pub fn sidecar_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if let Some(s) = p.to_str().and_then(|s| s.strip_suffix(".tensors.json")) {
                out.push(PathBuf::from(s));
            }
        }
    }
    out.sort();
    out
}

pub fn bin(name: &str) -> PathBuf {
    match name {
        "convert-weight" => PathBuf::from(env!("CARGO_BIN_EXE_convert-weight")),
        "convert-batch" => PathBuf::from(env!("CARGO_BIN_EXE_convert-batch")),
        other => panic!("no binary {other}"),
    }
}

pub fn run(name: &str, args: &[&str]) -> Output {
    Command::new(bin(name))
        .args(args)
        .output()
        .expect("binary runs")
}

pub fn cw(args: &[&str]) -> Output {
    run("convert-weight", args)
}

/// Run convert-weight and require success.
pub fn cw_ok(args: &[&str]) -> String {
    let out = cw(args);
    assert!(
        out.status.success(),
        "convert-weight {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `inspect --json --hash` of a path.
pub fn inspect(path: &Path) -> Vec<T> {
    let out = cw_ok(&["inspect", path.to_str().unwrap(), "--json", "--hash"]);
    tensors_of(&serde_json::from_str(&out).expect("inspect prints one JSON object"))
}

/// Every tensor of a checkpoint as a sidecar lists it (sha256 of its bytes), sorted by name.
pub fn tensors_of_checkpoint(ck: &convert_weight::tensor::Checkpoint) -> Vec<T> {
    use sha2::Digest;
    sorted(
        ck.tensors
            .iter()
            .map(|t| T {
                name: t.info.name.clone(),
                dtype: t.info.dtype.name().to_string(),
                shape: t.info.shape.iter().map(|&d| d as u64).collect(),
                sha256: sha2::Sha256::digest(t.data.bytes().as_ref())
                    .iter()
                    .map(|x| format!("{x:02x}"))
                    .collect(),
            })
            .collect(),
    )
}

pub fn sorted(mut v: Vec<T>) -> Vec<T> {
    v.sort();
    v
}

/// Path as &str.
pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Assert two tensor lists are equal, printing only the differences.
pub fn assert_same(got: &[T], want: &[T], ctx: &str) {
    if got == want {
        return;
    }
    let mut lines = Vec::new();
    for w in want {
        match got.iter().find(|g| g.name == w.name) {
            None => lines.push(format!("  missing {}", w.name)),
            Some(g) if g != w => lines.push(format!(
                "  {}: got {} {:?} {:.12} want {} {:?} {:.12}",
                w.name, g.dtype, g.shape, g.sha256, w.dtype, w.shape, w.sha256
            )),
            _ => {}
        }
    }
    for g in got {
        if !want.iter().any(|w| w.name == g.name) {
            lines.push(format!("  extra {}", g.name));
        }
    }
    lines.truncate(12);
    panic!("{ctx}: tensors differ\n{}", lines.join("\n"));
}

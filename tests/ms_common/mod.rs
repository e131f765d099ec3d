//! Helpers shared by the ckpt / safetensors / sharded format tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use convert_weight::formats::{self, OutTensor, OutputFormat, WriteOptions};
use convert_weight::tensor::{Checkpoint, DType};
use sha2::{Digest, Sha256};

// The fixture locator, shared with `tests/common`.
#[path = "../common/fixtures.rs"]
mod locate;
#[allow(unused_imports)]
pub use locate::*;

pub fn sha256_hex(b: &[u8]) -> String {
    let d = Sha256::digest(b);
    d.iter().map(|x| format!("{x:02x}")).collect()
}

/// The sidecar json of a data file.
pub fn sidecar(file: &Path) -> serde_json::Value {
    let p = PathBuf::from(format!("{}.tensors.json", file.display()));
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap()
}

/// Check that a checkpoint's tensors equal a sidecar's list (name, order, dtype, shape, sha256).
pub fn assert_matches_sidecar(ck: &Checkpoint, side: &serde_json::Value, what: &str) {
    let list = side["tensors"].as_array().unwrap();
    assert_eq!(ck.tensors.len(), list.len(), "{what}: tensor count");
    for (t, s) in ck.tensors.iter().zip(list) {
        assert_eq!(t.info.name, s["name"].as_str().unwrap(), "{what}: order");
        let name = &t.info.name;
        assert_eq!(
            t.info.dtype,
            DType::from_name(s["dtype"].as_str().unwrap()).unwrap(),
            "{what}: {name} dtype"
        );
        let shape: Vec<usize> = s["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(t.info.shape, shape, "{what}: {name} shape");
        assert_eq!(
            t.data.len() as u64,
            s["nbytes"].as_u64().unwrap(),
            "{what}: {name} nbytes"
        );
        assert_eq!(
            sha256_hex(&t.data.bytes()),
            s["sha256"].as_str().unwrap(),
            "{what}: {name} sha256"
        );
    }
}

/// Declarations of a checkpoint's tensors.
pub fn declare(ck: &Checkpoint) -> Vec<OutTensor> {
    ck.tensors
        .iter()
        .map(|t| OutTensor {
            info: t.info.clone(),
            tied_to: t.tied_to,
        })
        .collect()
}

/// Write a checkpoint through `formats::create_writer`, feeding tensors in the writer's order.
pub fn write_checkpoint(
    format: OutputFormat,
    path: &Path,
    ck: &Checkpoint,
    opts: &WriteOptions,
) -> formats::Result<Vec<PathBuf>> {
    let decl = declare(ck);
    let mut w = formats::create_writer(format, path, &decl, opts)?;
    for i in w.order() {
        w.write(i, &ck.tensors[i].data.bytes())?;
    }
    w.finish()
}

/// The same tensors (name, dtype, shape, bytes) in the same order.
pub fn assert_same_tensors(a: &Checkpoint, b: &Checkpoint, what: &str) {
    assert_eq!(a.infos(), b.infos(), "{what}: headers");
    for (x, y) in a.tensors.iter().zip(&b.tensors) {
        assert!(
            x.data.bytes() == y.data.bytes(),
            "{what}: bytes of {}",
            x.info.name
        );
    }
}

/// The same tensors regardless of order.
pub fn assert_same_tensor_set(a: &Checkpoint, b: &Checkpoint, what: &str) {
    assert_eq!(a.tensors.len(), b.tensors.len(), "{what}: count");
    for x in &a.tensors {
        let y = b
            .find(&x.info.name)
            .unwrap_or_else(|| panic!("{what}: {} missing", x.info.name));
        assert_eq!(x.info, y.info, "{what}");
        assert!(
            x.data.bytes() == y.data.bytes(),
            "{what}: bytes of {}",
            x.info.name
        );
    }
}

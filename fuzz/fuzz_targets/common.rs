//! Shared by the fuzz targets: readers take paths, so each input is written to a per-process file on tmpfs.

use std::path::PathBuf;

use convert_weight::tensor::Checkpoint;

/// A per-process scratch file on tmpfs (falls back to the temp dir) with the given extension.
pub fn scratch(ext: &str) -> PathBuf {
    let dir = if std::path::Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    dir.join(format!("cw-fuzz-{}.{ext}", std::process::id()))
}

/// Write `data` to the scratch file and return its path.
pub fn write(ext: &str, data: &[u8]) -> PathBuf {
    let p = scratch(ext);
    std::fs::write(&p, data).expect("scratch file is writable");
    p
}

/// Largest tensor whose bytes a target materialises (a stride-0 view may legitimately be bigger than its file).
const MAX_MATERIALISE: usize = 64 << 20;

/// Touch every tensor's bytes: readers promise that reading a checked range never fails.
pub fn touch(ck: &Checkpoint) {
    for t in &ck.tensors {
        let n = t.data.len();
        if n <= MAX_MATERIALISE {
            let b = t.data.bytes();
            assert_eq!(
                b.len(),
                n,
                "tensor '{}': bytes() length differs from len()",
                t.info.name
            );
            assert_eq!(
                n,
                t.info.nbytes(),
                "tensor '{}': data length differs from the header's size",
                t.info.name
            );
        }
    }
}

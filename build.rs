//! Build script: only for `--features cuda`, where the binaries get the CUDA libraries' folder as their run path
//! (cudart, cuBLAS, cuRAND, NVRTC from tools/setup-cuda.sh), so they start without LD_LIBRARY_PATH. The driver
//! library is never taken from there: the link stub lives in `lib/stubs`, which is not a run path.
use std::path::Path;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=CUDA_ROOT");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    if let Some(root) = std::env::var_os("CUDA_ROOT") {
        let lib = Path::new(&root).join("lib");
        if lib.is_dir() {
            println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
        }
    }
}

//! Fuzz the legacy (pre-1.6) torch reader on raw bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let p = common::write("bin", data);
    if let Ok(ck) = convert_weight::formats::torch::read_legacy(&p) {
        common::touch(&ck);
    }
});

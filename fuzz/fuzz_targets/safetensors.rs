//! Fuzz the safetensors reader on raw bytes: it must return Ok or Err, never panic or over-allocate.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let p = common::write("safetensors", data);
    if let Ok(ck) = convert_weight::formats::safetensors::read(&p) {
        common::touch(&ck);
    }
});

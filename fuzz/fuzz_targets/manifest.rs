//! Fuzz the batch manifest parser (TOML, defaults, job checks) on arbitrary text.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = convert_weight::manifest::Manifest::parse(
            text,
            Path::new("fuzz.toml"),
            Path::new("/nonexistent"),
        );
    }
});

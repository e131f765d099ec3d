//! Fuzz the torch pickle machine: the input is `data.pkl` of a torch zip that also holds a few small storages, so
//! persistent ids that name them resolve and the state-dict rebuild runs too.
#![no_main]

use std::io::Write;

use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

fn zip_with(pickle: &[u8]) -> Vec<u8> {
    use zip::write::SimpleFileOptions;
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let o = SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    let mut put = |name: &str, data: &[u8]| {
        w.start_file(name, o).expect("zip entry");
        w.write_all(data).expect("zip write");
    };
    put("archive/data.pkl", pickle);
    put("archive/byteorder", b"little");
    for k in 0..4 {
        put(&format!("archive/data/{k}"), &[0x3Cu8; 64]);
    }
    put("archive/version", b"3\n");
    w.finish().expect("zip finish").into_inner()
}

fuzz_target!(|data: &[u8]| {
    let p = common::write("bin", &zip_with(data));
    if let Ok(ck) = convert_weight::formats::torch::read_zip(&p) {
        common::touch(&ck);
    }
});

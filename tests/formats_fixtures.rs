//! Every fixture file read through `inspect --json --hash` gives its sidecar's tensors; every fixture converted to
//! each other format (pure format conversion) reads back identical.

mod common;
use common::*;

#[test]
fn inspect_matches_every_sidecar() {
    let files = golden_sidecar_files();
    for f in &files {
        let ours = inspect(f);
        let theirs = sidecar(f);
        assert_same(&ours, &theirs, &f.display().to_string());
    }
    checked("fixture files inspected", files.len(), SIDECARS);
}

#[test]
fn pure_conversion_to_every_format_reads_back_identical() {
    let tmp = tempfile::tempdir().unwrap();
    let files = golden_sidecar_files();
    let n = files.len();
    for (k, f) in files.into_iter().enumerate() {
        // A shard converts with all its siblings (any one shard loads the whole set).
        let want = if f.parent().is_some_and(|d| d.ends_with("torch_sharded")) {
            let dir = f.parent().unwrap();
            sorted(
                sidecar_files(dir)
                    .iter()
                    .flat_map(|shard| sidecar(shard))
                    .collect(),
            )
        } else {
            sorted(sidecar(&f))
        };
        for ext in ["ckpt", "bin", "safetensors"] {
            let out = tmp.path().join(format!("{k}.{ext}"));
            cw_ok(&["--input_path", s(&f), "--output_path", s(&out)]);
            assert_same(
                &sorted(inspect(&out)),
                &want,
                &format!("{} -> .{ext}", f.display()),
            );
        }
    }
    checked("fixture files converted to every format", n, SIDECARS);
}

#[test]
fn ckpt_fixtures_rewrite_byte_identical() {
    let tmp = tempfile::tempdir().unwrap();
    let mut n = 0;
    for f in golden_sidecar_files() {
        if f.extension().and_then(|e| e.to_str()) != Some("ckpt")
            || f.to_str().unwrap().contains("ms_sliced")
        {
            continue;
        }
        n += 1;
        let out = tmp.path().join("x.ckpt");
        cw_ok(&["--input_path", s(&f), "--output_path", s(&out)]);
        let mut side = f.as_os_str().to_owned();
        side.push(".tensors.json");
        let want = read_json(std::path::Path::new(&side))["file_sha256"]
            .as_str()
            .unwrap()
            .to_string();
        let got = convert_weight::convert::file_sha256(&out).unwrap();
        assert_eq!(got, want, "{}", f.display());
    }
    // every ckpt but the two chunked ones
    checked("ckpt fixtures rewritten by the binary", n, CKPTS - 2);
}

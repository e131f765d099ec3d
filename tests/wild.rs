//! Checkpoints from the wild (issue 14): the corpus in tests/fixtures/wild (made by tools/make-wild-corpus.py with
//! the real torch, safetensors and MindSpore) read exactly as the libraries read it, files that are not state
//! dicts refused with a line saying what they are, and torch zips built the way torch's writer (miniz) lays them
//! out for every root-folder length, with and without zip64 records, and beyond 4 GiB.

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use std::process::Command;

use convert_weight::formats::{self, ReadOptions};
use serde_json::Value;
use sha2::{Digest, Sha256};

mod common;

/// `tests/fixtures/wild/` (through the shared locator: a missing fixture fails naming it).
fn corpus() -> PathBuf {
    common::fixture("wild")
}

fn fixture(name: &str) -> PathBuf {
    common::fixture(&format!("wild/{name}"))
}

/// A sidecar's tensors, sorted by name, in the shared form.
fn sidecar_rows(doc: &Value) -> Vec<common::T> {
    common::sorted(common::tensors_of(doc))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn cw(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_convert-weight"))
        .args(args)
        .output()
        .expect("run convert-weight");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

// ------------------------------------------------------------------------------------------------------------
// The corpus, against the sidecars the real libraries wrote

#[test]
fn every_wild_file_reads_as_the_libraries_read_it() {
    let mut sidecars: Vec<PathBuf> = std::fs::read_dir(corpus())
        .expect("tests/fixtures/wild exists")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().ends_with(".tensors.json"))
        .collect();
    sidecars.sort();
    let mut failures = Vec::new();
    for sc in &sidecars {
        let doc: Value = serde_json::from_slice(&std::fs::read(sc).unwrap()).unwrap();
        let file = fixture(doc["file"].as_str().unwrap());
        // A sidecar for another dict of the same file (`x.pth.ema.tensors.json`) reads it with that key.
        let opts = if sc.to_string_lossy().ends_with(".ema.tensors.json") {
            ReadOptions {
                state_dict_key: doc["container_key"].as_str().map(String::from),
            }
        } else {
            ReadOptions::default()
        };
        match formats::open_file_with(&file, &opts) {
            Err(e) => failures.push(format!("{}: {e}", file.display())),
            Ok(ck) => {
                let got = common::tensors_of_checkpoint(&ck);
                let want = sidecar_rows(&doc);
                if got != want {
                    failures.push(format!(
                        "{}: tensors differ from the sidecar\n  got  {got:?}\n  want {want:?}",
                        file.display()
                    ));
                }
                if let Some(meta) = doc.get("metadata").and_then(Value::as_object) {
                    let want: Vec<(String, String)> = meta
                        .iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                        .collect();
                    let mut got = ck.metadata.clone();
                    got.sort();
                    let mut want = want;
                    want.sort();
                    if got != want {
                        failures.push(format!(
                            "{}: metadata {got:?}, want {want:?}",
                            file.display()
                        ));
                    }
                }
            }
        }
    }
    eprintln!("{} wild sidecars checked", sidecars.len());
    assert!(
        sidecars.len() >= 15,
        "too few wild sidecars: {}",
        sidecars.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// ------------------------------------------------------------------------------------------------------------
// Item 1: the zip directory located as miniz does

/// A pickle of `{name: tensor}` for each (name, storage key, dtype class, numel, shape) with contiguous strides.
fn state_pickle(tensors: &[(&str, &str, &str, u64, &[u64])]) -> Vec<u8> {
    fn int(p: &mut Vec<u8>, v: u64) {
        if v < 256 {
            p.extend_from_slice(&[b'K', v as u8]);
        } else if v < (1 << 31) {
            p.push(b'J');
            p.extend_from_slice(&(v as u32).to_le_bytes());
        } else {
            p.extend_from_slice(&[0x8a, 9]);
            p.extend_from_slice(&v.to_le_bytes());
            p.push(0);
        }
    }
    fn s(p: &mut Vec<u8>, x: &str) {
        p.push(b'X');
        p.extend_from_slice(&(x.len() as u32).to_le_bytes());
        p.extend_from_slice(x.as_bytes());
    }
    let mut p = vec![0x80, 2, b'}', b'('];
    for (name, key, class, numel, shape) in tensors {
        s(&mut p, name);
        p.extend_from_slice(b"ctorch._utils\n_rebuild_tensor_v2\n(");
        p.push(b'(');
        s(&mut p, "storage");
        p.extend_from_slice(format!("ctorch\n{class}\n").as_bytes());
        s(&mut p, key);
        s(&mut p, "cpu");
        int(&mut p, *numel);
        p.extend_from_slice(b"tQ");
        int(&mut p, 0);
        let mut strides = vec![1u64; shape.len()];
        for i in (0..shape.len().saturating_sub(1)).rev() {
            strides[i] = strides[i + 1] * shape[i + 1];
        }
        for dims in [shape.to_vec(), strides] {
            p.push(b'(');
            for d in dims {
                int(&mut p, d);
            }
            p.push(b't');
        }
        p.extend_from_slice(b"\x89ccollections\nOrderedDict\n)RtR");
    }
    p.extend_from_slice(b"u.");
    p
}

/// One record of a miniz-style archive: its name and either its bytes or (for a sparse hole) its length.
enum Data<'a> {
    Bytes(&'a [u8]),
    Hole(u64),
}

/// Write a torch-style (miniz) zip: Stored entries, FB padding aligning data to 64 bytes, data descriptors, zip64
/// extras for values ≥ 4 GiB, and (with `zip64_end`) the zip64 end record and locator before the classic end.
fn write_miniz_zip(path: &Path, entries: &[(String, Data<'_>)], zip64_end: bool) {
    let mut f = File::create(path).unwrap();
    let mut pos = 0u64;
    let mut central = Vec::new();
    for (name, data) in entries {
        let (len, crc) = match data {
            Data::Bytes(b) => (b.len() as u64, crc32fast::hash(b)),
            Data::Hole(n) => (*n, 0),
        };
        let big_size = len >= 0xFFFF_FFFF;
        let big_off = pos >= 0xFFFF_FFFF;
        let mut extra = Vec::new();
        if big_size || big_off {
            let mut z = Vec::new();
            if big_size {
                z.extend_from_slice(&len.to_le_bytes());
                z.extend_from_slice(&0u64.to_le_bytes());
            }
            if big_off {
                z.extend_from_slice(&pos.to_le_bytes());
            }
            extra.extend_from_slice(&1u16.to_le_bytes());
            extra.extend_from_slice(&(z.len() as u16).to_le_bytes());
            extra.extend_from_slice(&z);
        }
        let unpadded = pos + 30 + name.len() as u64 + extra.len() as u64 + 4;
        let pad = (64 - unpadded % 64) % 64;
        extra.extend_from_slice(b"FB");
        extra.extend_from_slice(&(pad as u16).to_le_bytes());
        extra.extend(std::iter::repeat_n(b'Z', pad as usize));
        let mut h = Vec::new();
        h.extend_from_slice(&0x0403_4b50u32.to_le_bytes());
        h.extend_from_slice(&[0, 0, 0x08, 0x08, 0, 0, 0, 0, 0, 0]);
        h.extend_from_slice(&[0; 12]); // crc and sizes follow in the descriptor
        h.extend_from_slice(&(name.len() as u16).to_le_bytes());
        h.extend_from_slice(&(extra.len() as u16).to_le_bytes());
        h.extend_from_slice(name.as_bytes());
        h.extend_from_slice(&extra);
        f.write_all(&h).unwrap();
        let start = pos + h.len() as u64;
        assert_eq!(start % 64, 0);
        match data {
            Data::Bytes(b) => f.write_all(b).unwrap(),
            Data::Hole(n) => {
                f.seek(SeekFrom::Current(*n as i64)).unwrap();
            }
        }
        let mut d = Vec::new();
        d.extend_from_slice(&0x0807_4b50u32.to_le_bytes());
        d.extend_from_slice(&crc.to_le_bytes());
        if big_size || big_off {
            d.extend_from_slice(&len.to_le_bytes());
            d.extend_from_slice(&len.to_le_bytes());
        } else {
            d.extend_from_slice(&(len as u32).to_le_bytes());
            d.extend_from_slice(&(len as u32).to_le_bytes());
        }
        f.write_all(&d).unwrap();
        // The central entry.
        let mut z = Vec::new();
        if big_size {
            z.extend_from_slice(&len.to_le_bytes());
            z.extend_from_slice(&len.to_le_bytes());
        }
        if big_off {
            z.extend_from_slice(&pos.to_le_bytes());
        }
        let mut cx = Vec::new();
        if !z.is_empty() {
            cx.extend_from_slice(&1u16.to_le_bytes());
            cx.extend_from_slice(&(z.len() as u16).to_le_bytes());
            cx.extend_from_slice(&z);
        }
        let size32 = if big_size { 0xFFFF_FFFF } else { len as u32 };
        let off32 = if big_off { 0xFFFF_FFFF } else { pos as u32 };
        central.extend_from_slice(&0x0201_4b50u32.to_le_bytes());
        central.extend_from_slice(&[0, 0, 0, 0, 0x08, 0x08, 0, 0, 0, 0, 0, 0]);
        central.extend_from_slice(&crc.to_le_bytes());
        central.extend_from_slice(&size32.to_le_bytes());
        central.extend_from_slice(&size32.to_le_bytes());
        central.extend_from_slice(&(name.len() as u16).to_le_bytes());
        central.extend_from_slice(&(cx.len() as u16).to_le_bytes());
        central.extend_from_slice(&[0; 10]); // comment length, disk, internal and external attributes
        central.extend_from_slice(&off32.to_le_bytes());
        central.extend_from_slice(name.as_bytes());
        central.extend_from_slice(&cx);
        pos = start + len + d.len() as u64;
    }
    let cd_offset = pos;
    f.write_all(&central).unwrap();
    let n = entries.len() as u64;
    let cd_size = central.len() as u64;
    let mut end = Vec::new();
    if zip64_end {
        let rec = cd_offset + cd_size;
        end.extend_from_slice(&0x0606_4b50u32.to_le_bytes());
        end.extend_from_slice(&44u64.to_le_bytes());
        end.extend_from_slice(&[0; 12]); // made by, needed, disk, cd disk
        end.extend_from_slice(&n.to_le_bytes());
        end.extend_from_slice(&n.to_le_bytes());
        end.extend_from_slice(&cd_size.to_le_bytes());
        end.extend_from_slice(&cd_offset.to_le_bytes());
        end.extend_from_slice(&0x0706_4b50u32.to_le_bytes());
        end.extend_from_slice(&0u32.to_le_bytes());
        end.extend_from_slice(&rec.to_le_bytes());
        end.extend_from_slice(&1u32.to_le_bytes());
    }
    end.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
    end.extend_from_slice(&[0; 4]);
    end.extend_from_slice(&(n as u16).to_le_bytes());
    end.extend_from_slice(&(n as u16).to_le_bytes());
    end.extend_from_slice(&(cd_size.min(0xFFFF_FFFF) as u32).to_le_bytes());
    end.extend_from_slice(&(cd_offset.min(0xFFFF_FFFF) as u32).to_le_bytes());
    end.extend_from_slice(&[0, 0]);
    f.write_all(&end).unwrap();
}

#[test]
fn zip_directory_found_for_every_stem_length_with_and_without_zip64() {
    let dir = tempfile::tempdir().unwrap();
    let w: Vec<u8> = (0..6u32)
        .flat_map(|i| (i as f32 * 0.5).to_le_bytes())
        .collect();
    let want = hex(&Sha256::digest(&w));
    let pkl = state_pickle(&[("w", "0", "FloatStorage", 6, &[2, 3])]);
    let mut n = 0;
    for len in 1..=80usize {
        let stem: String = "abcdefghijklmnopqrstuvwxyz0123456789"
            .chars()
            .cycle()
            .take(len)
            .collect();
        for zip64 in [true, false] {
            let path = dir.path().join(format!("{stem}.pt"));
            let entries = vec![
                (format!("{stem}/data.pkl"), Data::Bytes(&pkl)),
                (format!("{stem}/byteorder"), Data::Bytes(b"little")),
                (format!("{stem}/data/0"), Data::Bytes(&w)),
                (format!("{stem}/version"), Data::Bytes(b"3\n")),
            ];
            write_miniz_zip(&path, &entries, zip64);
            let ck = formats::open_file(&path)
                .unwrap_or_else(|e| panic!("stem length {len}, zip64 {zip64}: {e}"));
            let rows = common::tensors_of_checkpoint(&ck);
            assert_eq!(
                rows,
                vec![common::T {
                    name: "w".to_string(),
                    dtype: "F32".to_string(),
                    shape: vec![2, 3],
                    sha256: want.clone(),
                }],
                "stem length {len}, zip64 {zip64}"
            );
            n += 1;
        }
    }
    eprintln!("{n} archives read");
    assert_eq!(n, 160);
}

#[test]
fn zip_beyond_4_gib_is_read_from_a_sparse_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.pt");
    let hole: u64 = (1 << 32) + 100;
    let w: Vec<u8> = (0..6u32)
        .flat_map(|i| (i as f32 + 1.0).to_le_bytes())
        .collect();
    let pkl = state_pickle(&[
        ("hole", "0", "ByteStorage", hole, &[hole]),
        ("w", "1", "FloatStorage", 6, &[6]),
    ]);
    let started = std::time::Instant::now();
    write_miniz_zip(
        &path,
        &[
            ("big/data.pkl".to_string(), Data::Bytes(&pkl)),
            ("big/data/0".to_string(), Data::Hole(hole)),
            ("big/data/1".to_string(), Data::Bytes(&w)),
            ("big/version".to_string(), Data::Bytes(b"3\n")),
        ],
        true,
    );
    let ck = formats::open_file(&path).unwrap();
    assert_eq!(ck.tensors.len(), 2);
    assert_eq!(ck.tensors[0].info.name, "hole");
    assert_eq!(ck.tensors[0].info.nbytes() as u64, hole);
    // The small tensor lies beyond 4 GiB: its offset comes from the zip64 extra of its directory entry.
    assert_eq!(ck.tensors[1].data.bytes().as_ref(), &w[..]);
    assert!(std::fs::metadata(&path).unwrap().len() > hole);
    eprintln!(
        "sparse > 4 GiB archive written and read in {:?}",
        started.elapsed()
    );
}

#[test]
fn torch_saves_under_every_stem_in_the_corpus_read() {
    // stem 21: the first central entry is exactly 76 bytes, the size of torch's zip64 end record + locator.
    for f in ["checkpoint_epoch_0010.pt", "a.pt", "saved_to_buffer.bin"] {
        let ck = formats::open_file(&fixture(f)).unwrap_or_else(|e| panic!("{e}"));
        assert!(ck.tensors.len() >= 7, "{f}");
    }
}

// ------------------------------------------------------------------------------------------------------------
// Item 2: old legacy forms

#[test]
fn torch_03_legacy_rebuild_tensor_v1_and_storage_views_read() {
    let ck = formats::open_file(&fixture("legacy_v1_torch03.pt")).unwrap_or_else(|e| panic!("{e}"));
    let names: Vec<&str> = ck.tensors.iter().map(|t| t.info.name.as_str()).collect();
    assert_eq!(
        names,
        ["fc.weight", "fc.weight_t", "fc.half", "ids", "ids_window"]
    );
    // ids_window is elements 3..6 of ids (a view at offset 2 of the root storage, then offset 1).
    let ids = ck.tensors[3].data.bytes();
    let win = ck.tensors[4].data.bytes();
    assert_eq!(win.as_ref(), &ids.as_ref()[24..48]);
}

// ------------------------------------------------------------------------------------------------------------
// Item 3: the model's state dict chosen in training checkpoints

#[test]
fn training_checkpoints_choose_the_model_state_dict_and_say_so() {
    let ck = formats::open_file(&fixture("tutorial_checkpoint.pt")).unwrap();
    assert_eq!(
        ck.tensors.len(),
        4,
        "{:?}",
        common::tensors_of_checkpoint(&ck)
    );
    assert!(ck.find("loss").is_none());
    let note = ck.notes.join("\n");
    assert!(note.contains("'model_state_dict'"), "{note}");
    for left in ["epoch", "optim_state_dict", "loss"] {
        assert!(note.contains(left), "{note}");
    }
    let ck = formats::open_file(&fixture("lightning.ckpt")).unwrap();
    assert!(ck.notes.join("").contains("'state_dict'"), "{:?}", ck.notes);
    assert!(ck.tensors.iter().all(|t| t.info.name.starts_with("model.")));
    let ck = formats::open_file(&fixture("model_and_ema.pth")).unwrap();
    assert!(ck.notes.join("").contains("'model'"), "{:?}", ck.notes);
    // another dict on request, and a clear error for a key that is not there
    let opts = ReadOptions {
        state_dict_key: Some("ema".into()),
    };
    let ck = formats::open_file_with(&fixture("model_and_ema.pth"), &opts).unwrap();
    assert!(
        ck.notes.join("").contains("'ema' (as asked)"),
        "{:?}",
        ck.notes
    );
    let opts = ReadOptions {
        state_dict_key: Some("nope".into()),
    };
    let e = formats::open_file_with(&fixture("model_and_ema.pth"), &opts)
        .unwrap_err()
        .to_string();
    assert!(e.contains("no entry 'nope'") && e.contains("ema"), "{e}");
    // a conversion says on stderr which key was used
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.safetensors");
    let (code, _, err) = cw(&[
        "--input_path",
        fixture("tutorial_checkpoint.pt").to_str().unwrap(),
        "--output_path",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("model_state_dict"), "{err}");
}

// ------------------------------------------------------------------------------------------------------------
// Item 4: safetensors metadata

#[test]
fn safetensors_metadata_is_carried_shown_and_warned_about() {
    let src = fixture("with_metadata.safetensors");
    let (code, out, err) = cw(&["inspect", src.to_str().unwrap(), "--json"]);
    assert_eq!(code, 0, "{err}");
    let doc: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["metadata"]["test"], "a", "{out}");
    let (_, table, _) = cw(&["inspect", src.to_str().unwrap()]);
    assert!(table.contains("metadata: test = a"), "{table}");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.safetensors");
    let (code, _, err) = cw(&[
        "--input_path",
        src.to_str().unwrap(),
        "--output_path",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let ck = formats::open_file(&out).unwrap();
    assert!(
        ck.metadata.contains(&("test".into(), "a".into())),
        "{:?}",
        ck.metadata
    );
    let ckpt = dir.path().join("out.ckpt");
    let (code, _, err) = cw(&[
        "--input_path",
        src.to_str().unwrap(),
        "--output_path",
        ckpt.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("not carried") && err.contains("test"), "{err}");
}

// ------------------------------------------------------------------------------------------------------------
// Item 5 and the rest: files that are not state dicts say what they are

#[test]
fn files_that_are_not_state_dicts_say_what_they_are() {
    let cases = [
        ("newline.bin", "not a checkpoint"),
        ("torchscript.pt", "TorchScript module"),
        ("whole_module.pt", "nn.Module of class __main__.TinyNet"),
        ("rng_state.pth", "numpy"),
        ("training_args.bin", "TrainingArguments"),
        ("torch_0_1_tar.pt", "tar archive"),
    ];
    let mut failures = Vec::new();
    for (file, want) in cases {
        let p = fixture(file);
        let (code, _, err) = cw(&["inspect", p.to_str().unwrap()]);
        let err = err.trim_end();
        if code != 1 || err.lines().count() != 1 || !err.contains(want) || !err.contains(file) {
            failures.push(format!(
                "{file}: exit {code}, stderr {err:?}, want {want:?}"
            ));
        }
    }
    eprintln!("{} refused files checked", cases.len());
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // The newline file: every format tried, each with its reason.
    let (_, _, err) = cw(&["inspect", fixture("newline.bin").to_str().unwrap()]);
    for f in ["torch zip", "torch legacy", "safetensors", "MindSpore ckpt"] {
        assert!(err.contains(f), "{err}");
    }
}

#[test]
fn state_dict_key_from_the_command_line_and_the_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let src = fixture("model_and_ema.pth");
    let want: Value = serde_json::from_slice(
        &std::fs::read(fixture("model_and_ema.pth.ema.tensors.json")).unwrap(),
    )
    .unwrap();
    let check = |out: &Path| {
        let ck = formats::open_file(out).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            common::tensors_of_checkpoint(&ck),
            sidecar_rows(&want),
            "{}",
            out.display()
        );
    };
    let out = dir.path().join("ema.safetensors");
    let (code, _, err) = cw(&[
        "--input_path",
        src.to_str().unwrap(),
        "--output_path",
        out.to_str().unwrap(),
        "--state-dict-key",
        "ema",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("'ema' (as asked)"), "{err}");
    check(&out);
    // a key that is not there: one line naming the file and the keys there
    let (code, _, err) = cw(&[
        "--input_path",
        src.to_str().unwrap(),
        "--output_path",
        dir.path().join("x.safetensors").to_str().unwrap(),
        "--state-dict-key",
        "nope",
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.trim_end().lines().count() == 1 && err.contains("no entry 'nope'"),
        "{err}"
    );
    // the manifest key
    let manifest = dir.path().join("jobs.toml");
    std::fs::write(
        &manifest,
        format!(
            "[[job]]\ninput = {:?}\noutput = \"batch-ema.safetensors\"\nstate_dict_key = \"ema\"\n",
            src.to_str().unwrap()
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_convert-batch"))
        .args([manifest.to_str().unwrap(), "--no-progress", "--jobs", "1"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    check(&dir.path().join("batch-ema.safetensors"));
}

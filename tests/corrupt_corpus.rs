//! Hostile and corrupt inputs (issue 6): a corpus of broken files derived from valid ones (fixtures, or files built
//! here), each run through the real binary, `inspect PATH` and a conversion. Every one must exit 1 with a one-line
//! cause naming the file, without a panic, within a time bound, with bounded peak memory, and leave nothing at
//! the output path (not even a temporary file).
//!
//! Each builder also has a control case (a sane file from the same builder that must convert), so that a broken
//! builder cannot make the negative cases pass for the wrong reason.

mod common;
mod common_corrupt;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common_corrupt::*;

/// Per run. Generous for a debug build on a loaded machine; a hang is what it catches.
const TIME_LIMIT: Duration = Duration::from_secs(60);
/// Peak RSS of one run, KiB. The inputs are tiny: anything near this means an allocation sized by a header.
const RSS_LIMIT_KIB: i64 = 200 * 1024;

fn cw() -> PathBuf {
    common::bin("convert-weight")
}

/// One broken input.
struct Case {
    label: String,
    path: PathBuf,
    /// stderr must contain one of these (file names).
    names: Vec<String>,
    /// Extra conversion flags (`--model llama`...).
    extra: Vec<String>,
    /// Output file name of the conversion.
    out_name: String,
    /// Also run `inspect` (headers only) and require it to fail.
    inspect: bool,
}

impl Case {
    fn new(label: impl Into<String>, path: PathBuf) -> Case {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let out_name = if name.ends_with(".ckpt") {
            "out.safetensors"
        } else {
            "out.ckpt"
        };
        Case {
            label: label.into(),
            path,
            names: vec![name],
            extra: Vec::new(),
            out_name: out_name.to_string(),
            inspect: true,
        }
    }
    fn names(mut self, n: &[&str]) -> Case {
        self.names = n.iter().map(|s| s.to_string()).collect();
        self
    }
    fn extra(mut self, e: &[&str]) -> Case {
        self.extra = e.iter().map(|s| s.to_string()).collect();
        self
    }
    fn convert_only(mut self) -> Case {
        self.inspect = false;
        self
    }
}

/// Why a run is not a clean failure, if it is not.
fn judge(what: &str, r: &Bounded, names: &[String]) -> Option<String> {
    let err = r.stderr.trim_end();
    let problem = if r.timed_out {
        format!("did not finish within {TIME_LIMIT:?}")
    } else if err.contains("panicked") {
        "panicked".to_string()
    } else if r.code != Some(1) {
        format!("exit {:?} (signal {:?}), expected 1", r.code, r.signal)
    } else if err.lines().count() != 1 {
        format!("stderr has {} lines, expected one", err.lines().count())
    } else if !names.iter().any(|n| err.contains(n.as_str())) {
        format!("stderr does not name any of {names:?}")
    } else if r.max_rss_kib > RSS_LIMIT_KIB {
        format!(
            "peak RSS {} MiB over {} MiB",
            r.max_rss_kib / 1024,
            RSS_LIMIT_KIB / 1024
        )
    } else {
        return None;
    };
    Some(format!(
        "{what}: {problem}\n    stderr: {}",
        err.replace('\n', "\n            ")
    ))
}

/// Run every case (inspect and convert) and fail listing every case that misbehaved.
fn check_cases(cases: &[Case]) {
    let mut failures = Vec::new();
    for c in cases {
        assert!(
            c.path.exists(),
            "{}: case input {} missing",
            c.label,
            c.path.display()
        );
        if c.inspect {
            let r = run_bounded(
                &cw(),
                &args(&[OsString::from("inspect"), c.path.clone().into()]),
                TIME_LIMIT,
            );
            if let Some(f) = judge(&format!("[{}] inspect", c.label), &r, &c.names) {
                failures.push(f);
            }
        }
        let out_dir = tempfile::tempdir().unwrap();
        let out = out_dir.path().join(&c.out_name);
        let mut a: Vec<OsString> = vec![
            "--input_path".into(),
            c.path.clone().into(),
            "--output_path".into(),
            out.clone().into(),
        ];
        a.extend(c.extra.iter().map(OsString::from));
        let r = run_bounded(&cw(), &a, TIME_LIMIT);
        let what = format!("[{}] convert", c.label);
        if let Some(f) = judge(&what, &r, &c.names) {
            failures.push(f);
        }
        let left = entries(out_dir.path());
        if !left.is_empty() {
            failures.push(format!("{what}: left {left:?} in the output directory"));
        }
    }
    eprintln!("{} cases checked", cases.len());
    assert!(
        failures.is_empty(),
        "{} failure(s):\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Run a conversion that must succeed (a control).
fn expect_converts(label: &str, input: &Path, extra: &[&str]) {
    let out_dir = tempfile::tempdir().unwrap();
    let name = if input.to_string_lossy().ends_with(".ckpt") {
        "out.safetensors"
    } else {
        "out.ckpt"
    };
    let out = out_dir.path().join(name);
    let mut a = args(&[
        "--input_path".as_ref(),
        input.as_os_str(),
        "--output_path".as_ref(),
        out.as_os_str(),
    ]);
    a.extend(extra.iter().map(OsString::from));
    let r = run_bounded(&cw(), &a, TIME_LIMIT);
    assert!(
        r.code == Some(0) && out.is_file(),
        "control '{label}' ({}) must convert: exit {:?}: {}",
        input.display(),
        r.code,
        r.stderr
    );
}

/// Cut a file's bytes at each of `points` (clamped, deduplicated) into `dir/<stem>-cut<N>.<ext>`.
fn truncations(dir: &Path, label: &str, bytes: &[u8], points: &[usize], ext: &str) -> Vec<Case> {
    let mut pts: Vec<usize> = points
        .iter()
        .map(|&p| p.min(bytes.len().saturating_sub(1)))
        .collect();
    pts.sort();
    pts.dedup();
    pts.into_iter()
        .map(|p| {
            let path = write(&dir.join(format!("{label}-cut{p}.{ext}")), &bytes[..p]);
            Case::new(format!("{label} cut at {p}"), path)
        })
        .collect()
}

/// A vendored fixture file; the test fails naming it when it is missing.
fn fixture(rel: &str) -> PathBuf {
    common::fixture(rel)
}

// ------------------------------------------------------------------------------------------------------------
// safetensors
// ------------------------------------------------------------------------------------------------------------

fn st_entry(name: &str, dtype: &str, shape: &str, begin: u64, end: u64) -> String {
    format!(r#""{name}":{{"dtype":"{dtype}","shape":{shape},"data_offsets":[{begin},{end}]}}"#)
}

#[test]
fn safetensors_corrupt() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let mut cases = Vec::new();
    let mut add = |label: &str, bytes: Vec<u8>| {
        let file = format!("{}.safetensors", label.replace(' ', "_"));
        cases.push(Case::new(label, write(&d.join(file), &bytes)));
    };
    let control = safetensors_bytes(
        &format!("{{{}}}", st_entry("a", "F32", "[2]", 0, 8)),
        &[0u8; 8],
    );
    expect_converts(
        "safetensors builder",
        &write(&d.join("control.safetensors"), &control),
        &[],
    );

    let two = |a: String, b: String, data: usize| {
        safetensors_bytes(&format!("{{{a},{b}}}"), &vec![0u8; data])
    };
    let one = |a: String, data: usize| safetensors_bytes(&format!("{{{a}}}"), &vec![0u8; data]);
    add(
        "huge element count",
        one(st_entry("a", "F32", "[1152921504606846976]", 0, 4), 4),
    );
    add(
        "huge shape consistent offsets",
        one(
            st_entry("a", "F32", "[1152921504606846976]", 0, 4611686018427387904),
            4,
        ),
    );
    add(
        "overflowing shape",
        one(
            st_entry("a", "F32", "[4294967296,4294967296,4294967296]", 0, 4),
            4,
        ),
    );
    add("negative dim", one(st_entry("a", "F32", "[-1]", 0, 4), 4));
    add(
        "offsets past the end",
        one(st_entry("a", "F32", "[4]", 0, 16), 8),
    );
    add(
        "end before begin",
        one(st_entry("a", "F32", "[0]", 8, 0), 8),
    );
    add(
        "overlapping offsets",
        two(
            st_entry("a", "F32", "[2]", 0, 8),
            st_entry("b", "F32", "[2]", 4, 12),
            12,
        ),
    );
    add(
        "hole between tensors",
        two(
            st_entry("a", "F32", "[1]", 0, 4),
            st_entry("b", "F32", "[1]", 8, 12),
            12,
        ),
    );
    add(
        "duplicate names",
        two(
            st_entry("a", "F32", "[1]", 0, 4),
            st_entry("a", "F32", "[1]", 4, 8),
            8,
        ),
    );
    add("unknown dtype", one(st_entry("a", "Q7", "[1]", 0, 4), 4));
    add("trailing data", one(st_entry("a", "F32", "[1]", 0, 4), 12));
    add(
        "bad metadata",
        safetensors_bytes(r#"{"__metadata__":{"format":1}}"#, &[]),
    );
    add(
        "header not an object",
        safetensors_bytes(r#"{"a":[1,2]}"#, &[]),
    );
    add("header not json", safetensors_bytes("{not json", &[]));
    add("header length huge", {
        let mut v = control.clone();
        v[..8].copy_from_slice(&(1u64 << 60).to_le_bytes());
        v
    });
    add("header length past end", {
        let mut v = control.clone();
        let past = v.len() as u64 + 100;
        v[..8].copy_from_slice(&past.to_le_bytes());
        v
    });
    add("header not utf8", {
        let h = format!("{{{}}}", st_entry("a\u{e9}", "F32", "[1]", 0, 4));
        let mut v = safetensors_bytes(&h, &[0u8; 4]);
        let p = v.iter().position(|&b| b == 0xC3).unwrap();
        v[p] = 0xFF;
        v
    });

    {
        let f = fixture("llama/fp32/safetensors/model.safetensors");
        let bytes = std::fs::read(&f).unwrap();
        let h = safetensors_header_len(&bytes);
        cases.extend(truncations(
            d,
            "llama-st",
            &bytes,
            &[
                0,
                3,
                8,
                8 + h / 2,
                8 + h,
                8 + h + 1000,
                bytes.len() / 2,
                bytes.len() - 1,
            ],
            "safetensors",
        ));
        // Flip structural header bytes: each makes the JSON invalid or the layout inconsistent.
        let header = &bytes[8..8 + h];
        let structural: Vec<usize> = header
            .iter()
            .enumerate()
            .filter(|(_, &b)| matches!(b, b'"' | b':' | b',' | b'[' | b']' | b'}'))
            .map(|(i, _)| 8 + i)
            .collect();
        for k in [
            1,
            2,
            5,
            structural.len() / 3,
            structural.len() / 2,
            structural.len() - 2,
        ] {
            let at = structural[k];
            let mut v = bytes.clone();
            v[at] ^= 0x01;
            let path = write(&d.join(format!("llama-st-flip{at}.safetensors")), &v);
            cases.push(Case::new(format!("llama-st flip at {at}"), path));
        }
    }
    check_cases(&cases);
}

// ------------------------------------------------------------------------------------------------------------
// MindSpore ckpt
// ------------------------------------------------------------------------------------------------------------

#[test]
fn ckpt_corrupt() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let mut cases = Vec::new();
    let mut add = |label: &str, bytes: Vec<u8>| {
        let file = format!("{}.ckpt", label.replace(' ', "_"));
        cases.push(Case::new(label, write(&d.join(file), &bytes)));
    };
    let rec =
        |tag: &str, dims: &[u64], ty: &str, n: usize| ckpt_record(tag, dims, ty, &vec![1u8; n]);
    let cat = |parts: &[Vec<u8>]| parts.concat();
    let control = cat(&[
        rec("a", &[2], "Float32", 8),
        rec("b", &[2, 2], "Float16", 8),
    ]);
    expect_converts(
        "ckpt builder",
        &write(&d.join("control.ckpt"), &control),
        &[],
    );
    let mut with_crc = control.clone();
    with_crc.extend(ckpt_trailer(crc32fast::hash(&control)));
    expect_converts(
        "ckpt builder with crc",
        &write(&d.join("control-crc.ckpt"), &with_crc),
        &[],
    );

    add("huge element count", rec("a", &[1 << 60], "Float32", 4));
    add(
        "overflowing dims",
        rec("a", &[1 << 32, 1 << 32, 1 << 32], "Float32", 4),
    );
    add("payload shorter than dims", rec("a", &[4], "Float32", 8));
    add("unknown type", rec("a", &[1], "Float99", 4));
    add("unsupported int4", rec("a", &[2], "Int4", 1));
    add(
        "non-adjacent duplicate tags",
        cat(&[
            rec("a", &[2], "Float32", 8),
            rec("b", &[2], "Float32", 8),
            rec("a", &[2], "Float32", 8),
        ]),
    );
    add(
        "slices that do not add up",
        cat(&[rec("a", &[4], "Float32", 8), rec("a", &[4], "Float32", 4)]),
    );
    add(
        "slices with different dims",
        cat(&[
            rec("a", &[4], "Float32", 8),
            rec("a", &[2, 2], "Float32", 8),
        ]),
    );
    add("wrong crc", {
        let mut v = control.clone();
        v.extend(ckpt_trailer(crc32fast::hash(&control) ^ 0x5A5A));
        v
    });
    add("data changed under crc", {
        let mut v = with_crc.clone();
        let last_data = control.len() - 1;
        v[last_data] ^= 0xFF;
        v
    });
    add("record length huge", {
        let mut v = vec![0x0A];
        v.extend(varint(1 << 60));
        v.extend(&control[2..]);
        v
    });
    add("record length past end", {
        let mut v = vec![0x0A];
        v.extend(varint(control.len() as u64 + 10));
        v.extend(&control[2..]);
        v
    });
    add("payload length huge", {
        // A record whose tensor_content length claims 2^60 bytes.
        let mut t = vec![0x08];
        t.extend(varint(4));
        t.extend([0x12, 7]);
        t.extend(b"Float32");
        t.push(0x1A);
        t.extend(varint(1 << 60));
        t.extend([0u8; 16]);
        let mut v = vec![0x0A, 1, b'a', 0x12];
        v.extend(varint(t.len() as u64));
        v.extend(t);
        let mut r = vec![0x0A];
        r.extend(varint(v.len() as u64));
        r.extend(v);
        r
    });
    add("varint overflow", {
        let mut v = vec![0x0A];
        v.extend([0xFF; 11]);
        v
    });
    add("first byte flipped", {
        let mut v = control.clone();
        v[0] ^= 0x01;
        v
    });
    add(
        "garbage after records",
        cat(&[control.clone(), vec![0x42; 5]]),
    );

    for (rel, label) in [
        ("llama/fp32/ms/expected.ckpt", "llama-ckpt"),
        ("edge/ms_sliced_bytes.ckpt", "sliced-ckpt"),
    ] {
        let f = fixture(rel);
        let bytes = std::fs::read(&f).unwrap();
        let n = bytes.len();
        cases.extend(truncations(
            d,
            label,
            &bytes,
            &[1, 2, 5, 40, n / 3, n / 2, n - 1],
            "ckpt",
        ));
    }
    check_cases(&cases);
}

// ------------------------------------------------------------------------------------------------------------
// torch zip and the pickle machine
// ------------------------------------------------------------------------------------------------------------

/// A sane one-tensor torch zip from the builders, and its storage.
fn torch_control() -> Vec<u8> {
    let p = Pickle::new()
        .state_dict_start()
        .tensor_item("w", "FloatStorage", "0", 4, 0, &[2, 2], &[2, 1])
        .state_dict_end();
    torch_zip(&p.0, &[("0", vec![0u8; 16])])
}

/// A tensor item with the given storage and view; a zip holding a 16-byte storage.
fn torch_with(
    numel: i64,
    offset: i64,
    shape: &[i64],
    stride: &[i64],
    storage_bytes: usize,
) -> Vec<u8> {
    let p = Pickle::new()
        .state_dict_start()
        .tensor_item("w", "FloatStorage", "0", numel, offset, shape, stride)
        .state_dict_end();
    torch_zip(&p.0, &[("0", vec![0u8; storage_bytes])])
}

#[test]
fn torch_zip_corrupt() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let mut cases = Vec::new();
    let mut add = |label: &str, bytes: Vec<u8>| {
        let file = format!("{}.bin", label.replace(' ', "_"));
        cases.push(Case::new(label, write(&d.join(file), &bytes)));
    };
    expect_converts(
        "torch builder",
        &write(&d.join("control.bin"), &torch_control()),
        &[],
    );

    add("huge element count", torch_with(4, 0, &[1 << 60], &[1], 16));
    add("huge storage numel", torch_with(1 << 60, 0, &[4], &[1], 16));
    add(
        "storage shorter than numel",
        torch_with(400, 0, &[4], &[1], 16),
    );
    add("view past the storage", torch_with(4, 2, &[4], &[1], 16));
    add(
        "stride past the storage",
        torch_with(4, 0, &[2, 2], &[1 << 40, 1], 16),
    );
    add("negative offset", torch_with(4, -1, &[4], &[1], 16));
    add("negative dim", torch_with(4, 0, &[-4], &[1], 16));
    add("rank mismatch", torch_with(4, 0, &[2, 2], &[1], 16));
    add(
        "overflowing shape",
        torch_with(4, 0, &[1 << 32, 1 << 32, 1 << 32], &[0, 0, 0], 16),
    );
    add("missing storage entry", {
        let p = Pickle::new()
            .state_dict_start()
            .tensor_item("w", "FloatStorage", "7", 4, 0, &[4], &[1])
            .state_dict_end();
        torch_zip(&p.0, &[("0", vec![0u8; 16])])
    });
    add("unknown storage type", {
        let p = Pickle::new()
            .state_dict_start()
            .tensor_item("w", "EvilStorage", "0", 4, 0, &[4], &[1])
            .state_dict_end();
        torch_zip(&p.0, &[("0", vec![0u8; 16])])
    });
    // A pickle dict with a repeated key is not an error: Python (and torch.load) keep the last value, and so
    // does our pickle machine. Duplicate names are errors in safetensors and ckpt (tested there).
    add("not a dict", torch_zip(&Pickle::new().int(7).stop().0, &[]));
    add("no data.pkl", {
        use std::io::Write;
        let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let o = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        w.start_file("archive/version", o).unwrap();
        w.write_all(b"3\n").unwrap();
        w.finish().unwrap().into_inner()
    });
    add("pickle cut short", {
        let mut p = Pickle::new()
            .state_dict_start()
            .tensor_item("w", "FloatStorage", "0", 4, 0, &[4], &[1])
            .0;
        p.truncate(p.len() - 3);
        torch_zip(&p, &[("0", vec![0u8; 16])])
    });
    add("compressed entries", {
        let mut z = torch_control();
        zip_set_method(&mut z, 8);
        z
    });
    {
        let f = fixture("llama/fp32/torch/pytorch_model.bin");
        let bytes = std::fs::read(&f).unwrap();
        let n = bytes.len();
        cases.extend(truncations(
            d,
            "llama-torch",
            &bytes,
            &[2, 10, 100, n / 2, n - 22, n - 1],
            "bin",
        ));
        let mut z = bytes.clone();
        zip_set_method(&mut z, 8);
        let path = write(&d.join("llama-torch-deflate.bin"), &z);
        cases.push(Case::new("llama-torch entries marked compressed", path));
    }
    check_cases(&cases);
}

/// A zip entry whose stored CRC-32 is non-zero and wrong. torch may write all-zero CRCs (spec: a reader must not
/// require valid CRCs), but a non-zero CRC that does not match the pickle is corruption.
#[test]
fn torch_zip_wrong_crc() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let mut z = torch_control();
    assert!(zip_set_crc(&mut z, "data.pkl", 0x1234_5678));
    let mut zero = torch_control();
    assert!(zip_set_crc(&mut zero, "data.pkl", 0));
    expect_converts(
        "zero CRC is accepted",
        &write(&d.join("zero-crc.bin"), &zero),
        &[],
    );
    check_cases(&[Case::new(
        "wrong crc of data.pkl",
        write(&d.join("wrong-crc.bin"), &z),
    )]);
}

/// Pickles that name dangerous globals, nest absurdly, or claim huge sizes, in a torch zip and in a legacy file.
#[test]
fn torch_pickle_hostile() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let marker = d.join("PWNED");
    let cmd = format!("touch {}", marker.display());
    let call = |p: Pickle| p.mark().str(&cmd).tuple().reduce().stop().0;
    let deep = |n: usize| {
        let mut v = vec![0x80, 0x02];
        v.extend(std::iter::repeat_n(b'(', n));
        v.extend(std::iter::repeat_n(b'l', n));
        v.push(b'.');
        v
    };
    let pickles: Vec<(&str, Vec<u8>)> = vec![
        ("os system", call(Pickle::new().global("os", "system"))),
        (
            "posix system",
            call(Pickle::new().global("posix", "system")),
        ),
        (
            "builtins eval",
            call(Pickle::new().global("builtins", "eval")),
        ),
        (
            "builtins exec",
            call(Pickle::new().global("builtins", "exec")),
        ),
        (
            "subprocess Popen",
            call(Pickle::new().global("subprocess", "Popen")),
        ),
        (
            "stack_global os system",
            call(Pickle::new().stack_global("os", "system")),
        ),
        (
            "builtins getattr",
            call(Pickle::new().global("builtins", "getattr")),
        ),
        (
            "os system inside a state dict",
            Pickle::new()
                .state_dict_start()
                .str("w")
                .global("os", "system")
                .mark()
                .str(&cmd)
                .tuple()
                .reduce()
                .state_dict_end()
                .0,
        ),
        ("deeply nested lists", deep(1_000_000)),
        ("deeply nested dicts", {
            let mut v = vec![0x80, 0x02];
            for _ in 0..200_000 {
                v.extend(b"}X\x01\x00\x00\x00k");
            }
            v.extend(std::iter::repeat_n(b's', 200_000));
            v.push(b'.');
            v
        }),
        (
            "memo index huge",
            Pickle::new().op(b"}r\xf0\xff\xff\xff").op(b"h\x00.").0,
        ),
        ("memo get missing", Pickle::new().op(b"h\x05.").0),
        (
            "string length huge",
            Pickle::new().op(b"X\xff\xff\xff\x7fabc").0,
        ),
        (
            "bytes length huge",
            Pickle::new().op(b"B\xff\xff\xff\x7fabc").0,
        ),
        (
            "long4 length huge",
            Pickle::new().op(b"\x8b\xff\xff\xff\x7f\x01").0,
        ),
        ("unknown opcode", Pickle::new().op(b"\xfe.").0),
        ("stack underflow", Pickle::new().op(b"t.").0),
        ("no stop", Pickle::new().op(b"}").0),
        ("empty pickle", Vec::new()),
    ];
    let mut cases = Vec::new();
    for (label, p) in &pickles {
        let stem = label.replace(' ', "_");
        let z = write(&d.join(format!("zip-{stem}.bin")), &torch_zip(p, &[]));
        cases.push(Case::new(format!("zip: {label}"), z));
        let mut legacy = legacy_preamble();
        legacy.extend_from_slice(p);
        let l = write(&d.join(format!("legacy-{stem}.bin")), &legacy);
        cases.push(Case::new(format!("legacy: {label}"), l));
    }
    check_cases(&cases);
    assert!(!marker.exists(), "a hostile pickle ran a command");
}

#[test]
fn torch_legacy_corrupt() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let f = fixture("edge/torch_legacy.bin");
    expect_converts("legacy fixture", &f, &[]);
    let bytes = std::fs::read(&f).unwrap();
    let n = bytes.len();
    let mut cases = truncations(
        d,
        "legacy",
        &bytes,
        &[5, 14, 15, 40, 200, n / 2, n - 8, n - 1],
        "bin",
    );
    // A legacy file whose storage keys list names more storages than follow.
    let mut extra = bytes.clone();
    extra.truncate(n - 1);
    let p = write(&d.join("legacy-short-by-one.bin"), &extra);
    cases.push(Case::new("legacy short by one byte", p));
    check_cases(&cases);
}

// ------------------------------------------------------------------------------------------------------------
// Sharded sets, config contradictions, overwriting inputs
// ------------------------------------------------------------------------------------------------------------

/// A safetensors shard set made by the tool from the llama fixture: (dir, index path, shard paths).
fn make_shards(dir: &Path) -> (PathBuf, Vec<PathBuf>) {
    let src = fixture("llama/fp32/safetensors/model.safetensors");
    std::fs::create_dir_all(dir).unwrap();
    let out = dir.join("model.safetensors");
    common::cw_ok(&[
        "--input_path",
        common::s(&src),
        "--output_path",
        common::s(&out),
        "--max-shard-size",
        "40KB",
    ]);
    let mut shards: Vec<PathBuf> = entries(dir)
        .into_iter()
        .filter(|n| n.contains("-of-") && n.ends_with(".safetensors"))
        .map(|n| dir.join(n))
        .collect();
    shards.sort();
    assert!(
        shards.len() >= 2,
        "expected several shards in {}: {:?}",
        dir.display(),
        entries(dir)
    );
    (dir.join("model.safetensors.index.json"), shards)
}

#[test]
fn sharded_index_corrupt() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let (index, shards) = make_shards(&d.join("good"));
    let mut cases = Vec::new();
    let fname = |p: &Path| p.file_name().unwrap().to_string_lossy().into_owned();

    // A missing shard: named by the index, absent on disk.
    let missing = d.join("missing");
    copy_dir(&d.join("good"), &missing);
    std::fs::remove_file(missing.join(fname(&shards[1]))).unwrap();
    let miss_name = fname(&shards[1]);
    cases.push(
        Case::new("index naming a missing shard (dir)", missing.clone()).names(&[&miss_name]),
    );
    cases.push(
        Case::new(
            "index naming a missing shard (index)",
            missing.join(fname(&index)),
        )
        .names(&[&miss_name]),
    );
    cases.push(
        // `inspect SHARD` lists that one file by design; a conversion loads the whole set through the index.
        Case::new(
            "index naming a missing shard (other shard)",
            missing.join(fname(&shards[0])),
        )
        .names(&[&miss_name])
        .convert_only(),
    );

    let text = std::fs::read_to_string(&index).unwrap();
    let variants: Vec<(&str, String)> = vec![
        ("index not json", "{\"weight_map\": ".to_string()),
        ("index without weight_map", "{\"metadata\": {}}".to_string()),
        (
            "index naming an absolute path",
            text.replacen(&fname(&shards[0]), "/etc/passwd", 1),
        ),
        (
            "index escaping its directory",
            text.replacen(&fname(&shards[0]), "../good/x.safetensors", 1),
        ),
        (
            "index naming a tensor not in its shard",
            text.replacen(
                "\"weight_map\": {",
                "\"weight_map\": {\"ghost\": \"model-00001-of-00002.safetensors\",",
                1,
            ),
        ),
    ];
    for (label, body) in variants {
        let dir = d.join(label.replace(' ', "_"));
        copy_dir(&d.join("good"), &dir);
        std::fs::write(dir.join(fname(&index)), body).unwrap();
        cases.push(Case::new(label, dir.join(fname(&index))).names(&[
            &fname(&index),
            "passwd",
            "x.safetensors",
        ]));
    }
    // A shard truncated inside a set.
    let cut = d.join("cut");
    copy_dir(&d.join("good"), &cut);
    let s0 = cut.join(fname(&shards[0]));
    let b = std::fs::read(&s0).unwrap();
    std::fs::write(&s0, &b[..b.len() / 2]).unwrap();
    cases.push(Case::new("truncated shard", cut).names(&[&fname(&shards[0])]));

    {
        let f = fixture("llama/fp32/torch_sharded/pytorch_model.bin.index.json");
        let dir = d.join("torch_sharded");
        copy_dir(f.parent().unwrap(), &dir);
        std::fs::remove_file(dir.join("pytorch_model-00002-of-00002.bin")).unwrap();
        cases.push(
            Case::new("torch index naming a missing shard", dir)
                .names(&["pytorch_model-00002-of-00002.bin"]),
        );
    }
    check_cases(&cases);
}

/// A config.json that contradicts the weights, run with `--model llama`.
#[test]
fn config_contradicts_weights() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let mut cases = Vec::new();
    for (sub, weights) in [
        ("safetensors", "model.safetensors"),
        ("torch", "pytorch_model.bin"),
    ] {
        let src = fixture(&format!("llama/fp32/{sub}/{weights}"));
        let good = d.join(format!("{sub}-good"));
        copy_dir(src.parent().unwrap(), &good);
        expect_converts(
            &format!("llama {sub} with its config"),
            &good.join(weights),
            &["--model", "llama"],
        );
        for (key, value) in [
            ("hidden_size", 64),
            ("num_hidden_layers", 3),
            ("num_attention_heads", 5),
        ] {
            let dir = d.join(format!("{sub}-{key}"));
            copy_dir(src.parent().unwrap(), &dir);
            let cfg_path = dir.join("config.json");
            let mut cfg: serde_json::Value = common::read_json(&cfg_path);
            cfg[key] = value.into();
            std::fs::write(&cfg_path, serde_json::to_string_pretty(&cfg).unwrap()).unwrap();
            cases.push(
                Case::new(
                    format!("llama {sub}: config {key}={value}"),
                    dir.join(weights),
                )
                .names(&["config.json", weights])
                .extra(&["--model", "llama"])
                .convert_only(),
            );
        }
    }
    check_cases(&cases);
}

/// sha256 of every file in a directory, by name.
fn dir_hashes(dir: &Path) -> Vec<(String, String)> {
    entries(dir)
        .into_iter()
        .filter(|n| dir.join(n).is_file())
        .map(|n| {
            let h = convert_weight::convert::file_sha256(&dir.join(&n)).unwrap();
            (n, h)
        })
        .collect()
}

#[test]
fn refuses_to_overwrite_inputs() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let src = fixture("llama/fp32/safetensors/model.safetensors");
    let single = d.join("single");
    copy_dir(src.parent().unwrap(), &single);
    let input = single.join("model.safetensors");
    let (index, shards) = make_shards(&d.join("sharded"));
    let sharded = d.join("sharded");

    let runs: Vec<(&str, PathBuf, PathBuf, Vec<&str>)> = vec![
        ("output is the input", input.clone(), input.clone(), vec![]),
        (
            "output is the input spelled with ..",
            input.clone(),
            single.join("../single/./model.safetensors"),
            vec![],
        ),
        (
            "output is the input, forward model",
            input.clone(),
            input.clone(),
            vec!["--model", "llama"],
        ),
        (
            "sharded output into the input's directory",
            input.clone(),
            single.clone(),
            vec![],
        ),
        (
            "sharded output dir with trailing slash",
            input.clone(),
            PathBuf::from(format!("{}/", single.display())),
            vec![],
        ),
        (
            "max-shard-size into the input's directory",
            input.clone(),
            single.join("other.safetensors"),
            vec!["--max-shard-size", "40KB"],
        ),
        (
            "shard set into its own directory",
            sharded.clone(),
            sharded.clone(),
            vec![],
        ),
        (
            "index into its own directory",
            index.clone(),
            sharded.join("model.safetensors"),
            vec!["--max-shard-size", "40KB"],
        ),
        (
            "output is one of the shards",
            sharded.clone(),
            shards[0].clone(),
            vec![],
        ),
    ];
    let before_single = dir_hashes(&single);
    let before_sharded = dir_hashes(&sharded);
    let mut failures = Vec::new();
    for (label, inp, out, extra) in runs {
        let mut a = args(&[
            "--input_path".as_ref(),
            inp.as_os_str(),
            "--output_path".as_ref(),
            out.as_os_str(),
        ]);
        a.extend(extra.iter().map(OsString::from));
        let r = run_bounded(&cw(), &a, TIME_LIMIT);
        let names = vec![
            "model.safetensors".to_string(),
            "single".to_string(),
            "sharded".to_string(),
        ];
        if let Some(f) = judge(&format!("[{label}]"), &r, &names) {
            failures.push(f);
        }
        if dir_hashes(&single) != before_single || dir_hashes(&sharded) != before_sharded {
            failures.push(format!("[{label}]: an input directory changed"));
            break;
        }
    }
    assert!(
        failures.is_empty(),
        "{} failure(s):\n{}",
        failures.len(),
        failures.join("\n")
    );
}

// ------------------------------------------------------------------------------------------------------------
// Fuzz regressions and batches
// ------------------------------------------------------------------------------------------------------------

/// How many inputs `tests/regress/` holds (see its README.md); a lost or an unlisted file fails the test.
const REGRESS_INPUTS: usize = 21;

/// Every input under `tests/regress/` (minimised hostile inputs on paths that were bugs or are easy to get wrong,
/// written by tools/make-regress.py; crashes found by fuzzing go there too) must fail cleanly.
#[test]
fn fuzz_regressions() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/regress");
    assert!(
        root.is_dir(),
        "missing {}: restore it with `git checkout -- tests/regress`",
        root.display()
    );
    let mut cases = Vec::new();
    let mut stack = vec![root];
    while let Some(dir) = stack.pop() {
        let rd = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        for e in rd {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_none_or(|e| e != "md") {
                cases.push(Case::new(format!("regress {}", p.display()), p));
            }
        }
    }
    cases.sort_by(|a, b| a.path.cmp(&b.path));
    println!("checked {} regression inputs", cases.len());
    assert_eq!(
        cases.len(),
        REGRESS_INPUTS,
        "inputs under tests/regress/ (update REGRESS_INPUTS and tests/regress/README.md together)"
    );
    check_cases(&cases);
}

/// Find the JSON object describing job `name` anywhere in a report.
fn find_job<'a>(v: &'a serde_json::Value, name: &str) -> Option<&'a serde_json::Value> {
    match v {
        serde_json::Value::Object(m) => {
            if m.get("name").and_then(|n| n.as_str()) == Some(name) {
                return Some(v);
            }
            m.values().find_map(|x| find_job(x, name))
        }
        serde_json::Value::Array(a) => a.iter().find_map(|x| find_job(x, name)),
        _ => None,
    }
}

/// A manifest with a good job and a corrupt one: only the corrupt one fails.
#[test]
fn batch_isolates_a_corrupt_job() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let src = fixture("llama/fp32/safetensors/model.safetensors");
    copy_dir(src.parent().unwrap(), &d.join("good"));
    let bytes = std::fs::read(&src).unwrap();
    write(&d.join("bad/model.safetensors"), &bytes[..bytes.len() / 2]);
    let manifest = d.join("jobs.toml");
    std::fs::write(
        &manifest,
        r#"
[[job]]
name = "good"
input = "good/model.safetensors"
output = "out/good.ckpt"

[[job]]
name = "bad"
input = "bad/model.safetensors"
output = "out/bad.ckpt"
"#,
    )
    .unwrap();
    let report = d.join("report.json");
    let r = run_bounded(
        &common::bin("convert-batch"),
        &args(&[
            manifest.as_os_str(),
            "--report".as_ref(),
            report.as_os_str(),
        ]),
        TIME_LIMIT,
    );
    assert!(
        !r.timed_out && !r.stderr.contains("panicked"),
        "convert-batch: {r:?}"
    );
    assert_eq!(
        r.code,
        Some(1),
        "a failed job makes the batch exit 1: {}",
        r.stderr
    );
    assert!(
        d.join("out/good.ckpt").is_file(),
        "the good job's output is missing: {}",
        r.stderr
    );
    assert!(
        !d.join("out/bad.ckpt").exists(),
        "the corrupt job left an output"
    );
    assert!(
        temp_leftovers(&d.join("out")).is_empty(),
        "temporary files left in out/"
    );
    let rep: serde_json::Value = common::read_json(&report);
    let good = find_job(&rep, "good").expect("job 'good' in the report");
    let bad = find_job(&rep, "bad").expect("job 'bad' in the report");
    let status = |j: &serde_json::Value| j["status"].as_str().unwrap_or("").to_string();
    assert!(
        matches!(
            status(good).as_str(),
            "ok" | "done" | "succeeded" | "success"
        ),
        "good: {good}"
    );
    assert!(status(bad).contains("fail"), "bad: {bad}");
    assert!(
        bad.to_string().contains("model.safetensors"),
        "the failure names the file: {bad}"
    );
}

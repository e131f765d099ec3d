//! Hand-made torch files: every pickle feature the readers claim, and hostile inputs.

use std::io::Write;
use std::path::{Path, PathBuf};

use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipWriter};

use super::pickle::Emitter;
use super::{read_legacy, read_zip, LEGACY_MAGIC_PREFIX};
use crate::tensor::{Checkpoint, DType};

fn zip_file(dir: &Path, name: &str, entries: &[(&str, &[u8])]) -> PathBuf {
    let p = dir.join(name);
    let mut z = ZipWriter::new(std::fs::File::create(&p).unwrap());
    for (n, d) in entries {
        let o = SimpleFileOptions::default().compression_method(CompressionMethod::Stored);
        z.start_file(*n, o).unwrap();
        z.write_all(d).unwrap();
    }
    z.finish().unwrap();
    p
}

/// A one-pickle torch zip with the given storages (`archive/data/<key>`).
fn torch_zip(dir: &Path, pkl: &[u8], storages: &[(&str, Vec<u8>)]) -> PathBuf {
    let mut entries: Vec<(String, &[u8])> = vec![("archive/data.pkl".into(), pkl)];
    for (k, d) in storages {
        entries.push((format!("archive/data/{k}"), d));
    }
    entries.push(("archive/version".into(), b"3\n"));
    let e: Vec<(&str, &[u8])> = entries.iter().map(|(n, d)| (n.as_str(), *d)).collect();
    zip_file(dir, "t.pt", &e)
}

/// `('storage', torch.<cls>, key, 'cpu', numel)` BINPERSID.
fn persid(e: &mut Emitter, module: &str, cls: &str, key: &str, numel: u64) {
    e.mark();
    e.unicode("storage");
    e.global(module, cls);
    e.unicode(key);
    e.unicode("cpu");
    e.int(numel);
    e.op(b't');
    e.op(b'Q');
}

/// `_rebuild_tensor_v2(persid, offset, size, stride, False, OrderedDict())`.
fn v2(
    e: &mut Emitter,
    cls: &str,
    key: &str,
    numel: u64,
    offset: u64,
    size: &[u64],
    stride: &[u64],
) {
    e.global("torch._utils", "_rebuild_tensor_v2");
    e.mark();
    persid(e, "torch", cls, key, numel);
    e.int(offset);
    e.int_tuple(size);
    e.int_tuple(stride);
    e.op(0x89);
    e.global("collections", "OrderedDict");
    e.op(b')');
    e.op(b'R');
    e.op(b't');
    e.op(b'R');
}

/// Emits one value onto a pickle.
type Part<'a> = &'a dyn Fn(&mut Emitter);
type BoxedPart = Box<dyn Fn(&mut Emitter)>;

fn dict_of(items: &[(&str, Part<'_>)]) -> Vec<u8> {
    let mut e = Emitter::default();
    e.proto2();
    e.op(b'}');
    e.mark();
    for (k, f) in items {
        e.unicode(k);
        f(&mut e);
    }
    e.op(b'u');
    e.op(b'.');
    e.buf
}

fn f32s(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn err_of(r: crate::formats::Result<Checkpoint>) -> String {
    match r {
        Ok(c) => panic!("expected an error, read {} tensors", c.tensors.len()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn dangerous_globals_in_a_zip_are_named() {
    let dir = tempfile::tempdir().unwrap();
    for (m, n) in [
        ("os", "system"),
        ("builtins", "eval"),
        ("subprocess", "Popen"),
        ("posix", "system"),
    ] {
        let mut e = Emitter::default();
        e.proto2();
        e.global(m, n);
        e.unicode("touch /tmp/pwned");
        e.op(0x85);
        e.op(b'R');
        e.op(b'.');
        let p = torch_zip(dir.path(), &e.buf, &[]);
        let msg = err_of(read_zip(&p));
        assert!(
            msg.contains(&format!("'{m}.{n}'")) && msg.contains("t.pt"),
            "{msg}"
        );
    }
}

#[test]
fn views_params_subclasses_metadata_and_protocol4() {
    let dir = tempfile::tempdir().unwrap();
    let st: Vec<f32> = (0..12).map(|x| x as f32).collect();
    let mut e = Emitter::default();
    e.proto2();
    e.op(0x95); // FRAME
    e.buf.extend_from_slice(&0u64.to_le_bytes());
    e.global("collections", "OrderedDict");
    e.op(b')');
    e.op(b'R');
    e.mark();
    // a: plain 3x4 memoized as 0 (MEMOIZE)
    e.op(0x8c); // SHORT_BINUNICODE
    e.buf.extend_from_slice(&[1, b'a']);
    v2(&mut e, "FloatStorage", "0", 12, 0, &[3, 4], &[4, 1]);
    e.op(0x94);
    // t: transpose through _rebuild_parameter
    e.unicode("t");
    e.global("torch._utils", "_rebuild_parameter");
    v2(&mut e, "FloatStorage", "0", 12, 0, &[4, 3], &[1, 4]);
    e.op(0x88);
    e.global("collections", "OrderedDict");
    e.op(b')');
    e.op(b'R');
    e.op(0x87);
    e.op(b'R');
    // s: slice via _rebuild_from_type_v2(v2, Tensor, args, {}) and STACK_GLOBAL
    e.unicode("s");
    e.global("torch._tensor", "_rebuild_from_type_v2");
    e.mark();
    e.op(0x8c);
    e.buf.extend_from_slice(&[12]);
    e.buf.extend_from_slice(b"torch._utils");
    e.op(0x8c);
    e.buf.extend_from_slice(&[18]);
    e.buf.extend_from_slice(b"_rebuild_tensor_v2");
    e.op(0x93);
    e.global("torch", "Tensor");
    e.mark();
    persid(&mut e, "torch", "FloatStorage", "0", 12);
    e.int(5);
    e.int_tuple(&[2]);
    e.int_tuple(&[2]);
    e.op(0x89);
    e.op(b'N');
    e.op(b't');
    e.op(b'}');
    e.op(b't');
    e.op(b'R');
    // b: the same tensor object again (tied)
    e.unicode("b");
    e.op(b'h');
    e.op(0);
    // scalars and others
    e.unicode("step");
    e.int(7);
    e.unicode("lr");
    e.op(b'G');
    e.buf.extend_from_slice(&0.5f64.to_be_bytes());
    e.op(b'u');
    // _metadata BUILD
    e.op(b'}');
    e.unicode("_metadata");
    e.op(b'}');
    e.op(b's');
    e.op(b'b');
    e.op(b'.');
    let p = torch_zip(dir.path(), &e.buf, &[("0", f32s(&st))]);
    let ck = read_zip(&p).unwrap();
    let names: Vec<&str> = ck.tensors.iter().map(|t| t.info.name.as_str()).collect();
    assert_eq!(names, ["a", "t", "s", "b"]);
    assert_eq!(ck.tensors[3].tied_to, Some(0));
    assert_eq!(ck.tensors[1].tied_to, None);
    let t: Vec<f32> = ck.tensors[1]
        .data
        .bytes()
        .chunks(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(t, [0., 4., 8., 1., 5., 9., 2., 6., 10., 3., 7., 11.]);
    assert_eq!(&*ck.tensors[2].data.bytes(), &f32s(&[5., 7.])[..]);
    assert_eq!(ck.others.len(), 2);
    assert_eq!(
        (ck.others[0].kind.as_str(), ck.others[0].value.as_str()),
        ("int", "7")
    );
    assert_eq!(
        (ck.others[1].kind.as_str(), ck.others[1].value.as_str()),
        ("float", "0.5")
    );
}

#[test]
fn v3_untyped_storages_and_unsupported_dtypes() {
    let dir = tempfile::tempdir().unwrap();
    let v3 = |dtype: &'static str| {
        move |e: &mut Emitter| {
            e.global("torch._utils", "_rebuild_tensor_v3");
            e.mark();
            persid(e, "torch.storage", "UntypedStorage", "0", 8);
            e.int(0);
            e.int_tuple(&[4]);
            e.int_tuple(&[1]);
            e.op(0x89);
            e.global("collections", "OrderedDict");
            e.op(b')');
            e.op(b'R');
            e.global("torch", dtype);
            e.op(b't');
            e.op(b'R');
        }
    };
    let ok = v3("uint16");
    let p = torch_zip(
        dir.path(),
        &dict_of(&[("u", &ok)]),
        &[("0", vec![1, 0, 2, 0, 3, 0, 4, 0])],
    );
    let ck = read_zip(&p).unwrap();
    assert_eq!(ck.tensors[0].info.dtype, DType::U16);
    assert_eq!(ck.tensors[0].info.shape, [4]);
    // FP8 e4m3fn/e5m2/e8m0fnu read (raw bytes); the fnuz variants do not.
    for (name, d) in [
        ("float8_e4m3fn", DType::F8E4M3),
        ("float8_e5m2", DType::F8E5M2),
        ("float8_e8m0fnu", DType::F8E8M0),
    ] {
        let f = v3(name);
        let p = torch_zip(dir.path(), &dict_of(&[("f", &f)]), &[("0", vec![7; 8])]);
        let ck = read_zip(&p).unwrap();
        assert_eq!(
            (ck.tensors[0].info.dtype, &ck.tensors[0].info.shape[..]),
            (d, &[4][..])
        );
    }
    let f8 = |e: &mut Emitter| {
        e.global("torch._utils", "_rebuild_tensor_v3");
        e.mark();
        persid(e, "torch.storage", "UntypedStorage", "0", 8);
        e.int(0);
        e.int_tuple(&[8]);
        e.int_tuple(&[1]);
        e.op(0x89);
        e.global("collections", "OrderedDict");
        e.op(b')');
        e.op(b'R');
        e.global("torch", "float8_e4m3fnuz");
        e.op(b't');
        e.op(b'R');
    };
    let p = torch_zip(
        dir.path(),
        &dict_of(&[("fp8.weight", &f8)]),
        &[("0", vec![0; 8])],
    );
    let msg = err_of(read_zip(&p));
    assert!(
        msg.contains("fp8.weight") && msg.contains("float8_e4m3fnuz"),
        "{msg}"
    );
    let q = |e: &mut Emitter| v2(e, "QInt8Storage", "0", 8, 0, &[8], &[1]);
    let p = torch_zip(
        dir.path(),
        &dict_of(&[("q.weight", &q)]),
        &[("0", vec![0; 8])],
    );
    let msg = err_of(read_zip(&p));
    assert!(
        msg.contains("q.weight") && msg.contains("QInt8Storage"),
        "{msg}"
    );
}

#[test]
fn absurd_sizes_error_without_allocating() {
    let dir = tempfile::tempdir().unwrap();
    let data = vec![("0", f32s(&[1., 2.]))];
    let cases: Vec<(&str, BoxedPart)> = vec![
        (
            "persistent id",
            Box::new(|e: &mut Emitter| v2(e, "FloatStorage", "0", 1 << 60, 0, &[2], &[1])),
        ),
        (
            "reaches byte",
            Box::new(|e: &mut Emitter| {
                v2(e, "FloatStorage", "0", 2, 0, &[1 << 20, 1 << 20], &[1, 1])
            }),
        ),
        (
            "overflows",
            Box::new(|e: &mut Emitter| {
                v2(
                    e,
                    "FloatStorage",
                    "0",
                    2,
                    0,
                    &[1 << 62, 1 << 62],
                    &[1 << 62, 1],
                )
            }),
        ),
        (
            "reaches byte",
            Box::new(|e: &mut Emitter| v2(e, "FloatStorage", "0", 2, 2, &[1], &[1])),
        ),
        (
            "missing",
            Box::new(|e: &mut Emitter| v2(e, "FloatStorage", "9", 2, 0, &[2], &[1])),
        ),
    ];
    for (want, f) in &cases {
        let p = torch_zip(dir.path(), &dict_of(&[("w", f.as_ref())]), &data);
        let msg = err_of(read_zip(&p));
        assert!(msg.contains("'w'") && msg.contains(want), "{msg}");
    }
    // numel beyond 2^63 (LONG1 of 9 bytes) is refused by the pickle machine itself
    let f = |e: &mut Emitter| v2(e, "FloatStorage", "0", u64::MAX, 0, &[2], &[1]);
    let p = torch_zip(dir.path(), &dict_of(&[("w", &f)]), &data);
    let msg = err_of(read_zip(&p));
    assert!(msg.contains("data.pkl") && msg.contains("size"), "{msg}");
    // LONG4 claiming 2 GiB, BINUNICODE claiming 4 GiB
    for bad in [
        &b"\x80\x02\x8b\xff\xff\xff\x7f"[..],
        &b"\x80\x02X\xff\xff\xff\xff"[..],
    ] {
        let p = torch_zip(dir.path(), bad, &[]);
        let msg = err_of(read_zip(&p));
        assert!(msg.contains("data.pkl"), "{msg}");
    }
}

#[test]
fn huge_dims_via_long1_are_fine() {
    // Dims beyond 2^31 (LONG1) on an empty tensor: nothing to read, nothing allocated.
    let dir = tempfile::tempdir().unwrap();
    let f = |e: &mut Emitter| v2(e, "ByteStorage", "0", 0, 0, &[1 << 33, 0], &[0, 1 << 40]);
    let p = torch_zip(dir.path(), &dict_of(&[("big", &f)]), &[("0", vec![])]);
    let ck = read_zip(&p).unwrap();
    assert_eq!(ck.tensors[0].info.shape, [1usize << 33, 0]);
    assert!(ck.tensors[0].data.bytes().is_empty());
    // A stride-0 view expanding one byte to 8 GiB is refused (it would have to be materialised).
    let f = |e: &mut Emitter| v2(e, "ByteStorage", "0", 1, 0, &[1 << 33], &[0]);
    let p = torch_zip(dir.path(), &dict_of(&[("big", &f)]), &[("0", vec![7])]);
    let msg = err_of(read_zip(&p));
    assert!(msg.contains("'big'") && msg.contains("expands"), "{msg}");
    // A modest expansion is fine.
    let f = |e: &mut Emitter| v2(e, "ByteStorage", "0", 2, 0, &[3, 2], &[0, 1]);
    let p = torch_zip(dir.path(), &dict_of(&[("pos", &f)]), &[("0", vec![7, 8])]);
    assert_eq!(
        &*read_zip(&p).unwrap().tensors[0].data.bytes(),
        &[7, 8, 7, 8, 7, 8]
    );
}

#[test]
fn wrapper_dicts_are_descended_or_refused_when_ambiguous() {
    let dir = tempfile::tempdir().unwrap();
    let data = vec![("0", f32s(&[1., 2.]))];
    let inner = |e: &mut Emitter| {
        e.op(b'}');
        e.mark();
        e.unicode("w");
        v2(e, "FloatStorage", "0", 2, 0, &[2], &[1]);
        e.op(b'u');
    };
    let epoch = |e: &mut Emitter| e.int(3);
    let opt = |e: &mut Emitter| {
        e.op(b'}');
        e.unicode("lr");
        e.op(b'N');
        e.op(b's');
    };
    let pkl = dict_of(&[
        ("epoch", &epoch),
        ("state_dict", &inner),
        ("optimizer", &opt),
    ]);
    let ck = read_zip(&torch_zip(dir.path(), &pkl, &data)).unwrap();
    assert_eq!(ck.tensors.len(), 1);
    assert_eq!(ck.tensors[0].info.name, "w");
    let others: Vec<(&str, &str)> = ck
        .others
        .iter()
        .map(|o| (o.name.as_str(), o.kind.as_str()))
        .collect();
    assert_eq!(others, [("epoch", "int"), ("optimizer", "dict")]);
    // Two tensor-holding dicts, one with a well-known name: pick it.
    let pkl = dict_of(&[("ema", &inner), ("model", &inner)]);
    let ck = read_zip(&torch_zip(dir.path(), &pkl, &data)).unwrap();
    assert_eq!(ck.tensors.len(), 1);
    assert_eq!(ck.others[0].name, "ema");
    // Two unknown ones: refuse, naming both.
    let pkl = dict_of(&[("a", &inner), ("b", &inner)]);
    let msg = err_of(read_zip(&torch_zip(dir.path(), &pkl, &data)));
    assert!(msg.contains("a, b"), "{msg}");
}

#[test]
fn container_problems_are_clear() {
    let dir = tempfile::tempdir().unwrap();
    let f = |e: &mut Emitter| v2(e, "FloatStorage", "0", 2, 0, &[2], &[1]);
    let pkl = dict_of(&[("w", &f)]);
    let data = f32s(&[1., 2.]);
    // TorchScript
    let p = zip_file(
        dir.path(),
        "ts.pt",
        &[
            ("m/data.pkl", &pkl),
            ("m/constants.pkl", b"\x80\x02)."),
            ("m/data/0", &data),
        ],
    );
    // ... whose data.pkl holds a state dict: read through it, with a note
    let ck = read_zip(&p).unwrap();
    assert_eq!(ck.tensors.len(), 1);
    assert!(ck.notes.join("").contains("TorchScript"), "{:?}", ck.notes);
    // ... whose data.pkl holds a scripted module: refused as a TorchScript module
    let mut e = Emitter::default();
    e.proto2();
    e.global("__torch__", "Net");
    e.op(b')');
    e.op(0x81);
    e.op(b'.');
    let p = zip_file(
        dir.path(),
        "ts2.pt",
        &[
            ("m/data.pkl", &e.buf),
            ("m/code/__torch__.py", b"class Net"),
        ],
    );
    assert!(err_of(read_zip(&p)).contains("TorchScript module, not a state dict"));
    // big-endian
    let p = zip_file(
        dir.path(),
        "be.pt",
        &[
            ("m/data.pkl", &pkl),
            ("m/byteorder", b"big"),
            ("m/data/0", &data),
        ],
    );
    assert!(err_of(read_zip(&p)).contains("big-endian"));
    // no data.pkl
    let p = zip_file(dir.path(), "np.pt", &[("m/other.pkl", &pkl)]);
    assert!(err_of(read_zip(&p)).contains("data.pkl"));
    // no prefix at all, CRCs zeroed: still fine
    let p = zip_file(
        dir.path(),
        "flat.pt",
        &[("data.pkl", &pkl), ("data/0", &data)],
    );
    let mut b = std::fs::read(&p).unwrap();
    zero_crcs(&mut b);
    std::fs::write(&p, &b).unwrap();
    assert_eq!(read_zip(&p).unwrap().tensors.len(), 1);
    // a compressed (Deflate-marked) entry
    let p = zip_file(
        dir.path(),
        "defl.pt",
        &[("m/data.pkl", &pkl), ("m/data/0", &data)],
    );
    let mut b = std::fs::read(&p).unwrap();
    set_methods(&mut b, 8);
    std::fs::write(&p, &b).unwrap();
    let msg = err_of(read_zip(&p));
    assert!(msg.contains("compressed (method 8, Deflate)"), "{msg}");
    // storage record of the wrong size
    let p = torch_zip(dir.path(), &pkl, &[("0", vec![0; 12])]);
    assert!(err_of(read_zip(&p)).contains("record holds 12 bytes"));
    // top level not a dict
    let mut e = Emitter::default();
    e.proto2();
    e.op(b']');
    e.op(b'.');
    assert!(err_of(read_zip(&torch_zip(dir.path(), &e.buf, &[]))).contains("list"));
}

/// Walk local and central headers (small hand-made files only) and apply `f(header, offset_of_field_base)`.
fn patch_headers(b: &mut [u8], f: impl Fn(&mut [u8], bool)) {
    let mut i = 0;
    while i + 4 <= b.len() {
        match &b[i..i + 4] {
            b"PK\x03\x04" => f(&mut b[i..], true),
            b"PK\x01\x02" => f(&mut b[i..], false),
            _ => {}
        }
        i += 1;
    }
}

fn zero_crcs(b: &mut [u8]) {
    patch_headers(b, |h, local| {
        let at = if local { 14 } else { 16 };
        h[at..at + 4].fill(0);
    });
}

fn set_methods(b: &mut [u8], m: u16) {
    patch_headers(b, |h, local| {
        let at = if local { 8 } else { 10 };
        h[at..at + 2].copy_from_slice(&m.to_le_bytes());
    });
}

/// A legacy file: magic, 1001, sys_info, the object, the keys, then (count, bytes) per key.
fn legacy_file(dir: &Path, little: bool, view_meta: bool, cut: usize) -> PathBuf {
    let mut b = Vec::new();
    b.extend_from_slice(&LEGACY_MAGIC_PREFIX);
    b.push(b'.');
    let mut e = Emitter::default();
    e.proto2();
    e.int(1001);
    e.op(b'.');
    e.op(b'}');
    e.mark();
    e.unicode("protocol_version");
    e.int(1001);
    e.unicode("little_endian");
    e.op(if little { 0x88 } else { 0x89 });
    e.op(b'u');
    e.op(b'.');
    b.extend_from_slice(&e.buf);
    let mut e = Emitter::default();
    e.proto2();
    e.op(b'}');
    e.mark();
    for (name, key) in [("w", "140"), ("h", "77"), ("w2", "140")] {
        e.unicode(name);
        e.global("torch._utils", "_rebuild_tensor_v2");
        e.mark();
        e.mark();
        e.unicode("storage");
        e.global(
            "torch",
            if key == "77" {
                "HalfStorage"
            } else {
                "FloatStorage"
            },
        );
        e.unicode(key);
        e.unicode("cpu");
        e.int(3);
        if view_meta {
            e.unicode("v");
        } else {
            e.op(b'N');
        }
        e.op(b't');
        e.op(b'Q');
        e.int(0);
        e.int_tuple(&[3]);
        e.int_tuple(&[1]);
        e.op(0x89);
        e.global("collections", "OrderedDict");
        e.op(b')');
        e.op(b'R');
        e.op(b't');
        e.op(b'R');
    }
    e.op(b'u');
    e.op(b'.');
    e.op(b']');
    e.mark();
    e.unicode("140");
    e.unicode("77");
    e.op(b'e');
    e.op(b'.');
    b.extend_from_slice(&e.buf);
    b.extend_from_slice(&3i64.to_le_bytes());
    b.extend_from_slice(&f32s(&[1., 2., 3.]));
    b.extend_from_slice(&3i64.to_le_bytes());
    b.extend_from_slice(&[0, 0x3c, 0, 0x40, 0, 0x42]);
    b.truncate(b.len() - cut);
    let p = dir.join("legacy.bin");
    std::fs::write(&p, &b).unwrap();
    p
}

#[test]
fn legacy_files_hand_made() {
    let dir = tempfile::tempdir().unwrap();
    let ck = read_legacy(&legacy_file(dir.path(), true, false, 0)).unwrap();
    assert_eq!(ck.format, "torch_legacy_pickle");
    let names: Vec<&str> = ck.tensors.iter().map(|t| t.info.name.as_str()).collect();
    assert_eq!(names, ["w", "h", "w2"]);
    assert_eq!(ck.tensors[2].tied_to, Some(0));
    assert_eq!(&*ck.tensors[1].data.bytes(), &[0, 0x3c, 0, 0x40, 0, 0x42]);
    assert!(err_of(read_legacy(&legacy_file(dir.path(), false, false, 0))).contains("big-endian"));
    assert!(err_of(read_legacy(&legacy_file(dir.path(), true, true, 0))).contains("view"));
    for cut in [1, 6, 7, 13, 14, 20] {
        let msg = err_of(read_legacy(&legacy_file(dir.path(), true, false, cut)));
        assert!(
            msg.contains("cut short") && msg.contains("legacy.bin"),
            "{msg}"
        );
    }
}

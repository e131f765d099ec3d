//! safetensors reader and writer: fixtures (byte-identical rewrites, sidecars), validation of hostile headers,
//! and a property test that also compares our bytes with the `safetensors` crate's own serializer.

mod ms_common;

use std::collections::HashMap;
use std::path::Path;

use convert_weight::formats::{self, safetensors as st, OutTensor, OutputFormat, WriteOptions};
use convert_weight::tensor::{Checkpoint, DType, TensorInfo};
use ms_common::*;
use proptest::prelude::*;

fn st_bytes(header: &str, data: &[u8]) -> Vec<u8> {
    let mut f = (header.len() as u64).to_le_bytes().to_vec();
    f.extend_from_slice(header.as_bytes());
    f.extend_from_slice(data);
    f
}

fn read_bytes(bytes: &[u8]) -> formats::Result<Checkpoint> {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x.safetensors");
    std::fs::write(&p, bytes).unwrap();
    st::read(&p)
}

fn err_of(bytes: &[u8]) -> String {
    match read_bytes(bytes) {
        Ok(ck) => panic!("expected an error, read {} tensors", ck.tensors.len()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn fixture_safetensors_match_sidecars_and_rewrite_identically() {
    let files = golden_files(".safetensors");
    let out = tempfile::tempdir().unwrap();
    for (i, f) in files.iter().enumerate() {
        let what = f.display().to_string();
        let ck = st::read(f).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(ck.format, "safetensors");
        let side = sidecar(f);
        assert_matches_sidecar(&ck, &side, &what);
        let meta: Vec<(String, String)> = side["metadata"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                    .collect()
            })
            .unwrap_or_default();
        assert_eq!(ck.metadata, meta, "{what}");
        // data offsets as in the sidecar
        for (t, s) in ck.tensors.iter().zip(side["tensors"].as_array().unwrap()) {
            let convert_weight::tensor::DataRef::Contiguous { range, .. } = &t.data else {
                panic!("not contiguous")
            };
            let start = 8 + side["header_len"].as_u64().unwrap() as usize;
            assert_eq!(
                vec![range.start - start, range.end - start],
                s["data_offsets"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_u64().unwrap() as usize)
                    .collect::<Vec<_>>()
            );
        }
        // Re-writing with the same metadata reproduces the file: these files were written by the safetensors
        // package, whose layout (dtype descending in its Dtype order, then name) our writer reproduces.
        let dst = out.path().join(format!("{i}.safetensors"));
        let opts = WriteOptions {
            metadata: ck.metadata.clone(),
            ..Default::default()
        };
        write_checkpoint(OutputFormat::Safetensors, &dst, &ck, &opts).unwrap();
        assert_eq!(
            sha256_hex(&std::fs::read(&dst).unwrap()),
            side["file_sha256"].as_str().unwrap(),
            "{what}"
        );
        assert_same_tensors(&ck, &st::read(&dst).unwrap(), &what);
    }
    checked("safetensors fixtures", files.len(), SAFETENSORS);
}

#[test]
fn header_padding_and_whitespace() {
    let data = [1u8, 2, 3, 4];
    let h = r#"{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}}"#;
    for header in [
        h.to_string(),
        format!("{h}     "),
        format!("  {h}"),
        format!("\n{h}\t"),
    ] {
        let ck = read_bytes(&st_bytes(&header, &data)).unwrap();
        assert_eq!(&ck.tensors[0].data.bytes()[..], &data);
    }
    // unknown fields are ignored, `__metadata__` is kept in order
    let h = r#"{"__metadata__":{"z":"1","a":"2"},"a":{"dtype":"U8","shape":[2,2],"data_offsets":[0,4],"extra":[1]}}"#;
    let ck = read_bytes(&st_bytes(h, &data)).unwrap();
    assert_eq!(
        ck.metadata,
        vec![("z".into(), "1".into()), ("a".into(), "2".into())]
    );
    // an empty file of tensors
    let ck = read_bytes(&st_bytes("{}", &[])).unwrap();
    assert!(ck.tensors.is_empty());
    // zero-size tensors and a scalar, listed in data order whatever the header order
    let h = r#"{"s":{"dtype":"F32","shape":[],"data_offsets":[2,6]},"e":{"dtype":"F32","shape":[0,3],"data_offsets":[2,2]},"b":{"dtype":"BF16","shape":[1],"data_offsets":[0,2]}}"#;
    let ck = read_bytes(&st_bytes(h, &[0; 6])).unwrap();
    let names: Vec<_> = ck.tensors.iter().map(|t| t.info.name.as_str()).collect();
    assert_eq!(names, ["b", "e", "s"]);
}

#[test]
fn hostile_headers_are_refused_clearly() {
    let t = |name: &str, dtype: &str, shape: &str, b: u64, e: u64| {
        format!(r#""{name}":{{"dtype":"{dtype}","shape":{shape},"data_offsets":[{b},{e}]}}"#)
    };
    let obj = |parts: &[String]| format!("{{{}}}", parts.join(","));
    let mut huge_len = (1u64 << 63).to_le_bytes().to_vec();
    huge_len.extend(b"{}");
    let mut past_end = 100u64.to_le_bytes().to_vec();
    past_end.extend(b"{}");
    let cases: Vec<(&str, Vec<u8>, &[&str])> = vec![
        ("too short", vec![1, 0, 0], &["too short"]),
        ("header length 2^63", huge_len, &["exceeds"]),
        ("header past end", past_end, &["runs past"]),
        ("not an object", st_bytes("[1]", &[]), &["start with '{'"]),
        (
            "bad json",
            st_bytes("{\"a\":", &[]),
            &["invalid header JSON"],
        ),
        (
            "not utf-8",
            st_bytes("{\"\u{ff}\":1}", &[])
                .into_iter()
                .map(|b| if b == 0xC3 { 0xFF } else { b })
                .collect(),
            &["UTF-8"],
        ),
        (
            "duplicate tensor",
            st_bytes(
                &obj(&[t("a", "U8", "[1]", 0, 1), t("a", "U8", "[1]", 1, 2)]),
                &[0; 2],
            ),
            &["duplicate key 'a'"],
        ),
        (
            "duplicate metadata key",
            st_bytes(r#"{"__metadata__":{"k":"1","k":"2"}}"#, &[]),
            &["duplicate key 'k'"],
        ),
        (
            "non-string metadata",
            st_bytes(r#"{"__metadata__":{"k":1}}"#, &[]),
            &["__metadata__"],
        ),
        (
            "duplicate field",
            st_bytes(
                r#"{"a":{"dtype":"U8","dtype":"U8","shape":[1],"data_offsets":[0,1]}}"#,
                &[0],
            ),
            &["duplicate field", "'a'"],
        ),
        (
            "fp8 fnuz",
            st_bytes(&obj(&[t("w8", "F8_E4M3FNUZ", "[2]", 0, 2)]), &[0; 2]),
            &["'w8'", "F8_E4M3FNUZ", "not supported"],
        ),
        (
            "unknown dtype",
            st_bytes(&obj(&[t("w", "Q7", "[2]", 0, 2)]), &[0; 2]),
            &["'w'", "unknown dtype 'Q7'"],
        ),
        (
            "overlap",
            st_bytes(
                &obj(&[t("a", "U8", "[2]", 0, 2), t("b", "U8", "[2]", 1, 3)]),
                &[0; 3],
            ),
            &["'b'", "overlap"],
        ),
        (
            "hole",
            st_bytes(
                &obj(&[t("a", "U8", "[2]", 0, 2), t("b", "U8", "[2]", 3, 5)]),
                &[0; 5],
            ),
            &["'b'", "hole"],
        ),
        (
            "not from zero",
            st_bytes(&obj(&[t("a", "U8", "[2]", 1, 3)]), &[0; 3]),
            &["'a'", "hole"],
        ),
        (
            "trailing bytes",
            st_bytes(&obj(&[t("a", "U8", "[2]", 0, 2)]), &[0; 3]),
            &["trailing"],
        ),
        (
            "truncated data",
            st_bytes(&obj(&[t("a", "U8", "[4]", 0, 4)]), &[0; 3]),
            &["truncated"],
        ),
        (
            "size mismatch",
            st_bytes(&obj(&[t("a", "F32", "[2]", 0, 4)]), &[0; 4]),
            &["'a'", "needs 8"],
        ),
        (
            "end before begin",
            st_bytes(&obj(&[t("a", "U8", "[0]", 4, 0)]), &[]),
            &["'a'", "end before begin"],
        ),
        (
            "2^60 elements",
            st_bytes(
                &obj(&[t("h", "F32", "[1073741824,1073741824]", 0, 4)]),
                &[0; 4],
            ),
            &["'h'", "needs 4611686018427387904"],
        ),
        (
            "overflowing shape",
            st_bytes(
                &obj(&[t("h", "F32", "[4611686018427387904,8]", 0, 4)]),
                &[0; 4],
            ),
            &["'h'", "overflow"],
        ),
        (
            "offset past 2^64",
            st_bytes(
                &obj(&[t("h", "U8", "[1]", 18446744073709551615, 0)]),
                &[0; 4],
            ),
            &["'h'"],
        ),
        (
            "negative dim",
            st_bytes(&obj(&[t("n", "U8", "[-1]", 0, 0)]), &[]),
            &["invalid header JSON", "'n'"],
        ),
        (
            "float offsets",
            st_bytes(
                r#"{"n":{"dtype":"U8","shape":[1],"data_offsets":[0.5,1]}}"#,
                &[0],
            ),
            &["invalid header JSON", "'n'"],
        ),
    ];
    for (what, bytes, needles) in cases {
        let e = err_of(&bytes);
        eprintln!("{what}: {e}");
        assert!(e.contains("x.safetensors"), "{what}: no file name in: {e}");
        for n in needles {
            assert!(e.contains(n), "{what}: '{n}' not in: {e}");
        }
    }
}

fn sample() -> Vec<u8> {
    let h = r#"{"__metadata__":{"format":"pt"},"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]},"b":{"dtype":"U8","shape":[3],"data_offsets":[16,19]}}"#;
    st_bytes(h, &(0..19).collect::<Vec<u8>>())
}

#[test]
fn truncations_and_flips_never_panic() {
    let full = sample();
    read_bytes(&full).unwrap();
    for cut in 0..full.len() {
        let e = read_bytes(&full[..cut]).unwrap_err();
        assert!(e.to_string().contains("x.safetensors"));
    }
    for i in 0..full.len() {
        for x in [0x01u8, 0x80, 0xFF] {
            let mut f = full.clone();
            f[i] ^= x;
            let _ = read_bytes(&f);
        }
    }
}

fn decl(tensors: &[(TensorInfo, Vec<u8>)]) -> Vec<OutTensor> {
    tensors
        .iter()
        .map(|(i, _)| OutTensor {
            info: i.clone(),
            tied_to: None,
        })
        .collect()
}

fn write_st(p: &Path, tensors: &[(TensorInfo, Vec<u8>)], opts: &WriteOptions) -> Vec<usize> {
    let mut w = st::writer(p, &decl(tensors), opts).unwrap();
    let order = w.order();
    for &i in &order {
        w.write(i, &tensors[i].1).unwrap();
    }
    assert_eq!(w.finish().unwrap(), vec![p.to_path_buf()]);
    order
}

#[test]
fn writer_layout_metadata_and_tied_copies() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("w.safetensors");
    let ts = vec![
        (
            TensorInfo::new("emb", DType::F16, vec![2]),
            vec![1, 2, 3, 4],
        ),
        (TensorInfo::new("flag", DType::Bool, vec![]), vec![1]),
        (
            TensorInfo::new("head", DType::F16, vec![2]),
            vec![1, 2, 3, 4],
        ),
        (TensorInfo::new("big", DType::F64, vec![1]), vec![9; 8]),
    ];
    let mut d = decl(&ts);
    d[2].tied_to = Some(0);
    let opts = WriteOptions {
        metadata: vec![("format".into(), "pt".into())],
        ..Default::default()
    };
    let mut w = st::writer(&p, &d, &opts).unwrap();
    assert_eq!(w.order(), vec![3, 0, 2, 1]);
    for i in w.order() {
        w.write(i, &ts[i].1).unwrap();
    }
    w.finish().unwrap();
    let bytes = std::fs::read(&p).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    assert_eq!(n % 8, 0);
    let header = std::str::from_utf8(&bytes[8..8 + n]).unwrap();
    assert!(
        header.starts_with(r#"{"__metadata__":{"format":"pt"},"big":"#),
        "{header}"
    );
    let ck = st::read(&p).unwrap();
    let names: Vec<_> = ck.tensors.iter().map(|t| t.info.name.as_str()).collect();
    assert_eq!(names, ["big", "emb", "head", "flag"]);
    assert_eq!(&ck.find("head").unwrap().data.bytes()[..], &[1, 2, 3, 4]);
    // the crate reads it too
    let sf = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(sf.len(), 4);

    // no metadata: no __metadata__ key
    let p2 = dir.path().join("nometa.safetensors");
    write_st(&p2, &ts, &WriteOptions::default());
    let b = std::fs::read(&p2).unwrap();
    assert!(!String::from_utf8_lossy(&b).contains("__metadata__"));
}

#[test]
fn writer_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("w.safetensors");
    let one = |n: &str| (TensorInfo::new(n, DType::U8, vec![1]), vec![0u8]);
    let opts = WriteOptions::default();
    assert!(st::writer(&p, &decl(&[one("a"), one("a")]), &opts).is_err());
    assert!(st::writer(&p, &decl(&[one("__metadata__")]), &opts).is_err());
    let dup_meta = WriteOptions {
        metadata: vec![("k".into(), "1".into()), ("k".into(), "2".into())],
        ..Default::default()
    };
    assert!(st::writer(&p, &decl(&[one("a")]), &dup_meta).is_err());
    let mut w = st::writer(&p, &decl(&[one("a"), one("b")]), &opts).unwrap();
    assert!(w.write(1, &[0]).is_err());
    assert!(w.write(0, &[0, 0]).is_err());
    w.write(0, &[0]).unwrap();
    assert!(w.finish().is_err());
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "temp file left behind"
    );
}

// ---------------------------------------------------------------------------------------------------------------
// Property: write → read is the identity, and our bytes equal the safetensors crate's
// ---------------------------------------------------------------------------------------------------------------

fn tensors_strategy() -> impl Strategy<Value = Vec<(TensorInfo, Vec<u8>)>> {
    let one = (
        "\\PC{1,8}",
        0..DType::ALL.len(),
        prop::collection::vec(0usize..4, 0..4),
        any::<u8>(),
    );
    prop::collection::vec(one, 0..8).prop_map(|v| {
        v.into_iter()
            .enumerate()
            .map(|(i, (name, d, shape, seed))| {
                let info = TensorInfo::new(format!("{name}#{i}"), DType::ALL[d], shape);
                let data = (0..info.nbytes())
                    .map(|k| (k as u8).wrapping_mul(31).wrapping_add(seed))
                    .collect();
                (info, data)
            })
            .collect()
    })
}

fn st_dtype(d: DType) -> safetensors::Dtype {
    use safetensors::Dtype as S;
    match d {
        DType::F64 => S::F64,
        DType::F32 => S::F32,
        DType::F16 => S::F16,
        DType::BF16 => S::BF16,
        DType::I64 => S::I64,
        DType::I32 => S::I32,
        DType::I16 => S::I16,
        DType::I8 => S::I8,
        DType::U8 => S::U8,
        DType::U16 => S::U16,
        DType::U32 => S::U32,
        DType::U64 => S::U64,
        DType::Bool => S::BOOL,
        DType::F8E4M3 => S::F8_E4M3,
        DType::F8E5M2 => S::F8_E5M2,
        DType::F8E8M0 => S::F8_E8M0,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
    #[test]
    fn safetensors_round_trip(tensors in tensors_strategy(), meta in prop::option::of(("\\PC{0,6}", "\\PC{0,6}"))) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("p.safetensors");
        let opts = WriteOptions { metadata: meta.clone().into_iter().collect(), ..Default::default() };
        let order = write_st(&p, &tensors, &opts);
        let ck = st::read(&p).unwrap();
        prop_assert_eq!(ck.tensors.len(), tensors.len());
        for (t, &i) in ck.tensors.iter().zip(&order) {
            prop_assert_eq!(&t.info, &tensors[i].0);
            prop_assert_eq!(&t.data.bytes()[..], &tensors[i].1[..]);
        }
        prop_assert_eq!(&ck.metadata, &opts.metadata);
        // byte-identical to the crate's serializer
        let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
            .iter()
            .map(|(info, data)| {
                let v = safetensors::tensor::TensorView::new(st_dtype(info.dtype), info.shape.clone(), data).unwrap();
                (info.name.clone(), v)
            })
            .collect();
        let meta_map: Option<HashMap<String, String>> = meta.map(|(k, v)| [(k, v)].into_iter().collect());
        let theirs = safetensors::serialize(views, meta_map).unwrap();
        prop_assert!(std::fs::read(&p).unwrap() == theirs, "bytes differ from safetensors::serialize");
    }
}

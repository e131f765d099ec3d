//! HF sharded sets: resolving paths, reading an index, writing shards atomically, and refusals.

mod ms_common;

use std::path::{Path, PathBuf};

use convert_weight::formats::sharded::{self, parse_size, Resolved};
use convert_weight::formats::{self, OutTensor, OutputFormat, WriteOptions};
use convert_weight::tensor::{Backing, Checkpoint, DType, DataRef, TensorEntry, TensorInfo};
use ms_common::*;

/// A small model: 7 tensors of mixed dtypes, 8..400 bytes each (1 248 bytes in all).
fn model() -> Checkpoint {
    let specs: &[(&str, DType, &[usize])] = &[
        ("embed.weight", DType::F32, &[10, 10]),
        ("layers.0.norm", DType::F16, &[20]),
        ("layers.0.q", DType::BF16, &[10, 6]),
        ("layers.0.step", DType::I64, &[]),
        ("layers.1.q", DType::F32, &[10, 6]),
        ("layers.1.mask", DType::Bool, &[5, 8]),
        ("lm_head.weight", DType::F32, &[10, 10]),
    ];
    let tensors = specs
        .iter()
        .enumerate()
        .map(|(i, (n, d, s))| {
            let info = TensorInfo::new(*n, *d, s.to_vec());
            let data: Vec<u8> = (0..info.nbytes()).map(|k| (k * 7 + i) as u8).collect();
            let len = data.len();
            TensorEntry {
                info,
                data: DataRef::Contiguous {
                    backing: Backing::owned(data),
                    range: 0..len,
                },
                tied_to: None,
            }
        })
        .collect();
    Checkpoint {
        format: "test".into(),
        tensors,
        ..Default::default()
    }
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

fn sharded_opts(max: u64) -> WriteOptions {
    WriteOptions {
        max_shard_size: Some(max),
        metadata: vec![("format".into(), "pt".into())],
        ..Default::default()
    }
}

#[test]
fn safetensors_shards_round_trip_through_every_entry_point() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("out");
    let ck = model();
    // greedy at 450 bytes: 400+40 | 120+8+240+40 | 400
    let files = write_checkpoint(OutputFormat::Safetensors, &dir, &ck, &sharded_opts(450)).unwrap();
    let names = names_in(&dir);
    assert_eq!(
        names,
        [
            "model-00001-of-00003.safetensors",
            "model-00002-of-00003.safetensors",
            "model-00003-of-00003.safetensors",
            "model.safetensors.index.json"
        ]
    );
    assert_eq!(files.len(), 4);
    let index: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("model.safetensors.index.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(index["metadata"]["total_size"], 1248);
    let wm = index["weight_map"].as_object().unwrap();
    let keys: Vec<&String> = wm.keys().collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted, "weight_map sorted by name");
    assert_eq!(wm["embed.weight"], "model-00001-of-00003.safetensors");
    assert_eq!(wm["layers.0.norm"], "model-00001-of-00003.safetensors");
    assert_eq!(wm["layers.0.q"], "model-00002-of-00003.safetensors");
    assert_eq!(wm["lm_head.weight"], "model-00003-of-00003.safetensors");

    let idx = dir.join("model.safetensors.index.json");
    assert_eq!(
        sharded::resolve(&dir).unwrap(),
        Resolved::Index(idx.clone())
    );
    assert_eq!(
        sharded::resolve(&idx).unwrap(),
        Resolved::Index(idx.clone())
    );
    let shard = dir.join("model-00002-of-00003.safetensors");
    assert_eq!(
        sharded::resolve(&shard).unwrap(),
        Resolved::Index(idx.clone())
    );
    for p in [&dir, &idx, &shard] {
        let back = formats::open_model(p).unwrap();
        assert_eq!(back.format, "sharded(safetensors)");
        assert_eq!(back.files.len(), 3);
        assert_eq!(
            back.metadata,
            vec![("format".to_string(), "pt".to_string())]
        );
        assert_same_tensor_set(&ck, &back, &p.display().to_string());
    }
    // open_file on a single shard reads only that shard
    let one = formats::open_file(&shard).unwrap();
    assert_eq!(one.format, "safetensors");
    assert!(one.tensors.len() < ck.tensors.len());
}

#[test]
fn ckpt_shards_and_tied_copies() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ms");
    let ck = model();
    let mut decl = declare(&ck);
    // lm_head tied to embed, which lands in another shard: the tie is cut and the copy written in full
    decl[6].tied_to = Some(0);
    let mut w =
        formats::create_writer(OutputFormat::Ckpt, &dir, &decl, &sharded_opts(450)).unwrap();
    // ckpt writes every tensor, in declared order
    assert_eq!(w.order(), (0..7).collect::<Vec<_>>());
    for i in w.order() {
        w.write(i, &ck.tensors[i].data.bytes()).unwrap();
    }
    w.finish().unwrap();
    assert_eq!(
        names_in(&dir),
        [
            "mindspore_model-00001-of-00003.ckpt",
            "mindspore_model-00002-of-00003.ckpt",
            "mindspore_model-00003-of-00003.ckpt",
            "mindspore_model.ckpt.index.json"
        ]
    );
    let back = formats::open_model(&dir).unwrap();
    assert_eq!(back.format, "sharded(mindspore_ckpt_protobuf)");
    // ckpt keeps declared order within shards, and shards follow declared order
    assert_same_tensors(&ck, &back, "ckpt shards");
}

#[test]
fn a_single_shard_has_no_index() {
    let tmp = tempfile::tempdir().unwrap();
    let ck = model();
    for (fmt, name) in [
        (OutputFormat::Safetensors, "model.safetensors"),
        (OutputFormat::Ckpt, "mindspore_model.ckpt"),
    ] {
        let dir = tmp.path().join(name);
        write_checkpoint(fmt, &dir, &ck, &sharded_opts(10 << 20)).unwrap();
        assert_eq!(names_in(&dir), [name]);
        assert_eq!(
            sharded::resolve(&dir).unwrap(),
            Resolved::File(dir.join(name))
        );
        assert_same_tensor_set(&ck, &formats::open_model(&dir).unwrap(), name);
    }
    // an empty model still gives one (empty) file
    let dir = tmp.path().join("empty");
    let empty = Checkpoint::default();
    write_checkpoint(OutputFormat::Safetensors, &dir, &empty, &sharded_opts(10)).unwrap();
    assert_eq!(names_in(&dir), ["model.safetensors"]);
    assert!(formats::open_model(&dir).unwrap().tensors.is_empty());
}

#[test]
fn a_tensor_over_the_limit_gets_its_own_shard() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("o");
    let ck = model();
    write_checkpoint(OutputFormat::Safetensors, &dir, &ck, &sharded_opts(100)).unwrap();
    // 400 | 40 | 120 | 8 | 240 | 40 | 400: 40+120 > 100, 8+240 > 100, ...
    let shards = names_in(&dir).len() - 1;
    assert_eq!(shards, 7);
    assert_same_tensor_set(&ck, &formats::open_model(&dir).unwrap(), "7 shards");
}

#[test]
fn a_failing_shard_leaves_nothing_behind() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("f");
    // the second shard's final name is taken by a directory: its rename fails at finish()
    std::fs::create_dir_all(dir.join("model-00002-of-00003.safetensors/x")).unwrap();
    let ck = model();
    let e = write_checkpoint(OutputFormat::Safetensors, &dir, &ck, &sharded_opts(450)).unwrap_err();
    assert!(e.to_string().contains("model-00002-of-00003"), "{e}");
    assert_eq!(
        names_in(&dir),
        ["model-00002-of-00003.safetensors"],
        "shard 1 or temp files left behind"
    );

    // an unfinished writer, dropped: nothing at all
    let dir2 = tmp.path().join("g");
    let decl = declare(&ck);
    let mut w = formats::create_writer(OutputFormat::Safetensors, &dir2, &decl, &sharded_opts(450))
        .unwrap();
    let first = w.order()[0];
    w.write(first, &ck.tensors[first].data.bytes()).unwrap();
    drop(w);
    assert!(names_in(&dir2).is_empty());
    // finishing early is an error and renames nothing
    let mut w = formats::create_writer(OutputFormat::Safetensors, &dir2, &decl, &sharded_opts(450))
        .unwrap();
    let first = w.order()[0];
    w.write(first, &ck.tensors[first].data.bytes()).unwrap();
    assert!(w.finish().is_err());
    assert!(names_in(&dir2).is_empty());
}

#[test]
fn fixture_torch_shards_resolve_to_their_index() {
    let indexes = golden_files("pytorch_model.bin.index.json");
    checked("torch shard indexes", indexes.len(), TORCH_SHARD_INDEXES);
    for idx in indexes {
        let dir = idx.parent().unwrap();
        assert_eq!(sharded::resolve(dir).unwrap(), Resolved::Index(idx.clone()));
        let text = std::fs::read_to_string(&idx).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let mut shards: Vec<&str> = v["weight_map"]
            .as_object()
            .unwrap()
            .values()
            .map(|s| s.as_str().unwrap())
            .collect();
        shards.sort();
        shards.dedup();
        assert!(shards.len() >= 2);
        for s in shards {
            assert_eq!(
                sharded::resolve(&dir.join(s)).unwrap(),
                Resolved::Index(idx.clone()),
                "{s}"
            );
        }
        // reading them needs the torch reader (another module); when it exists the set must match the sidecars
        match formats::open_model(dir) {
            Ok(ck) => assert!(ck.format.starts_with("sharded(torch")),
            Err(e) => assert!(e.to_string().contains("not implemented yet"), "{e}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Index refusals
// ---------------------------------------------------------------------------------------------------------------

/// A directory with two safetensors shards holding a, b | c and an index (returned) written from `index_json`.
fn set_with_index(tmp: &Path, index_json: &str) -> PathBuf {
    let dir = tmp.join(format!("s{}", std::fs::read_dir(tmp).unwrap().count()));
    std::fs::create_dir_all(&dir).unwrap();
    let t = |n: &str| OutTensor {
        info: TensorInfo::new(n, DType::U8, vec![2]),
        tied_to: None,
    };
    for (file, names) in [
        ("one.safetensors", vec!["a", "b"]),
        ("two.safetensors", vec!["c"]),
    ] {
        let decl: Vec<OutTensor> = names.iter().map(|n| t(n)).collect();
        let mut w = formats::create_single_writer(
            OutputFormat::Safetensors,
            &dir.join(file),
            &decl,
            &WriteOptions::default(),
        )
        .unwrap();
        for i in w.order() {
            w.write(i, &[1, 2]).unwrap();
        }
        w.finish().unwrap();
    }
    let idx = dir.join("model.safetensors.index.json");
    std::fs::write(&idx, index_json).unwrap();
    idx
}

#[test]
fn index_reading_is_fail_closed() {
    let tmp = tempfile::tempdir().unwrap();
    let ok = r#"{"metadata": {"total_size": 6, "total_parameters": "six", "lm_head.weight": "embed", "x": null},
                "weight_map": {"a": "one.safetensors", "c": "two.safetensors", "b": "one.safetensors"}}"#;
    let idx = set_with_index(tmp.path(), ok);
    let ck = sharded::read_index(&idx).unwrap();
    let names: Vec<_> = ck.tensors.iter().map(|t| t.info.name.as_str()).collect();
    assert_eq!(names, ["a", "b", "c"]);
    assert_eq!(ck.files.len(), 2);
    // no metadata at all is fine too
    let idx = set_with_index(
        tmp.path(),
        r#"{"weight_map": {"a": "one.safetensors", "b": "one.safetensors", "c": "two.safetensors"}}"#,
    );
    sharded::read_index(&idx).unwrap();

    let cases: &[(&str, &str, &[&str])] = &[
        (
            "missing shard",
            r#"{"weight_map": {"a": "one.safetensors", "b": "one.safetensors", "c": "three.safetensors"}}"#,
            &[
                "three.safetensors",
                "missing",
                "model.safetensors.index.json",
            ],
        ),
        (
            "name not in shard",
            r#"{"weight_map": {"a": "one.safetensors", "b": "one.safetensors", "c": "two.safetensors", "d": "two.safetensors"}}"#,
            &["two.safetensors", "lacks", "d"],
        ),
        (
            "tensor not in weight_map",
            r#"{"weight_map": {"a": "one.safetensors", "c": "two.safetensors"}}"#,
            &["one.safetensors", "does not assign", "b"],
        ),
        (
            "tensor mapped to the other shard",
            r#"{"weight_map": {"a": "one.safetensors", "b": "two.safetensors", "c": "two.safetensors"}}"#,
            &["one.safetensors", "does not assign", "b"],
        ),
        (
            "duplicate names",
            r#"{"weight_map": {"a": "one.safetensors", "a": "one.safetensors", "b": "one.safetensors", "c": "two.safetensors"}}"#,
            &["duplicate key 'a'"],
        ),
        ("empty weight_map", r#"{"weight_map": {}}"#, &["empty"]),
        ("no weight_map", r#"{"metadata": {}}"#, &["weight_map"]),
        ("not json", "weights!", &["invalid index json"]),
        (
            "escaping path",
            r#"{"weight_map": {"a": "../one.safetensors"}}"#,
            &["../one.safetensors", "inside the index's directory"],
        ),
        (
            "absolute path",
            r#"{"weight_map": {"a": "/etc/passwd"}}"#,
            &["/etc/passwd", "inside"],
        ),
        (
            "index naming an index",
            r#"{"weight_map": {"a": "model.safetensors.index.json"}}"#,
            &["not a weight file"],
        ),
    ];
    for (what, json, needles) in cases {
        let idx = set_with_index(tmp.path(), json);
        let e = sharded::read_index(&idx).unwrap_err().to_string();
        eprintln!("{what}: {e}");
        for n in *needles {
            assert!(e.contains(n), "{what}: '{n}' not in: {e}");
        }
    }
}

#[test]
fn resolve_directories() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let e = sharded::resolve(d).unwrap_err().to_string();
    assert!(e.contains("no index json"), "{e}");
    std::fs::write(d.join("config.json"), "{}").unwrap();
    std::fs::write(d.join("a.ckpt"), [0x0A]).unwrap();
    assert_eq!(
        sharded::resolve(d).unwrap(),
        Resolved::File(d.join("a.ckpt"))
    );
    std::fs::write(d.join("b.safetensors"), [0]).unwrap();
    let e = sharded::resolve(d).unwrap_err().to_string();
    assert!(e.contains("a.ckpt") && e.contains("b.safetensors"), "{e}");
    std::fs::write(d.join("pytorch_model.bin.index.json"), "{}").unwrap();
    assert_eq!(
        sharded::resolve(d).unwrap(),
        Resolved::Index(d.join("pytorch_model.bin.index.json"))
    );
    std::fs::write(d.join("model.safetensors.index.json"), "{}").unwrap();
    assert_eq!(
        sharded::resolve(d).unwrap(),
        Resolved::Index(d.join("model.safetensors.index.json"))
    );
    std::fs::write(d.join("other.safetensors.index.json"), "{}").unwrap();
    let e = sharded::resolve(d).unwrap_err().to_string();
    assert!(e.contains("several index files"), "{e}");
    // a shard-like name without an index naming it is just a file
    let lone = d.join("x-00001-of-00002.safetensors");
    std::fs::write(&lone, [0]).unwrap();
    assert_eq!(
        sharded::resolve(&lone).unwrap(),
        Resolved::File(lone.clone())
    );
    // a missing path is an error naming it
    let e = sharded::resolve(&d.join("nope")).unwrap_err().to_string();
    assert!(e.contains("nope"), "{e}");
}

#[test]
fn sizes_parse() {
    assert_eq!(parse_size("500KB"), Ok(500_000));
    assert_eq!(parse_size("5GB"), Ok(5_000_000_000));
    assert_eq!(parse_size("10MiB"), Ok(10 * 1024 * 1024));
    assert_eq!(parse_size("2gib"), Ok(2 << 30));
    assert_eq!(parse_size("12345"), Ok(12345));
    assert!(parse_size("5 parsecs").is_err());
}

/// `--max-shard-size` with a file path as the output: the shards are named after that file, beside it (one rule
/// with the single-file output: `o.bin` → `o-00001-of-0000n.bin` + `o.bin.index.json`), and read back through the
/// index, the directory, or any shard.
#[test]
fn a_file_output_names_its_shards() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in.safetensors");
    write_checkpoint(
        OutputFormat::Safetensors,
        &input,
        &model(),
        &WriteOptions::default(),
    )
    .unwrap();
    let out_dir = tmp.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_convert-weight"))
        .arg("--input_path")
        .arg(&input)
        .arg("--output_path")
        .arg(out_dir.join("o.bin"))
        .args(["--max-shard-size", "500"])
        .status()
        .unwrap();
    assert!(status.success());
    let names = names_in(&out_dir);
    assert!(
        names.len() >= 3,
        "expected several shards and an index: {names:?}"
    );
    let n = names.len() - 1;
    for (k, name) in names.iter().take(n).enumerate() {
        assert_eq!(*name, format!("o-{:05}-of-{n:05}.bin", k + 1));
    }
    assert_eq!(names[n], "o.bin.index.json");
    for entry in [out_dir.join("o.bin.index.json"), out_dir.clone()] {
        assert_same_tensor_set(
            &model(),
            &formats::open_model(&entry).unwrap(),
            "o.bin shards",
        );
    }
}

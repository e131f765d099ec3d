//! torch reader/writer against the golden fixtures, round trips through our writer, and hostile inputs.

use std::path::{Path, PathBuf};

use convert_weight::formats::torch::{read_legacy, read_zip, writer};
use convert_weight::formats::{OutTensor, WriteOptions};
use convert_weight::tensor::{Checkpoint, DType, TensorInfo};
use proptest::prelude::*;
use serde_json::Value as Json;
use sha2::{Digest, Sha256};

#[path = "common/fixtures.rs"]
mod locate;
use locate::*;

/// (data file, sidecar) for every torch sidecar.
fn torch_sidecars() -> Vec<(PathBuf, Json)> {
    let mut out = Vec::new();
    for sc in golden_files(".tensors.json") {
        let j: Json = serde_json::from_slice(&std::fs::read(&sc).unwrap()).unwrap();
        if j["format"].as_str().is_some_and(|f| f.starts_with("torch")) {
            let s = sc.to_string_lossy();
            let data = require(PathBuf::from(s.strip_suffix(".tensors.json").unwrap()));
            out.push((data, j));
        }
    }
    out
}

fn read(path: &Path, format: &str) -> Checkpoint {
    let r = match format {
        "torch_zip" => read_zip(path),
        "torch_legacy_pickle" => read_legacy(path),
        f => panic!("unknown format {f}"),
    };
    r.unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn sha(b: &[u8]) -> String {
    let d = Sha256::digest(b);
    d.iter().map(|x| format!("{x:02x}")).collect()
}

/// (name, dtype, shape, sha256) of every tensor, in order.
fn summary(ck: &Checkpoint) -> Vec<(String, String, Vec<usize>, String)> {
    ck.tensors
        .iter()
        .map(|t| {
            let b = t.data.bytes();
            assert_eq!(b.len(), t.info.nbytes(), "{}", t.info.name);
            (
                t.info.name.clone(),
                t.info.dtype.name().to_string(),
                t.info.shape.clone(),
                sha(&b),
            )
        })
        .collect()
}

#[test]
fn every_torch_fixture_reads_as_its_sidecar() {
    let cases = torch_sidecars();
    for (path, j) in &cases {
        let format = j["format"].as_str().unwrap();
        let ck = read(path, format);
        assert_eq!(ck.format, format);
        assert_eq!(ck.files, vec![path.clone()]);
        let want: Vec<(String, String, Vec<usize>, String)> = j["tensors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                (
                    t["name"].as_str().unwrap().to_string(),
                    t["dtype"].as_str().unwrap().to_string(),
                    t["shape"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|d| d.as_u64().unwrap() as usize)
                        .collect(),
                    t["sha256"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        assert_eq!(summary(&ck), want, "{}", path.display());
        // Tied names: every group's later members are tied to an earlier member with the same view.
        for group in j["shared_storage_groups"].as_array().unwrap() {
            let names: Vec<&str> = group
                .as_array()
                .unwrap()
                .iter()
                .map(|n| n.as_str().unwrap())
                .collect();
            let idx: Vec<usize> = names
                .iter()
                .map(|n| ck.tensors.iter().position(|t| t.info.name == *n).unwrap())
                .collect();
            let first = idx[0];
            for &i in &idx[1..] {
                assert_eq!(
                    ck.tensors[i].tied_to,
                    Some(first),
                    "{}: {}",
                    path.display(),
                    ck.tensors[i].info.name
                );
            }
        }
        let tied = ck.tensors.iter().filter(|t| t.tied_to.is_some()).count();
        let grouped: usize = j["shared_storage_groups"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| g.as_array().unwrap().len() - 1)
            .sum();
        assert_eq!(tied, grouped, "{}", path.display());
    }
    checked(
        "torch fixtures against their sidecars",
        cases.len(),
        TORCH_FILES,
    );
}

#[test]
fn wrapper_dict_fixture_descends_into_model() {
    let ck = read_zip(&fixture("blip2/fp16/torch/blip2_pretrained.pth")).unwrap();
    assert!(ck.find("query_tokens").is_some());
    assert!(ck
        .tensors
        .iter()
        .all(|t| !t.info.name.starts_with("model.")));
}

fn write_checkpoint(path: &Path, ck: &Checkpoint) {
    let decl: Vec<OutTensor> = ck
        .tensors
        .iter()
        .map(|t| OutTensor {
            info: t.info.clone(),
            tied_to: t.tied_to,
        })
        .collect();
    let mut w = writer(path, &decl, &WriteOptions::default()).unwrap();
    for i in w.order() {
        w.write(i, &ck.tensors[i].data.bytes()).unwrap();
    }
    assert_eq!(w.finish().unwrap(), vec![path.to_path_buf()]);
}

#[test]
fn writer_round_trips_every_fixture() {
    let dir = tempfile::tempdir().unwrap();
    for (n, (path, j)) in torch_sidecars().iter().enumerate() {
        let ck = read(path, j["format"].as_str().unwrap());
        let out = dir.path().join(format!("rt{n}.bin"));
        write_checkpoint(&out, &ck);
        let back = read_zip(&out).unwrap();
        assert_eq!(back.format, "torch_zip");
        assert_eq!(summary(&back), summary(&ck), "{}", path.display());
        let ties: Vec<_> = ck.tensors.iter().map(|t| t.tied_to).collect();
        let back_ties: Vec<_> = back.tensors.iter().map(|t| t.tied_to).collect();
        assert_eq!(back_ties, ties, "{}", path.display());
        // Tied tensors share one storage record: the written file holds one data entry per untied tensor.
        let z = zip_names(&out);
        let stem = format!("rt{n}");
        let data_entries = z
            .iter()
            .filter(|e| e.starts_with(&format!("{stem}/data/")))
            .count();
        assert_eq!(data_entries, ties.iter().filter(|t| t.is_none()).count());
        assert_eq!(
            z.first().map(String::as_str),
            Some(format!("{stem}/data.pkl").as_str())
        );
        assert!(z.contains(&format!("{stem}/version")) && z.contains(&format!("{stem}/byteorder")));
        assert!(!z
            .iter()
            .any(|e| e.contains(".format_version") || e.contains(".storage_alignment")));
    }
}

/// Entry names of a zip, in directory order (read with the zip crate directly).
fn zip_names(path: &Path) -> Vec<String> {
    let f = std::fs::File::open(path).unwrap();
    let z = zip::ZipArchive::new(f).unwrap();
    z.file_names_raw()
        .map(|n| String::from_utf8_lossy(n).into_owned())
        .collect()
}

#[test]
fn written_entries_are_stored_and_aligned() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("aligned.pt");
    let decl = vec![
        OutTensor {
            info: TensorInfo::new("a", DType::F32, vec![3, 5]),
            tied_to: None,
        },
        OutTensor {
            info: TensorInfo::new("b", DType::U16, vec![7]),
            tied_to: None,
        },
        OutTensor {
            info: TensorInfo::new("c", DType::F32, vec![3, 5]),
            tied_to: Some(0),
        },
    ];
    let mut w = writer(&p, &decl, &WriteOptions::default()).unwrap();
    assert_eq!(w.order(), vec![0, 1]);
    // wrong index, wrong length
    assert!(w.write(1, &[0; 14]).is_err());
    assert!(w.write(0, &[0; 59]).is_err());
    w.write(0, &[1; 60]).unwrap();
    w.write(1, &[2; 14]).unwrap();
    assert!(w.write(2, &[1; 60]).is_err());
    w.finish().unwrap();
    let f = std::fs::File::open(&p).unwrap();
    let mut z = zip::ZipArchive::new(f).unwrap();
    for i in 0..z.len() {
        let e = z.by_index_raw(i).unwrap();
        assert_eq!(e.compression(), zip::CompressionMethod::Stored);
        assert_eq!(e.data_start().unwrap() % 64, 0, "{}", e.name().unwrap());
    }
    let ck = read_zip(&p).unwrap();
    assert_eq!(ck.tensors[2].tied_to, Some(0));
    assert_eq!(&*ck.tensors[1].data.bytes(), &[2; 14]);
    let names = zip_names(&p);
    assert_eq!(
        names,
        [
            "aligned/data.pkl",
            "aligned/byteorder",
            "aligned/data/0",
            "aligned/data/1",
            "aligned/version"
        ]
    );
}

#[test]
fn dropped_or_unfinished_writer_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("gone.bin");
    let decl = vec![OutTensor {
        info: TensorInfo::new("a", DType::I8, vec![2]),
        tied_to: None,
    }];
    let mut w = writer(&p, &decl, &WriteOptions::default()).unwrap();
    w.write(0, &[1, 2]).unwrap();
    drop(w);
    let w = writer(&p, &decl, &WriteOptions::default()).unwrap();
    assert!(w.finish().is_err());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn writer_refuses_bad_declarations() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.bin");
    let t = |n: &str, tied| OutTensor {
        info: TensorInfo::new(n, DType::F32, vec![2]),
        tied_to: tied,
    };
    assert!(writer(&p, &[t("a", None), t("a", None)], &WriteOptions::default()).is_err());
    assert!(writer(&p, &[t("a", Some(0))], &WriteOptions::default()).is_err());
    assert!(writer(
        &p,
        &[t("a", Some(1)), t("b", None)],
        &WriteOptions::default()
    )
    .is_err());
    let mut other = t("b", Some(0));
    other.info.shape = vec![3];
    assert!(writer(&p, &[t("a", None), other], &WriteOptions::default()).is_err());
}

#[test]
fn truncated_files_error_without_panic() {
    let root = fixtures();
    let dir = tempfile::tempdir().unwrap();
    for (name, legacy) in [
        ("edge/torch_dtypes.bin", false),
        ("edge/torch_tied.bin", false),
        ("edge/torch_legacy.bin", true),
    ] {
        let full = std::fs::read(require(root.join(name))).unwrap();
        let mut cuts: Vec<usize> = (0..full.len()).step_by(37).collect();
        cuts.extend([1, 14, 15, full.len() / 2, full.len() - 1, full.len() - 22]);
        for cut in cuts {
            let p = dir.path().join("cut.bin");
            std::fs::write(&p, &full[..cut]).unwrap();
            let r = if legacy {
                read_legacy(&p)
            } else {
                read_zip(&p)
            };
            let e = r
                .err()
                .unwrap_or_else(|| panic!("{name} cut at {cut} read without error"));
            assert!(e.to_string().contains("cut.bin"), "{e}");
        }
    }
}

fn dtype_strategy() -> impl Strategy<Value = DType> {
    prop::sample::select(DType::ALL.to_vec())
}

fn tensor_strategy() -> impl Strategy<Value = (String, DType, Vec<usize>, u64)> {
    (
        "[a-z\u{e9}\u{4e2d}\u{1f600}._]{1,12}",
        dtype_strategy(),
        prop::collection::vec(0usize..5, 0..4),
        any::<u64>(),
    )
}

fn fill(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn random_tensors_round_trip(specs in prop::collection::vec(tensor_strategy(), 0..12), tie in any::<bool>()) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("prop.pth");
        let mut decl = Vec::new();
        let mut data = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for (name, dtype, shape, seed) in specs {
            if !seen.insert(name.clone()) { continue; }
            let info = TensorInfo::new(name, dtype, shape);
            data.push(fill(info.nbytes(), seed));
            decl.push(OutTensor { info, tied_to: None });
        }
        if tie && !decl.is_empty() && !seen.contains(&format!("{}.tied", decl[0].info.name)) {
            let mut t = decl[0].clone();
            t.info.name = format!("{}.tied", t.info.name);
            t.tied_to = Some(0);
            data.push(data[0].clone());
            decl.push(t);
        }
        let mut w = writer(&p, &decl, &WriteOptions::default()).unwrap();
        for i in w.order() {
            w.write(i, &data[i]).unwrap();
        }
        w.finish().unwrap();
        let ck = read_zip(&p).unwrap();
        prop_assert_eq!(ck.tensors.len(), decl.len());
        for (i, (t, d)) in ck.tensors.iter().zip(&decl).enumerate() {
            prop_assert_eq!(&t.info, &d.info);
            prop_assert_eq!(&*t.data.bytes(), &data[i][..]);
            prop_assert_eq!(t.tied_to, d.tied_to);
        }
    }
}

/// Writes a sample file for manual inspection when `TORCH_SAMPLE_OUT` is set (used to check the pickle with
/// Python's `pickletools`; never needed by the suite).
#[test]
fn sample_file_for_manual_inspection() {
    let Ok(out) = std::env::var("TORCH_SAMPLE_OUT") else {
        return;
    };
    let dtypes = DType::ALL;
    let mut decl: Vec<OutTensor> = dtypes
        .iter()
        .enumerate()
        .map(|(i, &d)| OutTensor {
            info: TensorInfo::new(format!("t{i}.{d}"), d, vec![2, 3, 1, 2]),
            tied_to: None,
        })
        .collect();
    decl.push(OutTensor {
        info: TensorInfo::new("scalar", DType::F32, vec![]),
        tied_to: None,
    });
    decl.push(OutTensor {
        info: TensorInfo::new("empty", DType::F32, vec![0, 4]),
        tied_to: None,
    });
    decl.push(OutTensor {
        info: TensorInfo::new("tied", DType::F64, vec![2, 3, 1, 2]),
        tied_to: Some(0),
    });
    let mut w = writer(Path::new(&out), &decl, &WriteOptions::default()).unwrap();
    for i in w.order() {
        w.write(i, &fill(decl[i].info.nbytes(), i as u64)).unwrap();
    }
    w.finish().unwrap();
}

#[test]
fn many_tensors_span_several_setitems_batches() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("many.bin");
    let n = 5000;
    let decl: Vec<OutTensor> = (0..n)
        .map(|i| OutTensor {
            info: TensorInfo::new(format!("layers.{i}.w"), DType::BF16, vec![i % 3, 2]),
            tied_to: if i % 10 == 9 { Some(i - 1) } else { None },
        })
        .map(|mut t| {
            if let Some(j) = t.tied_to {
                t.info.shape = vec![j % 3, 2];
            }
            t
        })
        .collect();
    let t0 = std::time::Instant::now();
    let mut w = writer(&p, &decl, &WriteOptions::default()).unwrap();
    for i in w.order() {
        w.write(i, &fill(decl[i].info.nbytes(), i as u64)).unwrap();
    }
    w.finish().unwrap();
    let ck = read_zip(&p).unwrap();
    eprintln!("{n} tensors written and read in {:?}", t0.elapsed());
    assert_eq!(ck.tensors.len(), n);
    for (t, d) in ck.tensors.iter().zip(&decl) {
        assert_eq!(t.info, d.info);
        assert_eq!(t.tied_to, d.tied_to);
    }
}

/// Throughput probe, run on demand: `TORCH_BIG_MIB=1024 cargo test --test torch_format big -- --nocapture`.
#[test]
fn big_file_throughput_probe() {
    let Some(mib) = std::env::var("TORCH_BIG_MIB")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("big.bin");
    let n = mib << 20;
    let mut data = vec![0xA5u8; n];
    for (i, b) in fill(4096, 5).into_iter().enumerate() {
        data[i * (n / 4096)] = b;
    }
    if let Some(last) = data.last_mut() {
        *last = 0x5A;
    }
    let decl = vec![OutTensor {
        info: TensorInfo::new("w", DType::U8, vec![n]),
        tied_to: None,
    }];
    let t0 = std::time::Instant::now();
    let mut w = writer(&p, &decl, &WriteOptions::default()).unwrap();
    w.write(0, &data).unwrap();
    w.finish().unwrap();
    let tw = t0.elapsed();
    let t1 = std::time::Instant::now();
    let ck = read_zip(&p).unwrap();
    let b = ck.tensors[0].data.bytes();
    assert!(matches!(b, std::borrow::Cow::Borrowed(_)));
    assert_eq!(&b[..], &data[..]);
    eprintln!("{mib} MiB: write {tw:?}, read+compare {:?}", t1.elapsed());
}

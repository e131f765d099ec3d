//! Distributed checkpoints (issue 11): our merge equals MindSpore's own (`transform_checkpoints`) bit for bit on
//! fixtures made by `tools/make-distributed-fixtures.py` (1, 2, 4, 8 ranks; tensor, pipeline and optimizer
//! sharding; replicated parameters), MindFormers 2.x layouts merge to the source, the conversion pipeline reads them
//! unchanged (straight to HF for llama), and bad inputs fail with one line naming the files, writing nothing.

use std::path::{Path, PathBuf};
use std::process::Command;

use convert_weight::formats::distributed::{self, Options};
use convert_weight::tensor::Checkpoint;
use serde_json::Value;

mod common;

/// `tests/fixtures/distributed/` (made by tools/make-distributed-fixtures.py); missing is a failure naming it.
fn fixtures() -> PathBuf {
    let p = common::fixture("distributed");
    common::require(p.join("provenance.json"));
    p
}

const MS_CASES: &[&str] = &["ms_r1", "ms_tp2", "ms_dp2_tp2_opt", "ms_pp2_dp2_tp2_opt"];

/// (name, dtype, shape, sha256) rows, sorted by name (the shared sidecar form).
type Row = common::T;

fn rows_of_json(path: &Path) -> Vec<Row> {
    common::sorted(common::tensors_of(&common::read_json(path)))
}

fn rows_of(ck: &Checkpoint) -> Vec<Row> {
    common::tensors_of_checkpoint(ck)
}

fn is_optimizer(name: &str) -> bool {
    distributed::optimizer_rule(name).is_some()
}

fn keep() -> Options {
    Options {
        keep_optimizer: true,
        ..Options::default()
    }
}

#[test]
fn mindspore_merge_equals_the_frameworks_bit_for_bit() {
    let dir = fixtures();
    let mut n = 0;
    for case in MS_CASES {
        let root = dir.join(case);
        let want = rows_of_json(&root.join("framework_merge.tensors.json"));
        let got = rows_of(&distributed::open(&root, &keep()).unwrap());
        assert_eq!(
            got, want,
            "{case}: our merge differs from transform_checkpoints'"
        );
        // default: optimizer state dropped by named rules, and listed
        let ck = distributed::open(&root, &Options::default()).unwrap();
        let want_model: Vec<Row> = want
            .iter()
            .filter(|r| !is_optimizer(&r.name))
            .cloned()
            .collect();
        assert_eq!(rows_of(&ck), want_model, "{case}: without optimizer state");
        assert!(ck.others.iter().any(|o| o.name == "global_step"));
        // The strategy file is an input of the job (fingerprints see an edit to it), not `__metadata__` that an
        // output would carry or warn about.
        assert!(ck.metadata.is_empty(), "{case}: metadata {:?}", ck.metadata);
        assert!(
            ck.files
                .iter()
                .any(|f| f.to_string_lossy().contains("strategy")),
            "{case}: the strategy is not among the input files {:?}",
            ck.files
        );
        n += 1;
    }
    eprintln!("{n} MindSpore distributed fixtures checked");
    assert!(n > 0);
}

#[test]
fn strategy_folder_and_merged_strategy_file_agree() {
    let root = fixtures().join("ms_pp2_dp2_tp2_opt");
    let merged = Options {
        keep_optimizer: true,
        strategy: Some(root.join("merged_layout.ckpt")),
    };
    assert_eq!(
        rows_of(&distributed::open(&root, &merged).unwrap()),
        rows_of(&distributed::open(&root, &keep()).unwrap())
    );
}

#[test]
fn mindformers_merge_equals_the_source_from_root_iteration_or_metadata() {
    let root = fixtures().join("mf_tp2_pp2");
    let want = rows_of_json(&root.join("source.tensors.json"));
    let it = root.join("iteration_00000010");
    for p in [root.clone(), it.clone(), it.join("metadata.json")] {
        let ck = distributed::open(&p, &Options::default()).unwrap();
        assert_eq!(rows_of(&ck), want, "{}", p.display());
        assert!(ck
            .others
            .iter()
            .any(|o| o.name == "global_step" && o.kind == "common.json"));
    }
}

fn cw(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_convert-weight"))
        .args(args)
        .output()
        .expect("convert-weight runs")
}

fn inspect_rows(path: &Path) -> Vec<Row> {
    common::sorted(common::inspect(path))
}

#[test]
fn the_convert_pipeline_merges_ranks_into_one_file_and_shards() {
    let root = fixtures().join("ms_pp2_dp2_tp2_opt");
    let want: Vec<Row> = rows_of_json(&root.join("framework_merge.tensors.json"))
        .into_iter()
        .filter(|r| !is_optimizer(&r.name))
        .collect();
    let out = tempfile::tempdir().unwrap();
    let single = out.path().join("merged.safetensors");
    let o = cw(&[
        "--input_path",
        root.to_str().unwrap(),
        "--output_path",
        single.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(inspect_rows(&single), want);
    let sharded = out.path().join("shards");
    std::fs::create_dir(&sharded).unwrap();
    let o = cw(&[
        "--input_path",
        root.to_str().unwrap(),
        "--output_path",
        sharded.to_str().unwrap(),
        "--max-shard-size",
        "20KB",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(inspect_rows(&sharded), want);
    // inspect's table names ranks and files
    let o = cw(&["inspect", root.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("8 rank(s)"), "{text}");
}

#[test]
fn straight_to_hf_for_llama() {
    let dir = fixtures();
    let want = rows_of_json(&dir.join("source/llama_hf_reference.tensors.json"));
    let mut n = 0;
    for case in ["ms_tp2", "ms_pp2_dp2_tp2_opt", "mf_tp2_pp2"] {
        let out = tempfile::tempdir().unwrap();
        let dst = out.path().join("pytorch_model.bin");
        let o = cw(&[
            "--model",
            "llama",
            "--reversed",
            "--input_path",
            dir.join(case).to_str().unwrap(),
            "--output_path",
            dst.to_str().unwrap(),
        ]);
        assert!(
            o.status.success(),
            "{case}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert_eq!(inspect_rows(&dst), want, "{case}: straight to HF");
        n += 1;
    }
    eprintln!("{n} distributed checkpoints converted straight to HF llama");
}

// ---- bad input: one line naming the files, nothing written ----

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let p = e.path();
        let t = to.join(e.file_name());
        if p.is_dir() {
            copy_dir(&p, &t);
        } else {
            std::fs::copy(&p, &t).unwrap();
            let mut perm = std::fs::metadata(&t).unwrap().permissions();
            #[allow(clippy::permissions_set_readonly_false)]
            perm.set_readonly(false);
            std::fs::set_permissions(&t, perm).unwrap();
        }
    }
}

/// Copy a fixture case into a temp dir, mutate it, and expect the conversion to fail with one line containing
/// every `needles` and no output.
fn refuses(case: &str, what: &str, mutate: impl FnOnce(&Path), needles: &[&str]) {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join(case);
    copy_dir(&fixtures().join(case), &root);
    mutate(&root);
    let out = tmp.path().join("out");
    let dst = out.join("merged.safetensors");
    let o = cw(&[
        "--input_path",
        root.to_str().unwrap(),
        "--output_path",
        dst.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{what}: accepted");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{what}: not one line: {err}");
    for n in needles {
        assert!(err.contains(n), "{what}: message lacks '{n}': {err}");
    }
    let written = out.is_dir() && std::fs::read_dir(&out).unwrap().next().is_some();
    assert!(!written, "{what}: something was written");
    // the library says the same
    assert!(
        distributed::open(&root, &Options::default()).is_err(),
        "{what}"
    );
}

fn edit_metadata(root: &Path, f: impl FnOnce(&mut Value)) {
    let p = root.join("iteration_00000010/metadata.json");
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(&p, v.to_string()).unwrap();
}

/// Rewrite one tensor of a safetensors rank file (dtype and raw bytes of the new tensor given).
fn rewrite_safetensors(
    file: &Path,
    name: &str,
    dtype: safetensors::Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
) {
    let bytes = std::fs::read(file).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut owned: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, v.dtype(), v.shape().to_vec(), v.data().to_vec()))
        .collect();
    for t in owned.iter_mut() {
        if t.0 == name {
            *t = (name.to_string(), dtype, shape.clone(), data.clone());
        }
    }
    let views: Vec<(String, safetensors::tensor::TensorView)> = owned
        .iter()
        .map(|(n, d, s, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
            )
        })
        .collect();
    let out = safetensors::serialize(views, None).unwrap();
    std::fs::write(file, out).unwrap();
}

#[test]
fn bad_inputs_fail_with_one_line_and_write_nothing() {
    let mut n = 0;
    refuses(
        "ms_dp2_tp2_opt",
        "missing rank folder",
        |r| std::fs::remove_dir_all(r.join("rank_2")).unwrap(),
        &["rank_2", "missing"],
    );
    n += 1;
    refuses(
        "ms_dp2_tp2_opt",
        "missing rank file",
        |r| std::fs::remove_file(r.join("rank_1/checkpoint_1.safetensors")).unwrap(),
        &["rank_1", "no .ckpt or .safetensors"],
    );
    n += 1;
    refuses(
        "ms_dp2_tp2_opt",
        "device count differs from the ranks present",
        |r| {
            std::fs::remove_dir_all(r.join("rank_3")).unwrap();
            std::fs::remove_dir_all(r.join("rank_2")).unwrap();
        },
        &["strategy.ckpt", "4 device(s)", "2 rank folder(s)"],
    );
    n += 1;
    refuses(
        "ms_dp2_tp2_opt",
        "dtype disagreement between ranks",
        |r| {
            let f = r.join("rank_1/checkpoint_1.safetensors");
            // the wq slice of rank 1 is [8, 32] f32; make it f16 of the same shape
            rewrite_safetensors(
                &f,
                "model.layers.0.attention.wq.weight",
                safetensors::Dtype::F16,
                vec![8, 32],
                vec![0; 512],
            );
        },
        &[
            "checkpoint_1.safetensors",
            "model.layers.0.attention.wq.weight",
            "dtype F16",
        ],
    );
    n += 1;
    refuses(
        "ms_dp2_tp2_opt",
        "global shape disagreement between ranks",
        |r| {
            let f = r.join("rank_3/checkpoint_3.safetensors");
            rewrite_safetensors(
                &f,
                "model.layers.1.attention.wo.weight",
                safetensors::Dtype::F32,
                vec![8, 8],
                vec![0; 256],
            );
        },
        &[
            "checkpoint_3.safetensors",
            "model.layers.1.attention.wo.weight",
            "global shape",
        ],
    );
    n += 1;
    refuses(
        "mf_tp2_pp2",
        "metadata.json names a missing file",
        |r| {
            std::fs::remove_file(r.join("iteration_00000010/model-0000003-0000004.safetensors"))
                .unwrap()
        },
        &[
            "metadata.json",
            "model-0000003-0000004.safetensors",
            "missing",
        ],
    );
    n += 1;
    refuses(
        "mf_tp2_pp2",
        "hole",
        |r| {
            edit_metadata(r, |v| {
                let chunks = v["state_dict_metadata"]["model.layers.1.attention.wq.weight"]
                    ["chunk"]
                    .as_array_mut()
                    .unwrap();
                chunks.pop();
            })
        },
        &[
            "metadata.json",
            "model.layers.1.attention.wq.weight",
            "hole",
        ],
    );
    n += 1;
    refuses(
        "mf_tp2_pp2",
        "overlap with different bytes",
        |r| {
            // both halves of wk claim offset 0 for the second chunk's file: move chunk 1 to overlap chunk 0
            edit_metadata(r, |v| {
                let name = "model.layers.0.attention.wk.weight";
                let key_old = format!("('{name}', (16, 0))");
                let key_new = format!("('{name}', (8, 0))");
                let c = &mut v["state_dict_metadata"][name]["chunk"][1];
                c["global_offset"] = serde_json::json!([8, 0]);
                let entry = v["storage_data"][&key_old].take();
                v["storage_data"][&key_new] = entry;
            })
        },
        &[
            "model.layers.0.attention.wk.weight",
            "overlaps",
            "different bytes",
        ],
    );
    n += 1;
    eprintln!("{n} bad distributed inputs refused");
}

// ---- splitting ----

#[test]
fn split_by_a_strategy_reads_back_to_the_source() {
    use convert_weight::formats::strategy::Strategy;
    use convert_weight::formats::{distributed::split, open_file, OutputFormat};
    let dir = fixtures();
    let source = open_file(&dir.join("source/llama.ckpt")).unwrap();
    let want = rows_of(&source);
    let mut n = 0;
    for (case, strategy, fmt) in [
        ("ms_tp2", "strategy.ckpt", OutputFormat::Ckpt),
        ("ms_dp2_tp2_opt", "strategy.ckpt", OutputFormat::Safetensors),
        ("ms_pp2_dp2_tp2_opt", "strategy", OutputFormat::Ckpt),
    ] {
        let st = Strategy::read(&dir.join(case).join(strategy)).unwrap();
        let plan = split::plan_mindspore(&source, &st, fmt).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("split");
        split::write(&source, &plan, &out, &[]).unwrap();
        let back = distributed::open(&out, &Options::default()).unwrap();
        assert_eq!(rows_of(&back), want, "{case}: split then merged");
        n += 1;
    }
    eprintln!("{n} strategy splits round-tripped");
}

#[test]
fn split_into_a_mindformers_layout_reads_back_to_the_source() {
    use convert_weight::formats::{distributed::split, open_file};
    let dir = fixtures();
    let source = open_file(&dir.join("source/llama.ckpt")).unwrap();
    let want = rows_of(&source);
    // llama (MindSpore names): column-parallel wq/wk/wv/w1/w3/embedding/lm_head, row-parallel wo/w2
    let place = |t: &convert_weight::tensor::TensorInfo| {
        let n = &t.name;
        let col = [
            "wq.",
            "wk.",
            "wv.",
            "w1.",
            "w3.",
            "embedding_weight",
            "lm_head",
        ];
        split::Placement {
            stage: usize::from(
                n.contains("layers.1.") || n.contains("norm_out") || n.contains("lm_head"),
            ),
            tp_axis: if col.iter().any(|c| n.contains(c)) {
                Some(0)
            } else if n.contains("wo.") || n.contains("w2.") {
                Some(1)
            } else {
                None
            },
            ep_axis: None,
        }
    };
    let layout = split::MfLayout {
        tp: 2,
        pp: 2,
        ep: 1,
        iteration: 7,
    };
    let plan = split::plan_mindformers(&source, layout, &place).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("mf");
    split::write(&source, &plan, &out, &[("format".into(), "ms".into())]).unwrap();
    assert!(out.join("latest_checkpointed_iteration.txt").is_file());
    assert!(out.join("iteration_00000007/common.json").is_file());
    let back = distributed::open(&out, &Options::default()).unwrap();
    assert_eq!(rows_of(&back), want);
}

#[test]
fn hundreds_of_ranks_merge_under_a_small_descriptor_limit() {
    use convert_weight::formats::distributed::split;
    use convert_weight::formats::strategy::*;
    use convert_weight::formats::OutputFormat;
    use convert_weight::tensor::{Backing, DType, DataRef, TensorEntry, TensorInfo};
    use prost::Message;
    const RANKS: u32 = 300;
    let tmp = tempfile::tempdir().unwrap();
    // one [600, 3] f32 tensor cut over 300 ranks on axis 0, and a replicated [5] one
    let mk = |name: &str, shape: Vec<usize>, seed: u8| {
        let info = TensorInfo::new(name, DType::F32, shape);
        let data: Vec<u8> = (0..info.nbytes())
            .map(|k| (k as u8).wrapping_mul(31).wrapping_add(seed))
            .collect();
        let len = data.len();
        TensorEntry {
            info,
            data: DataRef::Contiguous {
                backing: Backing::owned(data),
                range: 0..len,
            },
            tied_to: None,
        }
    };
    let source = convert_weight::tensor::Checkpoint {
        format: "test".into(),
        tensors: vec![mk("w", vec![600, 3], 1), mk("norm", vec![5], 2)],
        ..Default::default()
    };
    let layout = |map: Vec<i32>| ParallelLayouts {
        dev_matrix: vec![DevMatrix { dim: vec![RANKS] }],
        tensor_map: vec![TensorMap { dim: map }],
        param_split_shape: vec![],
        indices_offset: vec![],
        field: 0,
        opt_weight_shard_step: 0,
        opt_weight_shard_size: 0,
    };
    let map = ParallelStrategyMap {
        current_stage: 0,
        parallel_strategy_item: vec![],
        parallel_layout_item: vec![
            ParallelLayoutItem {
                param_name: "w".into(),
                parallel_layouts: layout(vec![0, -1]),
            },
            ParallelLayoutItem {
                param_name: "norm".into(),
                parallel_layouts: layout(vec![-1]),
            },
        ],
    };
    let sfile = tmp.path().join("strategy.ckpt");
    std::fs::write(&sfile, map.encode_to_vec()).unwrap();
    let st = Strategy::read(&sfile).unwrap();
    let root = tmp.path().join("ranks");
    let plan = split::plan_mindspore(&source, &st, OutputFormat::Safetensors).unwrap();
    split::write(&source, &plan, &root, &[]).unwrap();
    let out = tmp.path().join("merged.safetensors");
    let o = Command::new("sh")
        .arg("-c")
        .arg("ulimit -n 32 && exec \"$0\" --input_path \"$1\" --output_path \"$2\"")
        .arg(env!("CARGO_BIN_EXE_convert-weight"))
        .arg(&root)
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(inspect_rows(&out), rows_of(&source));
}

/// Sidecar rows of an mcore fixture (tests/fixtures/mcore/...).
fn mcore(rel: &str) -> PathBuf {
    common::fixture(&format!("mcore/{rel}"))
}

#[test]
fn mcore_checkpoints_split_by_tp_pp_ep_and_merge_back() {
    use convert_weight::formats::{distributed::split, open_file};
    let mut n = 0;
    for (variant, layers) in [("qwen3_moe/bf16", 2usize), ("qwen3/f16_tied", 2)] {
        let src = mcore(&format!("{variant}/ms/expected.safetensors"));
        let source = open_file(&src).unwrap();
        let want = rows_of_json(&mcore(&format!(
            "{variant}/ms/expected.safetensors.tensors.json"
        )));
        assert_eq!(rows_of(&source), want, "{variant}: sidecar");
        let layout = split::MfLayout {
            tp: 2,
            pp: 2,
            ep: 2,
            iteration: 3,
        };
        let place = split::mcore_placement(layers, 2);
        let plan = split::plan_mindformers(&source, layout, &place).unwrap();
        assert_eq!(plan.files.len(), 8);
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("mf");
        split::write(&source, &plan, &out, &[("format".into(), "ms".into())]).unwrap();
        let back = distributed::open(&out, &Options::default()).unwrap();
        assert_eq!(
            rows_of(&back),
            want,
            "{variant}: split by tp/pp/ep, merged back"
        );
        n += 1;
    }
    eprintln!("{n} mcore checkpoints split and merged back");
}

/// Straight to HF from a MindFormers 2.x layout (tp2/pp2/ep2) of qwen3 / qwen3_moe equals the reference's reverse.
#[test]
fn straight_to_hf_for_qwen3_and_qwen3_moe() {
    use convert_weight::formats::{distributed::split, open_file};
    for (model, variant) in [("qwen3_moe", "qwen3_moe/bf16"), ("qwen3", "qwen3/f16_tied")] {
        let source = open_file(&mcore(&format!("{variant}/ms/expected.safetensors"))).unwrap();
        let layout = split::MfLayout {
            tp: 2,
            pp: 2,
            ep: 2,
            iteration: 3,
        };
        let plan = split::plan_mindformers(&source, layout, &split::mcore_placement(2, 2)).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("mf");
        split::write(&source, &plan, &root, &[("format".into(), "ms".into())]).unwrap();
        std::fs::copy(
            mcore(&format!("{variant}/hf/config.json")),
            root.join("config.json"),
        )
        .unwrap();
        let dst = tmp.path().join("hf/model.safetensors");
        let o = cw(&[
            "--model",
            model,
            "--reversed",
            "--input_path",
            root.to_str().unwrap(),
            "--output_path",
            dst.to_str().unwrap(),
        ]);
        assert!(
            o.status.success(),
            "{model}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let want = rows_of_json(&mcore(&format!(
            "{variant}/reversed/from_expected.safetensors.tensors.json"
        )));
        assert_eq!(inspect_rows(&dst), want, "{model}: straight to HF");
    }
}

// ---- the thin CLI / manifest layer ----

#[test]
fn cli_keep_optimizer_split_and_batch_manifest() {
    let dir = fixtures();
    let tmp = tempfile::tempdir().unwrap();
    // --keep-optimizer keeps Adam moments and global_step (equal to the framework's merge)
    let root = dir.join("ms_dp2_tp2_opt");
    let dst = tmp.path().join("all.safetensors");
    let o = cw(&[
        "--keep-optimizer",
        "--input_path",
        root.to_str().unwrap(),
        "--output_path",
        dst.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        inspect_rows(&dst),
        rows_of_json(&root.join("framework_merge.tensors.json"))
    );

    // split by a per-stage strategy folder and by a MindFormers layout, both read back to the source
    let source = dir.join("source/llama.ckpt");
    let want = rows_of(&convert_weight::formats::open_file(&source).unwrap());
    for (name, extra) in [
        (
            "by-strategy",
            vec!["--strategy", "STRATEGY", "--format", "safetensors"],
        ),
        ("by-layout", vec!["--tp", "2", "--pp", "2"]),
    ] {
        let out = tmp.path().join(name);
        let strategy = dir.join("ms_pp2_dp2_tp2_opt/strategy");
        let mut args = vec!["split", source.to_str().unwrap(), out.to_str().unwrap()];
        args.extend(extra.iter().map(|a| {
            if *a == "STRATEGY" {
                strategy.to_str().unwrap()
            } else {
                a
            }
        }));
        let o = cw(&args);
        assert!(
            o.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let back = distributed::open(&out, &Options::default()).unwrap();
        assert_eq!(rows_of(&back), want, "{name}");
        // a second split into the same (now full) folder is refused, nothing changed
        let o = cw(&args);
        assert!(!o.status.success(), "{name}: overwrote a full folder");
    }

    // convert-batch: keep_optimizer and strategy as manifest keys
    let m = tmp.path().join("m.toml");
    std::fs::write(
        &m,
        format!(
            "[[job]]\ninput = \"{}\"\noutput = \"batch.safetensors\"\nkeep_optimizer = true\nstrategy = \"{}\"\n",
            dir.join("ms_pp2_dp2_tp2_opt").display(),
            dir.join("ms_pp2_dp2_tp2_opt/merged_layout.ckpt").display()
        ),
    )
    .unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_convert-batch"))
        .current_dir(tmp.path())
        .args(["m.toml", "--no-progress"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        inspect_rows(&tmp.path().join("batch.safetensors")),
        rows_of_json(&dir.join("ms_pp2_dp2_tp2_opt/framework_merge.tensors.json"))
    );
}

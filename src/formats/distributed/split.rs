//! The other way: a full checkpoint cut into a distributed layout.
//!
//! - [`plan_mindspore`]: the per-rank slices of a MindSpore strategy (file or per-stage folder); [`write`] puts
//!   them in `rank_N/checkpoint_N.{ckpt,safetensors}` and copies the strategy beside them, which
//!   `mindspore.transform_checkpoints` / `load_distributed_checkpoint` accept.
//! - [`plan_mindformers`]: a MindFormers 2.x layout given as tensor / pipeline / expert parallel sizes and a
//!   placement of each tensor ([`Placement`], from the caller: which axis tensor parallelism cuts, which stage holds
//!   it, which axis stacks experts); [`write`] puts `iteration_NNNNNNNN/model-RRRRRRR-WWWWWWW.safetensors`,
//!   `metadata.json` (mindformers 2.1.0 schema), `common.json` and `latest_checkpointed_iteration.txt`.
//!
//! Everything is planned and checked before a byte is written; the whole output appears at once (written in a
//! temporary folder beside it, renamed at the end), and each slice is cut straight from the source's bytes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use super::mindformers::storage_key;
use crate::formats::strategy::{SliceBox, Strategy};
use crate::formats::{
    ckpt, create_single_writer, temp_prefix, FormatError, OutTensor, OutputFormat, Result,
    WriteOptions,
};
use crate::tensor::{cut_box, numel, Checkpoint, TensorInfo};

/// One output file and the boxes of source tensors it holds (under the source tensor's name).
#[derive(Clone, Debug)]
pub struct FilePlan {
    /// Path relative to the output root.
    pub path: PathBuf,
    /// (index of the source tensor, box).
    pub slices: Vec<(usize, SliceBox)>,
}

/// Everything a split writes.
#[derive(Clone, Debug, Default)]
pub struct SplitPlan {
    pub files: Vec<FilePlan>,
    /// Small files written as they are: (path relative to the root, bytes).
    pub extra: Vec<(PathBuf, Vec<u8>)>,
    /// Rank files' format.
    pub format: Option<OutputFormat>,
}

/// Per-rank slices of `source` for a MindSpore strategy. Tensors without a layout go whole to every rank.
pub fn plan_mindspore(
    source: &Checkpoint,
    strategy: &Strategy,
    format: OutputFormat,
) -> Result<SplitPlan> {
    let ext = match format {
        OutputFormat::Ckpt => "ckpt",
        OutputFormat::Safetensors => "safetensors",
        OutputFormat::Torch => {
            return Err(FormatError::invalid(
                Path::new("rank_0"),
                "MindSpore rank files are .ckpt or .safetensors",
            ))
        }
    };
    let sfile = strategy.files.first().cloned().unwrap_or_default();
    let d = strategy.stage_devices;
    for t in &source.tensors {
        if let Some(l) = strategy.params.get(&t.info.name) {
            let f = l.factors();
            let fits = f.len() == t.info.shape.len()
                && t.info.shape.iter().zip(&f).all(|(s, k)| s % k == 0);
            if !fits {
                return Err(FormatError::tensor(
                    &sfile,
                    &t.info.name,
                    format!(
                        "shape {:?} cannot be cut {:?} ways as the strategy asks",
                        t.info.shape, f
                    ),
                ));
            }
        }
    }
    let mut plan = SplitPlan {
        format: Some(format),
        ..SplitPlan::default()
    };
    for r in 0..strategy.devices() {
        let stage = r / d;
        let mut slices = Vec::new();
        for (i, t) in source.tensors.iter().enumerate() {
            let bx = match strategy.params.get(&t.info.name) {
                Some(l) if !l.stages.contains(&stage) => continue,
                Some(l) => l.slice_of(r % d, &t.info.shape),
                None => SliceBox {
                    offset: vec![0; t.info.shape.len()],
                    shape: t.info.shape.clone(),
                },
            };
            slices.push((i, bx));
        }
        plan.files.push(FilePlan {
            path: PathBuf::from(format!("rank_{r}/checkpoint_{r}.{ext}")),
            slices,
        });
    }
    // the strategy travels with the ranks
    for f in &strategy.files {
        let bytes = std::fs::read(f).map_err(|e| FormatError::io(f, e))?;
        let name = f.file_name().map(PathBuf::from).unwrap_or_default();
        let rel = if strategy.files.len() > 1 {
            Path::new("strategy").join(name)
        } else {
            PathBuf::from("strategy.ckpt")
        };
        plan.extra.push((rel, bytes));
    }
    Ok(plan)
}

/// Where one tensor goes in a MindFormers layout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    /// Pipeline stage holding it.
    pub stage: usize,
    /// Axis cut by tensor parallelism, if any.
    pub tp_axis: Option<usize>,
    /// Axis that stacks experts, cut by expert parallelism, if any.
    pub ep_axis: Option<usize>,
}

/// MindFormers parallel sizes. Ranks are numbered `((stage · ep) + e) · tp + t`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MfLayout {
    pub tp: usize,
    pub pp: usize,
    pub ep: usize,
    /// Iteration number of the folder written.
    pub iteration: u64,
}

/// Plan a MindFormers 2.x split. `place` gives each tensor's placement (model knowledge stays with the caller).
pub fn plan_mindformers(
    source: &Checkpoint,
    layout: MfLayout,
    place: &dyn Fn(&TensorInfo) -> Placement,
) -> Result<SplitPlan> {
    let MfLayout {
        tp,
        pp,
        ep,
        iteration,
    } = layout;
    let root = Path::new("layout");
    if tp == 0 || pp == 0 || ep == 0 {
        return Err(FormatError::invalid(root, "parallel sizes must be ≥ 1"));
    }
    let world = tp * pp * ep;
    let it = PathBuf::from(format!("iteration_{iteration:08}"));
    let file_of = |r: usize| format!("model-{r:07}-{world:07}.safetensors");
    let mut per_rank: Vec<Vec<(usize, SliceBox)>> = vec![Vec::new(); world];
    let mut sdm = serde_json::Map::new();
    let mut storage = serde_json::Map::new();
    for (i, t) in source.tensors.iter().enumerate() {
        let info = &t.info;
        let p = place(info);
        let bad = |m: String| FormatError::tensor(root, &info.name, m);
        if p.stage >= pp {
            return Err(bad(format!("placed in stage {} of {pp}", p.stage)));
        }
        let mut frag = vec![1usize; info.shape.len()];
        for (axis, k) in [(p.tp_axis, tp), (p.ep_axis, ep)] {
            if let Some(a) = axis {
                if a >= info.shape.len() || frag[a] != 1 {
                    return Err(bad(format!(
                        "axis {a} cannot be cut (shape {:?})",
                        info.shape
                    )));
                }
                frag[a] = k;
            }
        }
        if info.shape.iter().zip(&frag).any(|(s, k)| s % k != 0) {
            return Err(bad(format!(
                "shape {:?} cannot be cut {:?} ways",
                info.shape, frag
            )));
        }
        // Each distinct box is stored once, by the lowest rank holding it; rank_group lists all holders.
        let mut boxes: BTreeMap<Vec<usize>, (SliceBox, Vec<usize>)> = BTreeMap::new();
        for e in 0..ep {
            for tt in 0..tp {
                let r = (p.stage * ep + e) * tp + tt;
                let mut offset = vec![0; info.shape.len()];
                let mut shape = info.shape.clone();
                if let Some(a) = p.tp_axis {
                    shape[a] /= tp;
                    offset[a] = tt * shape[a];
                }
                if let Some(a) = p.ep_axis {
                    shape[a] /= ep;
                    offset[a] = e * shape[a];
                }
                boxes
                    .entry(offset.clone())
                    .or_insert_with(|| (SliceBox { offset, shape }, Vec::new()))
                    .1
                    .push(r);
            }
        }
        let mut chunks = Vec::new();
        for (bx, ranks) in boxes.into_values() {
            let owner = ranks[0];
            chunks.push(json!({"global_offset": bx.offset, "local_shape": bx.shape}));
            storage.insert(
                storage_key(&info.name, &bx.offset),
                json!([{"file_name": file_of(owner), "storage_rank": owner, "rank_group": ranks}]),
            );
            per_rank[owner].push((i, bx));
        }
        sdm.insert(
            info.name.clone(),
            json!({
                "properties": {"dtype": ckpt::type_name(info.dtype), "replica_id": 0,
                               "allow_shape_mismatch": false, "allow_to_save": true},
                "global_shape": info.shape,
                "axis_fragmentations": frag,
                "layout": layout_json(&p, tp, ep, &frag),
                "chunk": chunks,
            }),
        );
    }
    let metadata = json!({"state_dict_metadata": sdm, "storage_data": storage});
    let common = json!({"epoch_num": 0, "step_num": 0, "global_step": iteration, "loss_scale": 1.0,
                        "global_batch_size": Value::Null, "consumed_samples": 0, "ckpt_status": 0});
    let mut plan = SplitPlan {
        format: Some(OutputFormat::Safetensors),
        ..SplitPlan::default()
    };
    for (r, slices) in per_rank.into_iter().enumerate() {
        plan.files.push(FilePlan {
            path: it.join(file_of(r)),
            slices,
        });
    }
    plan.extra
        .push((it.join("metadata.json"), metadata.to_string().into_bytes()));
    plan.extra.push((
        it.join("common.json"),
        serde_json::to_string_pretty(&common)
            .unwrap_or_default()
            .into_bytes(),
    ));
    plan.extra.push((
        PathBuf::from(super::mindformers::TRACKER),
        format!("{iteration}\n").into_bytes(),
    ));
    Ok(plan)
}

/// The `layout` of a chunked tensor as MindFormers' loader reads it (`mindspore.Layout.to_dict()`): device matrix
/// `[ep, tp]` over the stage's ranks, tensor map counted from the right (`tp` = 0, `ep` = 1, -1 = not split).
/// `null` for a tensor stored whole.
fn layout_json(p: &Placement, tp: usize, ep: usize, frag: &[usize]) -> Value {
    if frag.iter().all(|&k| k == 1) {
        return Value::Null;
    }
    let map: Vec<i64> = (0..frag.len())
        .map(|a| {
            if p.tp_axis == Some(a) {
                0
            } else if p.ep_axis == Some(a) {
                1
            } else {
                -1
            }
        })
        .collect();
    let first = p.stage * ep * tp;
    let ranks: Vec<usize> = (first..first + ep * tp).collect();
    json!({"device_matrix": [ep, tp], "tensor_map": map, "interleaved_parallel": false,
           "alias_name": ["ep", "tp"], "rank_list": ranks})
}

/// Write a split plan under `out` (which must not exist, or be an empty folder): every file is written in a
/// temporary folder beside `out`, which is renamed into place once complete. Returns the files written.
pub fn write(
    source: &Checkpoint,
    plan: &SplitPlan,
    out: &Path,
    metadata: &[(String, String)],
) -> Result<Vec<PathBuf>> {
    if out.exists() {
        let empty = out.is_dir()
            && std::fs::read_dir(out)
                .map_err(|e| FormatError::io(out, e))?
                .next()
                .is_none();
        if !empty {
            return Err(FormatError::invalid(
                out,
                "output exists and is not an empty folder",
            ));
        }
        std::fs::remove_dir(out).map_err(|e| FormatError::io(out, e))?;
    }
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(|e| FormatError::io(&parent, e))?;
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let prefix = temp_prefix(&name);
    let mut builder = tempfile::Builder::new();
    builder.prefix(&prefix);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        // The mode of a plain `mkdir` (the umask applies), not tempfile's private 0700.
        builder.permissions(std::fs::Permissions::from_mode(0o777));
    }
    let tmp = builder
        .tempdir_in(&parent)
        .map_err(|e| FormatError::io(out, e))?;
    let format = plan.format.unwrap_or(OutputFormat::Safetensors);
    let opts = WriteOptions {
        metadata: metadata.to_vec(),
        ..WriteOptions::default()
    };
    let mut written = Vec::new();
    let mut buf = Vec::new();
    for f in &plan.files {
        let path = tmp.path().join(&f.path);
        let outs: Vec<OutTensor> = f
            .slices
            .iter()
            .map(|(i, bx)| {
                let t = &source.tensors[*i].info;
                OutTensor {
                    info: TensorInfo::new(t.name.clone(), t.dtype, bx.shape.clone()),
                    tied_to: None,
                }
            })
            .collect();
        let mut w = create_single_writer(format, &path, &outs, &opts)?;
        for k in w.order() {
            let (i, bx) = &f.slices[k];
            let t = &source.tensors[*i];
            let whole = t.data.bytes();
            if bx.shape == t.info.shape {
                w.write(k, &whole)?;
                continue;
            }
            let elem = t.info.dtype.size();
            buf.clear();
            buf.resize(numel(&bx.shape).unwrap_or(0) * elem, 0);
            cut_box(&whole, &t.info.shape, elem, &bx.offset, &bx.shape, &mut buf);
            w.write(k, &buf)?;
        }
        w.finish()?;
        written.push(out.join(&f.path));
    }
    for (rel, bytes) in &plan.extra {
        let path = tmp.path().join(rel);
        crate::fsio::write_atomic(&path, bytes).map_err(|e| FormatError::io(&path, e.source))?;
        written.push(out.join(rel));
    }
    let kept = tmp.keep();
    std::fs::rename(&kept, out).map_err(|e| {
        let _ = std::fs::remove_dir_all(&kept);
        FormatError::io(out, e)
    })?;
    crate::fsio::sync_dir(&parent).map_err(|e| FormatError::io(&parent, e.source))?;
    Ok(written)
}

/// A default placement for MindFormers 2.x (mcore) names: `decoder.layers.{i}.` split evenly over the stages,
/// embeddings before and the output layer/final norm after them; column-parallel weights (`linear_qkv`,
/// `linear_fc1`, `word_embeddings`, `output_layer`) cut on axis 0, row-parallel ones (`linear_proj`,
/// `linear_fc2`) on axis 1; stacked experts (`.experts.`, 3-D, or 2-D with the experts stacked along axis 0 as
/// MindFormers stores them) cut on axis 0 by expert parallelism and not by tensor parallelism.
pub fn mcore_placement(layers: usize, pp: usize) -> impl Fn(&TensorInfo) -> Placement {
    move |t: &TensorInfo| {
        let n = &t.name;
        let per = layers.div_ceil(pp.max(1)).max(1);
        let stage = if let Some(rest) = n.split("layers.").nth(1) {
            rest.split('.')
                .next()
                .and_then(|i| i.parse::<usize>().ok())
                .map_or(0, |i| (i / per).min(pp - 1))
        } else if n.contains("output_layer")
            || n.contains("final_layernorm")
            || n.contains("final_norm")
        {
            pp - 1
        } else {
            0
        };
        let matrix = t.shape.len() >= 2;
        let experts = n.contains(".experts.") && matrix;
        let base = 0;
        let tp_axis = if !matrix || experts {
            None
        } else if n.contains("linear_qkv")
            || n.contains("linear_fc1")
            || n.contains("word_embeddings")
            || n.contains("output_layer")
        {
            Some(base)
        } else if n.contains("linear_proj") || n.contains("linear_fc2") {
            Some(base + 1)
        } else {
            None
        };
        Placement {
            stage,
            tp_axis,
            ep_axis: experts.then_some(0),
        }
    }
}

/// What [`run`] splits into.
#[derive(Clone, Debug)]
pub enum Target {
    /// The per-rank files of a MindSpore strategy (file or per-stage folder), in `ckpt` or `safetensors`.
    Strategy { path: PathBuf, format: OutputFormat },
    /// A MindFormers 2.x layout with the default [`mcore_placement`]; `layers` defaults to the highest
    /// `layers.{i}` index in the names plus one.
    MindFormers {
        layout: MfLayout,
        layers: Option<usize>,
    },
}

/// Layers of a checkpoint from its names (`…layers.{i}.…`): highest index + 1, at least 1.
pub fn layers_in(source: &Checkpoint) -> usize {
    source
        .tensors
        .iter()
        .filter_map(|t| {
            t.info
                .name
                .split("layers.")
                .nth(1)?
                .split('.')
                .next()?
                .parse::<usize>()
                .ok()
        })
        .max()
        .map_or(1, |m| m + 1)
}

/// Read a full checkpoint (MindSpore names) at `source`, split it into `target` under `out`. Returns the files
/// written; nothing is written on any error.
pub fn run(source: &Path, out: &Path, target: &Target) -> Result<Vec<PathBuf>> {
    let ck = crate::formats::open_model(source)?;
    let ms = vec![("format".to_string(), "ms".to_string())];
    match target {
        Target::Strategy { path, format } => {
            let st = Strategy::read(path)?;
            let plan = plan_mindspore(&ck, &st, *format)?;
            write(&ck, &plan, out, &ms)
        }
        Target::MindFormers { layout, layers } => {
            let place = mcore_placement(layers.unwrap_or_else(|| layers_in(&ck)), layout.pp);
            let plan = plan_mindformers(&ck, *layout, &place)?;
            write(&ck, &plan, out, &ms)
        }
    }
}

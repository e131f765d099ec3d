//! MindSpore parallel strategy files (`ParallelStrategyMap`, protobuf, proto2) and the slice each rank holds.
//!
//! The messages are declared by hand with `prost` derives (field numbers and types as in MindSpore's
//! `node_strategy.proto`); only what layouts need is decoded. Layout rules (measured against MindSpore 2.7's
//! `transform_checkpoints`):
//! - only the first `dev_matrix` / `tensor_map` / `param_split_shape` of a parameter counts;
//! - a rank's coordinates are row-major over the device matrix (last axis fastest);
//! - a `tensor_map` entry `k != -1` splits that tensor axis over device-matrix axis `len - 1 - k`;
//! - optimizer weight sharding then cuts axis 0 again into `opt_weight_shard_size` parts, rank `r` taking part
//!   `(r / opt_weight_shard_step) % opt_weight_shard_size`;
//! - with pipeline parallelism each stage has its own file (or a merged file whose names are prefixed
//!   `<stage>-`); stage `s` owns ranks `s·D .. (s+1)·D` where `D` is the device matrix's size.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use prost::Message;

use super::{FormatError, Result};

#[derive(Clone, PartialEq, prost::Message)]
pub struct ParallelStrategy {
    #[prost(uint32, repeated, packed = "false", tag = "1")]
    pub dim: Vec<u32>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ParallelStrategys {
    #[prost(uint32, required, tag = "1")]
    pub stage: u32,
    #[prost(message, repeated, tag = "2")]
    pub parallel_strategy: Vec<ParallelStrategy>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ParallelStrategyItem {
    #[prost(string, required, tag = "1")]
    pub node_name: String,
    #[prost(message, required, tag = "2")]
    pub parallel_strategys: ParallelStrategys,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct DevMatrix {
    #[prost(uint32, repeated, packed = "false", tag = "1")]
    pub dim: Vec<u32>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct TensorMap {
    #[prost(int32, repeated, packed = "false", tag = "1")]
    pub dim: Vec<i32>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ParamSplitShape {
    #[prost(int64, repeated, packed = "false", tag = "1")]
    pub dim: Vec<i64>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct IndicesOffset {
    #[prost(int64, repeated, packed = "false", tag = "1")]
    pub dim: Vec<i64>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ParallelLayouts {
    #[prost(message, repeated, tag = "1")]
    pub dev_matrix: Vec<DevMatrix>,
    #[prost(message, repeated, tag = "2")]
    pub tensor_map: Vec<TensorMap>,
    #[prost(message, repeated, tag = "3")]
    pub param_split_shape: Vec<ParamSplitShape>,
    #[prost(message, repeated, tag = "4")]
    pub indices_offset: Vec<IndicesOffset>,
    #[prost(int32, required, tag = "5")]
    pub field: i32,
    #[prost(int32, required, tag = "6")]
    pub opt_weight_shard_step: i32,
    #[prost(int32, required, tag = "7")]
    pub opt_weight_shard_size: i32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ParallelLayoutItem {
    #[prost(string, required, tag = "1")]
    pub param_name: String,
    #[prost(message, required, tag = "2")]
    pub parallel_layouts: ParallelLayouts,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ParallelStrategyMap {
    #[prost(uint32, required, tag = "1")]
    pub current_stage: u32,
    #[prost(message, repeated, tag = "2")]
    pub parallel_strategy_item: Vec<ParallelStrategyItem>,
    #[prost(message, repeated, tag = "3")]
    pub parallel_layout_item: Vec<ParallelLayoutItem>,
}

/// One parameter's layout: how its global tensor is cut over the devices of a stage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamLayout {
    pub dev_matrix: Vec<usize>,
    /// Per tensor axis: `None` (not split) or the device-matrix axis (counted from the left) that splits it.
    pub tensor_map: Vec<Option<usize>>,
    /// Optimizer weight sharding of axis 0: (step, size), when size > 1.
    pub opt_shard: Option<(usize, usize)>,
    /// Pipeline stages that hold the parameter (ascending).
    pub stages: Vec<usize>,
}

/// A box of a global tensor: offset and shape per axis.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SliceBox {
    pub offset: Vec<usize>,
    pub shape: Vec<usize>,
}

impl ParamLayout {
    /// Number of devices of one stage.
    pub fn stage_devices(&self) -> usize {
        self.dev_matrix.iter().product()
    }

    /// Split factor of each tensor axis (tensor parallelism, then optimizer sharding of axis 0).
    pub fn factors(&self) -> Vec<usize> {
        let mut f: Vec<usize> = self
            .tensor_map
            .iter()
            .map(|m| m.map_or(1, |a| self.dev_matrix[a]))
            .collect();
        if let (Some((_, size)), Some(f0)) = (self.opt_shard, f.first_mut()) {
            *f0 *= size;
        }
        f
    }

    /// The box of the global tensor that rank `local` (its index within its stage) holds.
    /// `global` must be divisible by [`factors`](Self::factors) (checked by the caller).
    pub fn slice_of(&self, local: usize, global: &[usize]) -> SliceBox {
        // row-major coordinates over the device matrix
        let mut coord = vec![0usize; self.dev_matrix.len()];
        let mut r = local;
        for (c, &d) in coord.iter_mut().zip(&self.dev_matrix).rev() {
            *c = r % d;
            r /= d;
        }
        let mut offset = Vec::with_capacity(global.len());
        let mut shape = Vec::with_capacity(global.len());
        for (i, &g) in global.iter().enumerate() {
            match self.tensor_map.get(i).copied().flatten() {
                Some(a) => {
                    let len = g / self.dev_matrix[a];
                    offset.push(coord[a] * len);
                    shape.push(len);
                }
                None => {
                    offset.push(0);
                    shape.push(g);
                }
            }
        }
        if let (Some((step, size)), false) = (self.opt_shard, shape.is_empty()) {
            let part = (local / step) % size;
            let len = shape[0] / size;
            offset[0] += part * len;
            shape[0] = len;
        }
        SliceBox { offset, shape }
    }
}

/// A parsed strategy: every parameter's layout and the device count it implies.
#[derive(Clone, Debug, Default)]
pub struct Strategy {
    /// The files it was read from.
    pub files: Vec<PathBuf>,
    /// Devices per pipeline stage (the device matrix's size).
    pub stage_devices: usize,
    /// Number of pipeline stages.
    pub stages: usize,
    pub params: BTreeMap<String, ParamLayout>,
}

impl Strategy {
    /// Total device count: devices per stage × stages.
    pub fn devices(&self) -> usize {
        self.stage_devices * self.stages
    }

    /// Read one strategy file (one stage, or stages merged with `<stage>-` prefixes) or a folder of per-stage
    /// files.
    pub fn read(path: &Path) -> Result<Strategy> {
        let files: Vec<PathBuf> = if path.is_dir() {
            let mut v: Vec<PathBuf> = std::fs::read_dir(path)
                .map_err(|e| FormatError::io(path, e))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.is_file()
                        && !p
                            .file_name()
                            .and_then(|n| n.to_str())
                            .is_some_and(|n| n.starts_with('.'))
                })
                .collect();
            v.sort();
            if v.is_empty() {
                return Err(FormatError::invalid(path, "strategy folder holds no file"));
            }
            v
        } else {
            vec![path.to_path_buf()]
        };
        let mut st = Strategy {
            files: files.clone(),
            ..Strategy::default()
        };
        let mut stage_set = std::collections::BTreeSet::new();
        for f in &files {
            let bytes = std::fs::read(f).map_err(|e| FormatError::io(f, e))?;
            let map = ParallelStrategyMap::decode(&bytes[..]).map_err(|e| {
                FormatError::invalid(f, format!("not a MindSpore ParallelStrategyMap: {e}"))
            })?;
            if map.parallel_layout_item.is_empty() {
                return Err(FormatError::invalid(
                    f,
                    "strategy file holds no parameter layout",
                ));
            }
            let file_stage = map
                .parallel_strategy_item
                .first()
                .map_or(0, |i| i.parallel_strategys.stage as usize);
            // A merged file prefixes every name with "<stage>-".
            let merged = map.parallel_layout_item.iter().all(|l| {
                l.param_name
                    .split_once('-')
                    .is_some_and(|(p, _)| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
            });
            for item in &map.parallel_layout_item {
                let (stage, name) = if merged {
                    let (p, n) = item.param_name.split_once('-').expect("checked above");
                    (p.parse::<usize>().unwrap_or(0), n.to_string())
                } else {
                    (file_stage, item.param_name.clone())
                };
                stage_set.insert(stage);
                let layout = layout_of(f, &name, &item.parallel_layouts, stage)?;
                let d = layout.stage_devices();
                if st.stage_devices == 0 {
                    st.stage_devices = d;
                } else if st.stage_devices != d {
                    return Err(FormatError::tensor(
                        f,
                        &name,
                        format!(
                            "device matrix {:?} has {d} devices, other parameters have {}",
                            layout.dev_matrix, st.stage_devices
                        ),
                    ));
                }
                match st.params.get_mut(&name) {
                    Some(prev) => {
                        if !prev.stages.contains(&stage) {
                            prev.stages.push(stage);
                            prev.stages.sort_unstable();
                        }
                        // the lowest stage's layout counts
                        if prev.stages[0] == stage {
                            let stages = prev.stages.clone();
                            *prev = ParamLayout { stages, ..layout };
                        }
                    }
                    None => {
                        st.params.insert(name, layout);
                    }
                }
            }
        }
        st.stages = stage_set.len();
        if stage_set.iter().copied().ne(0..st.stages) {
            return Err(FormatError::invalid(
                path,
                format!("pipeline stages {stage_set:?} are not 0..{}: a stage's strategy file is missing", st.stages),
            ));
        }
        Ok(st)
    }
}

fn layout_of(file: &Path, name: &str, l: &ParallelLayouts, stage: usize) -> Result<ParamLayout> {
    let bad = |m: String| FormatError::tensor(file, name, m);
    let dev: Vec<usize> = l
        .dev_matrix
        .first()
        .map(|d| d.dim.iter().map(|&x| x as usize).collect())
        .unwrap_or_default();
    if dev.contains(&0) {
        return Err(bad(format!("device matrix {dev:?} has a zero axis")));
    }
    let n = dev.len();
    let tmap = l
        .tensor_map
        .first()
        .map(|t| t.dim.clone())
        .unwrap_or_default();
    let mut tensor_map = Vec::with_capacity(tmap.len());
    for &k in &tmap {
        if k == -1 {
            tensor_map.push(None);
        } else if k >= 0 && (k as usize) < n {
            tensor_map.push(Some(n - 1 - k as usize));
        } else {
            return Err(bad(format!(
                "tensor map {tmap:?} names axis {k} of a {n}-axis device matrix"
            )));
        }
    }
    if let Some(ps) = l.param_split_shape.first() {
        if !ps.dim.is_empty() {
            return Err(bad(format!(
                "uneven field split (param_split_shape {:?}) is not supported",
                ps.dim
            )));
        }
    }
    let (step, size) = (l.opt_weight_shard_step, l.opt_weight_shard_size);
    let opt_shard = (step > 0 && size > 1).then_some((step as usize, size as usize));
    Ok(ParamLayout {
        dev_matrix: dev,
        tensor_map,
        opt_shard,
        stages: vec![stage],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rank_coordinates_are_row_major_and_maps_count_from_the_right() {
        // dev matrix [2, 4]: tensor axis 0 split over dev axis 0 (map 1), axis 1 over dev axis 1 (map 0)
        let l = ParamLayout {
            dev_matrix: vec![2, 4],
            tensor_map: vec![Some(0), Some(1)],
            opt_shard: None,
            stages: vec![0],
        };
        // rank 5 = (1, 1)
        let b = l.slice_of(5, &[8, 16]);
        assert_eq!(b.offset, vec![4, 4]);
        assert_eq!(b.shape, vec![4, 4]);
        // optimizer sharding: axis 0 of the replicated weight cut in 2, step 4
        let l = ParamLayout {
            dev_matrix: vec![2, 4],
            tensor_map: vec![None, Some(1)],
            opt_shard: Some((4, 2)),
            stages: vec![0],
        };
        assert_eq!(l.factors(), vec![2, 4]);
        let b = l.slice_of(6, &[8, 16]);
        assert_eq!(b.offset, vec![4, 8]);
        assert_eq!(b.shape, vec![4, 4]);
    }

    proptest::proptest! {
        /// Whatever the layout, the ranks' boxes tile the global tensor: as many distinct boxes as the split
        /// factors say, pairwise disjoint, each the same shape, covering every element.
        #[test]
        fn rank_boxes_tile_the_tensor(
            dev in proptest::collection::vec(1usize..4, 1..4),
            picks in proptest::collection::vec(0usize..5, 1..4),
            mult in proptest::collection::vec(1usize..3, 3),
            opt_axis in 0usize..4,
        ) {
            // tensor axis i takes device axis picks[i] if unused and in range, else is not split
            let mut used = vec![false; dev.len()];
            let tensor_map: Vec<Option<usize>> = picks.iter().map(|&p| {
                if p < dev.len() && !used[p] { used[p] = true; Some(p) } else { None }
            }).collect();
            // optimizer sharding over one unused device axis (step = devices to its right)
            let opt_shard = (opt_axis < dev.len() && !used[opt_axis] && dev[opt_axis] > 1)
                .then(|| (dev[opt_axis + 1..].iter().product::<usize>(), dev[opt_axis]));
            let l = ParamLayout { dev_matrix: dev.clone(), tensor_map, opt_shard, stages: vec![0] };
            let f = l.factors();
            let global: Vec<usize> = f.iter().zip(&mult).map(|(k, m)| k * m).collect();
            let mut boxes: Vec<SliceBox> = (0..l.stage_devices()).map(|r| l.slice_of(r, &global)).collect();
            boxes.sort();
            boxes.dedup();
            proptest::prop_assert_eq!(boxes.len(), f.iter().product::<usize>());
            let mut seen = vec![0u8; global.iter().product()];
            for b in &boxes {
                crate::tensor::box_runs(&global, &b.offset, &b.shape, 1, |g, _| {
                    for x in &mut seen[g] { *x += 1; }
                });
            }
            proptest::prop_assert!(seen.iter().all(|&x| x == 1));
        }
    }

    #[test]
    fn decodes_what_it_encodes() {
        let m = ParallelStrategyMap {
            current_stage: 0,
            parallel_strategy_item: vec![],
            parallel_layout_item: vec![ParallelLayoutItem {
                param_name: "w".into(),
                parallel_layouts: ParallelLayouts {
                    dev_matrix: vec![DevMatrix { dim: vec![2, 2] }],
                    tensor_map: vec![TensorMap { dim: vec![1, -1] }],
                    param_split_shape: vec![ParamSplitShape { dim: vec![] }],
                    indices_offset: vec![],
                    field: 0,
                    opt_weight_shard_step: 0,
                    opt_weight_shard_size: 0,
                },
            }],
        };
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.ckpt");
        std::fs::write(&p, m.encode_to_vec()).unwrap();
        let st = Strategy::read(&p).unwrap();
        assert_eq!(st.devices(), 4);
        assert_eq!(st.params["w"].tensor_map, vec![Some(0), None]);
    }
}

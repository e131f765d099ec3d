//! Distributed checkpoints: many files, each holding slices (boxes) of the global tensors.
//!
//! Two layouts are read:
//! - MindSpore auto-parallel ([`mindspore`]): `rank_N/` folders with one `.ckpt`/`.safetensors` each, plus the
//!   strategy file(s) the training wrote ([`super::strategy`]);
//! - MindFormers 2.x ([`mindformers`]): `latest_checkpointed_iteration.txt`, `iteration_NNNNNNNN/` with
//!   `metadata.json` (every chunk's global offset and shape and its file), `common.json` and per-rank
//!   `model-*.safetensors` / `opt-*.safetensors`.
//!
//! Either becomes one [`Checkpoint`] whose tensors are global: each is a [`DataRef::Assembled`] of the rank files'
//! slices (memory maps; the files' descriptors are closed once mapped), so the ordinary conversion pipeline
//! streams it one global tensor at a time. Every check (missing rank or file, holes, overlaps that disagree,
//! device count, dtype and global-shape agreement) runs while opening, before anything is written.
//! Replicated slices are read once; optimizer state is dropped by named rules unless
//! [`Options::keep_optimizer`].

pub mod mindformers;
pub mod mindspore;
pub mod split;

use std::path::{Path, PathBuf};

use super::strategy::SliceBox;
use super::{FormatError, Result};
use crate::tensor::{
    numel, Checkpoint, DType, DataRef, OtherEntry, Placed, TensorEntry, TensorInfo,
};

/// How to read a distributed checkpoint.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Options {
    /// Keep optimizer state (moments, accumulated gradients, step counters) instead of dropping it.
    pub keep_optimizer: bool,
    /// The strategy file or folder of a MindSpore checkpoint, when it is not in the checkpoint's root.
    pub strategy: Option<PathBuf>,
}

/// What kind of distributed checkpoint a path is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A root with `rank_N/` folders.
    MindSpore { root: PathBuf },
    /// A MindFormers 2.x checkpoint: the `metadata.json` of the chosen iteration.
    MindFormers { metadata: PathBuf },
}

/// Whether `path` is a distributed checkpoint (looks at names only, reads no tensor).
pub fn detect(path: &Path) -> Option<Kind> {
    if path.is_file() {
        return (path.file_name()? == "metadata.json").then(|| Kind::MindFormers {
            metadata: path.to_path_buf(),
        });
    }
    if !path.is_dir() {
        return None;
    }
    if path.join("metadata.json").is_file()
        || path.join(mindformers::TRACKER).is_file()
        || mindformers::has_iteration_dirs(path)
    {
        return Some(Kind::MindFormers {
            metadata: path.join("metadata.json"),
        });
    }
    if path.join("rank_0").is_dir() || mindspore::rank_dirs(path).is_some_and(|r| !r.is_empty()) {
        return Some(Kind::MindSpore {
            root: path.to_path_buf(),
        });
    }
    None
}

/// Open a distributed checkpoint found by [`detect`].
pub fn open(path: &Path, opts: &Options) -> Result<Checkpoint> {
    match detect(path) {
        Some(Kind::MindSpore { root }) => mindspore::read(&root, opts),
        Some(Kind::MindFormers { .. }) => mindformers::read(path, opts),
        None => Err(FormatError::invalid(
            path,
            "not a distributed checkpoint (expected rank_N/ folders, a MindFormers metadata.json, or a root with \
             latest_checkpointed_iteration.txt)",
        )),
    }
}

/// Optimizer and training-state names dropped unless `keep_optimizer`: (pattern, what it is). A pattern ending in
/// `.` is a prefix; otherwise the name must equal it or end with `.<pattern>`.
pub const OPTIMIZER_RULES: &[(&str, &str)] = &[
    ("adam_m.", "Adam first moment"),
    ("adam_v.", "Adam second moment"),
    ("moment1.", "first moment"),
    ("moment2.", "second moment"),
    ("exp_avg.", "first moment"),
    ("exp_avg_sq.", "second moment"),
    ("accu_grads.", "accumulated gradient"),
    ("muon_m.", "Muon momentum"),
    ("global_step", "training step counter"),
    ("learning_rate", "learning rate"),
    ("beta1_power", "Adam beta1 power"),
    ("beta2_power", "Adam beta2 power"),
    ("scale_sense", "loss scale"),
    ("loss_scale", "loss scale"),
    ("current_iterator_step", "training step counter"),
    ("last_overflow_iterator_step", "training step counter"),
    ("epoch_num", "training counter"),
    ("step_num", "training counter"),
];

/// The optimizer rule that drops `name`, if any.
pub fn optimizer_rule(name: &str) -> Option<&'static str> {
    OPTIMIZER_RULES.iter().find_map(|&(p, what)| {
        let hit = if p.ends_with('.') {
            name.starts_with(p)
        } else {
            name == p || name.ends_with(&format!(".{p}"))
        };
        hit.then_some(what)
    })
}

/// An entry recording a tensor dropped by an optimizer rule (listed by the conversion's warnings).
fn dropped(name: &str, what: &str) -> OtherEntry {
    OtherEntry {
        name: name.to_string(),
        kind: "optimizer state (dropped)".to_string(),
        value: format!("{what}; --keep-optimizer keeps it"),
    }
}

/// One slice of a global tensor as found in a rank's file.
#[derive(Clone, Debug)]
pub struct Slice {
    pub file: PathBuf,
    pub entry: TensorEntry,
    pub bx: SliceBox,
}

/// A global tensor's declaration and its slices, before assembly.
#[derive(Clone, Debug)]
pub struct Global {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
    /// The file the declaration came from (for messages).
    pub declared_in: PathBuf,
    pub slices: Vec<Slice>,
}

/// Coverage of a global tensor by its slices, as `inspect` shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Coverage {
    /// Distinct boxes read.
    pub slices: usize,
    /// Slices that repeat a box already read (replicas: not read).
    pub replicas: usize,
    /// Boxes that partially overlap another one (their common bytes agree).
    pub overlaps: usize,
}

fn intersect(a: &SliceBox, b: &SliceBox) -> Option<SliceBox> {
    let mut offset = Vec::new();
    let mut shape = Vec::new();
    for i in 0..a.offset.len() {
        let lo = a.offset[i].max(b.offset[i]);
        let hi = (a.offset[i] + a.shape[i]).min(b.offset[i] + b.shape[i]);
        if hi <= lo {
            return None;
        }
        offset.push(lo);
        shape.push(hi - lo);
    }
    Some(SliceBox { offset, shape })
}

/// The bytes of the sub-box `sub` (global coordinates) of slice `s`.
fn sub_bytes(s: &Slice, sub: &SliceBox, elem: usize) -> Vec<u8> {
    let local: Vec<usize> = sub
        .offset
        .iter()
        .zip(&s.bx.offset)
        .map(|(a, b)| a - b)
        .collect();
    let mut out = vec![0u8; numel(&sub.shape).unwrap_or(0) * elem];
    crate::tensor::cut_box(
        &s.entry.data.bytes(),
        &s.bx.shape,
        elem,
        &local,
        &sub.shape,
        &mut out,
    );
    out
}

/// The first point of `shape` no box covers, if any (coordinate compression: exact for any set of boxes).
fn first_hole(shape: &[usize], boxes: &[&SliceBox]) -> Option<Vec<usize>> {
    if numel(shape) == Some(0) {
        return None;
    }
    let rank = shape.len();
    let cuts: Vec<Vec<usize>> = (0..rank)
        .map(|d| {
            let mut c = vec![0, shape[d]];
            for b in boxes {
                c.push(b.offset[d]);
                c.push(b.offset[d] + b.shape[d]);
            }
            c.sort_unstable();
            c.dedup();
            c
        })
        .collect();
    let cells: Vec<usize> = cuts.iter().map(|c| c.len() - 1).collect();
    let mut idx = vec![0usize; rank];
    loop {
        let point: Vec<usize> = (0..rank).map(|d| cuts[d][idx[d]]).collect();
        let covered = boxes.iter().any(|b| {
            (0..rank).all(|d| b.offset[d] <= point[d] && point[d] < b.offset[d] + b.shape[d])
        });
        if !covered {
            return Some(point);
        }
        let mut d = rank;
        loop {
            if d == 0 {
                return None;
            }
            d -= 1;
            idx[d] += 1;
            if idx[d] < cells[d] {
                break;
            }
            idx[d] = 0;
        }
    }
}

/// Check a global tensor's slices and build its entry: every slice inside the tensor with the declared dtype,
/// replicas read once, partial overlaps agreeing byte for byte, no hole.
pub fn assemble(g: Global) -> Result<(TensorEntry, Coverage)> {
    let elem = g.dtype.size();
    let total = numel(&g.shape).ok_or_else(|| {
        FormatError::tensor(
            &g.declared_in,
            &g.name,
            format!("global shape {:?} overflows", g.shape),
        )
    })?;
    let mut cov = Coverage::default();
    let mut kept: Vec<Slice> = Vec::new();
    for s in g.slices {
        if s.entry.info.dtype != g.dtype {
            return Err(FormatError::tensor(
                &s.file,
                &g.name,
                format!(
                    "dtype {} disagrees with {} in {}",
                    s.entry.info.dtype,
                    g.dtype,
                    g.declared_in.display()
                ),
            ));
        }
        let inside = s.bx.offset.len() == g.shape.len()
            && s.entry.info.shape == s.bx.shape
            && (0..g.shape.len()).all(|d| s.bx.offset[d] + s.bx.shape[d] <= g.shape[d]);
        if !inside {
            return Err(FormatError::tensor(
                &s.file,
                &g.name,
                format!(
                    "slice of shape {:?} at offset {:?} does not fit the global shape {:?} (declared in {})",
                    s.entry.info.shape,
                    s.bx.offset,
                    g.shape,
                    g.declared_in.display()
                ),
            ));
        }
        if kept.iter().any(|k| k.bx == s.bx) {
            cov.replicas += 1;
            continue;
        }
        for k in &kept {
            if let Some(common) = intersect(&k.bx, &s.bx) {
                if numel(&common.shape) == Some(0) {
                    continue;
                }
                cov.overlaps += 1;
                if sub_bytes(k, &common, elem) != sub_bytes(&s, &common, elem) {
                    return Err(FormatError::tensor(
                        &s.file,
                        &g.name,
                        format!(
                            "slice at {:?} overlaps the slice at {:?} in {} with different bytes",
                            s.bx.offset,
                            k.bx.offset,
                            k.file.display()
                        ),
                    ));
                }
            }
        }
        kept.push(s);
    }
    let vol: usize = kept.iter().map(|s| numel(&s.bx.shape).unwrap_or(0)).sum();
    if vol < total || cov.overlaps > 0 {
        let boxes: Vec<&SliceBox> = kept.iter().map(|s| &s.bx).collect();
        if let Some(p) = first_hole(&g.shape, &boxes) {
            let files: Vec<String> = kept.iter().map(|s| s.file.display().to_string()).collect();
            return Err(FormatError::tensor(
                &g.declared_in,
                &g.name,
                format!(
                    "the slices leave a hole at {p:?} of the global shape {:?} (slices from {})",
                    g.shape,
                    if files.is_empty() {
                        "no file".to_string()
                    } else {
                        files.join(", ")
                    }
                ),
            ));
        }
    }
    cov.slices = kept.len();
    let info = TensorInfo::new(g.name, g.dtype, g.shape.clone());
    let data = if let [one] = &kept[..] {
        one.entry.data.clone()
    } else {
        DataRef::Assembled {
            elem_size: elem,
            shape: g.shape,
            pieces: kept
                .into_iter()
                .map(|s| Placed {
                    data: s.entry.data,
                    offset: s.bx.offset,
                    shape: s.bx.shape,
                })
                .collect(),
        }
    };
    Ok((
        TensorEntry {
            info,
            data,
            tied_to: None,
        },
        cov,
    ))
}

/// Assemble every global tensor (in order) into a checkpoint; optimizer names were filtered by the caller.
fn finish(
    format: String,
    globals: Vec<Global>,
    mut others: Vec<OtherEntry>,
    files: Vec<PathBuf>,
) -> Result<(Checkpoint, Vec<Coverage>)> {
    let mut tensors = Vec::with_capacity(globals.len());
    let mut covs = Vec::with_capacity(globals.len());
    for g in globals {
        let (t, c) = assemble(g)?;
        tensors.push(t);
        covs.push(c);
    }
    others.sort_by(|a, b| a.name.cmp(&b.name));
    Ok((
        Checkpoint {
            format,
            tensors,
            others,
            files,
            // The strategy, metadata.json and common.json are among `files` (the job's inputs), not safetensors
            // `__metadata__` to carry into an output.
            metadata: Vec::new(),
            notes: Vec::new(),
        },
        covs,
    ))
}

/// A summary of a distributed checkpoint for `inspect`: ranks, files, and per tensor its coverage.
#[derive(Clone, Debug)]
pub struct Summary {
    pub kind: String,
    pub ranks: usize,
    pub files: Vec<PathBuf>,
    pub tensors: Vec<(TensorInfo, Coverage)>,
    pub dropped: Vec<String>,
}

/// Open and summarise (what `inspect` prints). Fails like [`open`] on any hole or disagreement.
pub fn summarise(path: &Path, opts: &Options) -> Result<Summary> {
    let (ck, covs, ranks) = match detect(path) {
        Some(Kind::MindSpore { root }) => mindspore::read_with_coverage(&root, opts)?,
        Some(Kind::MindFormers { .. }) => mindformers::read_with_coverage(path, opts)?,
        None => return Err(FormatError::invalid(path, "not a distributed checkpoint")),
    };
    Ok(Summary {
        kind: ck.format.clone(),
        ranks,
        files: ck.files.clone(),
        tensors: ck
            .tensors
            .iter()
            .map(|t| t.info.clone())
            .zip(covs)
            .collect(),
        dropped: ck
            .others
            .iter()
            .filter(|o| o.kind.starts_with("optimizer"))
            .map(|o| o.name.clone())
            .collect(),
    })
}

impl Summary {
    /// Human-readable lines.
    pub fn render(&self) -> String {
        let mut s = format!(
            "{}: {} rank(s), {} file(s), {} global tensor(s)\n",
            self.kind,
            self.ranks,
            self.files.len(),
            self.tensors.len()
        );
        for f in &self.files {
            s.push_str(&format!("  file {}\n", f.display()));
        }
        for (t, c) in &self.tensors {
            s.push_str(&format!(
                "  {} {} {:?}: {} slice(s), {} replica(s) skipped, {} overlap(s), no hole\n",
                t.name, t.dtype, t.shape, c.slices, c.replicas, c.overlaps
            ));
        }
        if !self.dropped.is_empty() {
            s.push_str(&format!(
                "  dropped optimizer state: {}\n",
                self.dropped.join(", ")
            ));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn optimizer_rules_match_by_name() {
        assert!(optimizer_rule("adam_m.model.layers.0.w").is_some());
        assert!(optimizer_rule("global_step").is_some());
        assert!(optimizer_rule("optimizer.global_step").is_some());
        assert!(optimizer_rule("model.layers.0.attention.wq.weight").is_none());
        assert!(optimizer_rule("my_step_num_embedding").is_none());
    }

    #[test]
    fn holes_are_found_exactly() {
        let a = SliceBox {
            offset: vec![0, 0],
            shape: vec![2, 4],
        };
        let b = SliceBox {
            offset: vec![2, 0],
            shape: vec![2, 2],
        };
        assert_eq!(first_hole(&[4, 4], &[&a, &b]), Some(vec![2, 2]));
        let c = SliceBox {
            offset: vec![1, 2],
            shape: vec![3, 2],
        };
        assert_eq!(first_hole(&[4, 4], &[&a, &b, &c]), None);
    }
}

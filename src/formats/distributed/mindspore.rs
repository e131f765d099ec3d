//! MindSpore auto-parallel checkpoints: `rank_N/` folders (one `.ckpt` or `.safetensors` each) and the strategy.
//!
//! The strategy is `Options::strategy`, else the root's only file or folder whose name contains `strategy`.
//! Rank `r` is in pipeline stage `r / D` (`D` = the device matrix's size) and holds, of each parameter with a
//! layout, the box [`ParamLayout::slice_of`](crate::formats::strategy::ParamLayout::slice_of) of its local index
//! `r % D`; a tensor outside every layout is whole on each rank that has it and is read from the lowest such rank.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::{dropped, finish, optimizer_rule, Coverage, Global, Options, Slice};
use crate::formats::strategy::{SliceBox, Strategy};
use crate::formats::{open_file, FormatError, Result};
use crate::tensor::Checkpoint;

/// The `rank_N` folders of a root, sorted by N (`None` when the root cannot be listed).
pub fn rank_dirs(root: &Path) -> Option<Vec<(usize, PathBuf)>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(root).ok()? {
        let e = e.ok()?;
        let name = e.file_name();
        let Some(n) = name.to_str().and_then(|s| s.strip_prefix("rank_")) else {
            continue;
        };
        if let Ok(k) = n.parse::<usize>() {
            if e.path().is_dir() {
                out.push((k, e.path()));
            }
        }
    }
    out.sort();
    Some(out)
}

/// The strategy file or folder in a root: the one entry whose name contains `strategy`.
fn find_strategy(root: &Path) -> Result<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(root)
        .map_err(|e| FormatError::io(root, e))?
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.contains("strategy") && !n.starts_with('.'))
        })
        .map(|e| e.path())
        .collect();
    found.sort();
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(FormatError::invalid(
            root,
            "rank_N/ folders but no strategy file (a file or folder named *strategy* in the root, or give it \
             explicitly)",
        )),
        _ => Err(FormatError::invalid(
            root,
            format!(
                "several strategy candidates ({}): give the one to use",
                found
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
    }
}

/// The weight file of one rank folder: its only `.ckpt` or `.safetensors`.
fn rank_file(dir: &Path) -> Result<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| FormatError::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && !p
                    .file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with('.'))
                && matches!(
                    p.extension().and_then(|e| e.to_str()),
                    Some("ckpt" | "safetensors")
                )
        })
        .collect();
    found.sort();
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(FormatError::invalid(
            dir,
            "rank folder holds no .ckpt or .safetensors file",
        )),
        _ => Err(FormatError::invalid(
            dir,
            format!(
                "rank folder holds several weight files ({}): keep one per rank",
                found
                    .iter()
                    .filter_map(|p| p.file_name().and_then(|n| n.to_str()))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
    }
}

/// Read and assemble a MindSpore auto-parallel checkpoint.
pub fn read(root: &Path, opts: &Options) -> Result<Checkpoint> {
    Ok(read_with_coverage(root, opts)?.0)
}

/// [`read`], with each tensor's coverage and the rank count.
pub fn read_with_coverage(
    root: &Path,
    opts: &Options,
) -> Result<(Checkpoint, Vec<Coverage>, usize)> {
    let ranks =
        rank_dirs(root).ok_or_else(|| FormatError::invalid(root, "cannot list the folder"))?;
    if ranks.is_empty() {
        return Err(FormatError::invalid(root, "no rank_N/ folder"));
    }
    for (i, (k, _)) in ranks.iter().enumerate() {
        if *k != i {
            return Err(FormatError::invalid(
                root,
                format!(
                    "rank_{i}/ is missing (found rank_{k}/ after rank_{})",
                    i.wrapping_sub(1)
                ),
            ));
        }
    }
    let strategy_path = match &opts.strategy {
        Some(p) => p.clone(),
        None => find_strategy(root)?,
    };
    let strategy = Strategy::read(&strategy_path)?;
    if strategy.devices() != ranks.len() {
        return Err(FormatError::invalid(
            &strategy_path,
            format!(
                "strategy is for {} device(s) ({} per stage × {} stage(s)) but {} has {} rank folder(s)",
                strategy.devices(),
                strategy.stage_devices,
                strategy.stages,
                root.display(),
                ranks.len()
            ),
        ));
    }
    let d = strategy.stage_devices;
    let mut globals: Vec<Global> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut others = Vec::new();
    let mut seen_others = std::collections::HashSet::new();
    let mut files = Vec::with_capacity(ranks.len() + strategy.files.len());
    files.extend(strategy.files.iter().cloned());
    for (r, dir) in &ranks {
        let path = rank_file(dir)?;
        let ck = open_file(&path)?;
        files.push(path.clone());
        for o in ck.others {
            if seen_others.insert(o.name.clone()) {
                others.push(o);
            }
        }
        for t in ck.tensors {
            let name = t.info.name.clone();
            if !opts.keep_optimizer {
                if let Some(what) = optimizer_rule(&name) {
                    if seen_others.insert(name.clone()) {
                        others.push(dropped(&name, what));
                    }
                    continue;
                }
            }
            let (global, bx) = match strategy.params.get(&name) {
                Some(l) => {
                    let stage = r / d;
                    if !l.stages.contains(&stage) {
                        return Err(FormatError::tensor(
                            &path,
                            &name,
                            format!(
                                "rank {r} is in pipeline stage {stage} but the strategy puts this parameter in stage(s) {:?}",
                                l.stages
                            ),
                        ));
                    }
                    let f = l.factors();
                    if f.len() != t.info.shape.len() {
                        return Err(FormatError::tensor(
                            &path,
                            &name,
                            format!(
                                "slice has {} axes but the strategy's tensor map {:?} has {}",
                                t.info.shape.len(),
                                l.tensor_map,
                                f.len()
                            ),
                        ));
                    }
                    let global: Option<Vec<usize>> = t
                        .info
                        .shape
                        .iter()
                        .zip(&f)
                        .map(|(a, b)| a.checked_mul(*b))
                        .collect();
                    let global = global.ok_or_else(|| {
                        FormatError::tensor(&path, &name, "global shape overflows")
                    })?;
                    let bx = l.slice_of(r % d, &global);
                    (global, bx)
                }
                None => {
                    // Outside every layout: whole on this rank; the lowest rank that has it is read.
                    let shape = t.info.shape.clone();
                    let bx = SliceBox {
                        offset: vec![0; shape.len()],
                        shape: shape.clone(),
                    };
                    (shape, bx)
                }
            };
            match index.get(&name) {
                Some(&i) => {
                    let g = &mut globals[i];
                    if g.shape != global {
                        return Err(FormatError::tensor(
                            &path,
                            &name,
                            format!(
                                "global shape {:?} (from this rank's slice {:?}) disagrees with {:?} from {}",
                                global,
                                t.info.shape,
                                g.shape,
                                g.declared_in.display()
                            ),
                        ));
                    }
                    g.slices.push(Slice {
                        file: path.clone(),
                        entry: t,
                        bx,
                    });
                }
                None => {
                    index.insert(name.clone(), globals.len());
                    globals.push(Global {
                        name,
                        dtype: t.info.dtype,
                        shape: global,
                        declared_in: path.clone(),
                        slices: vec![Slice {
                            file: path.clone(),
                            entry: t,
                            bx,
                        }],
                    });
                }
            }
        }
    }
    let n = ranks.len();
    let (ck, covs) = finish(
        format!("mindspore_distributed({n} ranks)"),
        globals,
        others,
        files,
    )?;
    Ok((ck, covs, n))
}

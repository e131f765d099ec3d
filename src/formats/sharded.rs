//! HF sharded checkpoints: `*.safetensors.index.json` / `*.bin.index.json` / `*.ckpt.index.json` with a
//! `weight_map` (spec §3.1), and a writer that splits an output into such a set.
//!
//! Reading is fail-closed: every name of the `weight_map` must be in the shard it names, and every tensor of a shard
//! must be listed for that shard. Writing is atomic at the set level: shard files appear under their final names
//! only once every shard is complete, and the index is written last.

use std::collections::{HashMap, HashSet};
use std::path::{Component, Path, PathBuf};

use serde::Deserialize;

use super::safetensors::UniqueMap;
use super::{AtomicFile, FormatError, OutTensor, OutputFormat, Result, TensorWriter, WriteOptions};
use crate::tensor::Checkpoint;

/// What a model path resolves to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolved {
    /// An index json: load every shard it names.
    Index(PathBuf),
    /// One weight file.
    File(PathBuf),
}

/// Index file suffixes, in order of preference when a directory holds several kinds.
const INDEX_SUFFIXES: &[&str] = &[
    ".safetensors.index.json",
    ".bin.index.json",
    ".ckpt.index.json",
];

/// Extensions of single weight files a directory may hold.
const WEIGHT_EXTS: &[&str] = &["safetensors", "bin", "pt", "pth", "ckpt"];

/// Output naming per format: (format, file stem, extension). Single file `<stem>.<ext>`, shards
/// `<stem>-0000i-of-0000n.<ext>`, index `<stem>.<ext>.index.json`.
const NAMES: &[(OutputFormat, &str, &str)] = &[
    (OutputFormat::Safetensors, "model", "safetensors"),
    (OutputFormat::Torch, "pytorch_model", "bin"),
    (OutputFormat::Ckpt, "mindspore_model", "ckpt"),
];

/// Whether the path names an HF index json.
pub fn is_index(path: &Path) -> bool {
    path.to_str().is_some_and(|s| s.ends_with(".index.json"))
}

fn file_name(path: &Path) -> &str {
    path.file_name().and_then(|n| n.to_str()).unwrap_or("")
}

/// Whether a file name looks like an HF shard (`<stem>-NNNNN-of-NNNNN.<ext>`); returns `<stem>` and `<ext>`.
fn shard_name_parts(name: &str) -> Option<(&str, &str)> {
    let (stem, ext) = name.rsplit_once('.')?;
    let (head, total) = stem.rsplit_once("-of-")?;
    let (prefix, num) = head.rsplit_once('-')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    (digits(total) && digits(num) && !prefix.is_empty()).then_some((prefix, ext))
}

/// The files of a directory (sorted), leaving out hidden and temporary files.
fn list_files(dir: &Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).map_err(|e| FormatError::io(dir, e))? {
        let e = e.map_err(|e| FormatError::io(dir, e))?;
        let Some(name) = e.file_name().to_str().map(str::to_string) else {
            continue;
        };
        if name.starts_with('.') || !e.path().is_file() {
            continue;
        }
        out.push(name);
    }
    out.sort();
    Ok(out)
}

/// Resolve a model path: a directory (its index json, preferred, else its only weight file), a shard that a
/// sibling index names (that index), an index json, or any other file.
pub fn resolve(path: &Path) -> Result<Resolved> {
    let meta = std::fs::metadata(path).map_err(|e| FormatError::io(path, e))?;
    if meta.is_dir() {
        return resolve_dir(path);
    }
    if is_index(path) {
        return Ok(Resolved::Index(path.to_path_buf()));
    }
    if let Some(index) = sibling_index(path)? {
        return Ok(Resolved::Index(index));
    }
    Ok(Resolved::File(path.to_path_buf()))
}

fn resolve_dir(dir: &Path) -> Result<Resolved> {
    let files = list_files(dir)?;
    for suffix in INDEX_SUFFIXES {
        let found: Vec<&String> = files.iter().filter(|f| f.ends_with(suffix)).collect();
        match found.as_slice() {
            [] => {}
            [one] => return Ok(Resolved::Index(dir.join(one))),
            many => {
                return Err(FormatError::invalid(
                    dir,
                    format!(
                        "several index files ({}): name the one to use",
                        join_names(many.iter().map(|s| s.as_str()))
                    ),
                ))
            }
        }
    }
    let weights: Vec<&String> = files
        .iter()
        .filter(|f| {
            Path::new(f.as_str())
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| WEIGHT_EXTS.contains(&e))
        })
        .collect();
    match weights.as_slice() {
        [one] => Ok(Resolved::File(dir.join(one))),
        [] => Err(FormatError::invalid(
            dir,
            format!(
                "no index json (*{}) and no weight file (*.{}) in the directory",
                INDEX_SUFFIXES.join(", *"),
                WEIGHT_EXTS.join(", *.")
            ),
        )),
        many => Err(FormatError::invalid(
            dir,
            format!(
                "several weight files and no index json ({}): name the file to use",
                join_names(many.iter().map(|s| s.as_str()))
            ),
        )),
    }
}

fn join_names<'a>(names: impl Iterator<Item = &'a str>) -> String {
    names.collect::<Vec<_>>().join(", ")
}

/// For a file named like a shard, the sibling index json whose weight_map names it.
fn sibling_index(path: &Path) -> Result<Option<PathBuf>> {
    let name = file_name(path);
    let Some((prefix, ext)) = shard_name_parts(name) else {
        return Ok(None);
    };
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    // The conventional name first (its errors count), then any other index json of the directory.
    let primary = dir.join(format!("{prefix}.{ext}.index.json"));
    if primary.is_file() && parse_index(&primary)?.names_file(name) {
        return Ok(Some(primary));
    }
    for f in list_files(&dir)? {
        let cand = dir.join(&f);
        if is_index(&cand) && cand != primary {
            if let Ok(ix) = parse_index(&cand) {
                if ix.names_file(name) {
                    return Ok(Some(cand));
                }
            }
        }
    }
    Ok(None)
}

/// An index json: `{"metadata": {...}, "weight_map": {name: file}}`.
#[derive(Deserialize)]
struct IndexFile {
    /// Anything (unknown keys and non-number values are allowed): not interpreted.
    #[serde(default)]
    #[allow(dead_code)]
    metadata: Option<serde_json::Value>,
    weight_map: UniqueMap<String>,
}

impl IndexFile {
    fn names_file(&self, file: &str) -> bool {
        self.weight_map.0.iter().any(|(_, f)| f == file)
    }
}

fn parse_index(path: &Path) -> Result<IndexFile> {
    let text = std::fs::read_to_string(path).map_err(|e| FormatError::io(path, e))?;
    serde_json::from_str(&text)
        .map_err(|e| FormatError::invalid(path, format!("invalid index json: {e}")))
}

/// Whether a shard file name from an index is a plain relative path inside the index's directory.
fn safe_relative(name: &str) -> bool {
    let p = Path::new(name);
    !name.is_empty() && p.components().all(|c| matches!(c, Component::Normal(_)))
}

/// Read every shard an index json names (each once, in first-appearance order) into one checkpoint.
pub fn read_index(path: &Path) -> Result<Checkpoint> {
    let index = parse_index(path)?;
    let inv = |m: String| FormatError::invalid(path, m);
    if index.weight_map.0.is_empty() {
        return Err(inv("weight_map is empty".to_string()));
    }
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    // Shards in first-appearance order, each with the names it must hold.
    let mut shards: Vec<(&str, HashSet<&str>)> = Vec::new();
    let mut slot: HashMap<&str, usize> = HashMap::new();
    for (name, file) in &index.weight_map.0 {
        let i = *slot.entry(file.as_str()).or_insert_with(|| {
            shards.push((file.as_str(), HashSet::new()));
            shards.len() - 1
        });
        shards[i].1.insert(name.as_str());
    }
    let mut out = Checkpoint::default();
    let mut inner_format: Option<String> = None;
    for (file, names) in &shards {
        if !safe_relative(file) || is_index(Path::new(file)) {
            return Err(inv(format!(
                "weight_map names '{file}', which is not a weight file inside the index's directory"
            )));
        }
        let shard_path = dir.join(file);
        if !shard_path.is_file() {
            return Err(inv(format!(
                "shard '{file}' named by the index is missing (expected at {})",
                shard_path.display()
            )));
        }
        let ck = super::open_file(&shard_path)?;
        match &inner_format {
            None => inner_format = Some(ck.format.clone()),
            Some(f) if *f != ck.format => {
                return Err(inv(format!(
                    "shard '{file}' is {}, earlier shards are {f}",
                    ck.format
                )))
            }
            Some(_) => {}
        }
        let present: HashSet<&str> = ck.tensors.iter().map(|t| t.info.name.as_str()).collect();
        let mut missing: Vec<&str> = names.difference(&present).copied().collect();
        if !missing.is_empty() {
            missing.sort();
            return Err(inv(format!(
                "shard '{file}' lacks tensors the weight_map puts there: {}",
                short_list(&missing)
            )));
        }
        let mut extra: Vec<&str> = present.difference(names).copied().collect();
        if !extra.is_empty() {
            extra.sort();
            return Err(inv(format!(
                "shard '{file}' holds tensors the weight_map does not assign to it: {}",
                short_list(&extra)
            )));
        }
        let base = out.tensors.len();
        for mut t in ck.tensors {
            t.tied_to = t.tied_to.map(|i| i + base);
            out.tensors.push(t);
        }
        out.others.extend(ck.others);
        out.files.extend(ck.files);
        if out.metadata.is_empty() {
            out.metadata = ck.metadata;
        }
    }
    out.format = format!("sharded({})", inner_format.unwrap_or_default());
    Ok(out)
}

/// At most 10 names, then a count.
fn short_list(names: &[&str]) -> String {
    let mut s = names
        .iter()
        .take(10)
        .copied()
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > 10 {
        s.push_str(&format!(" and {} more", names.len() - 10));
    }
    s
}

/// Sizes (`--max-shard-size`): the one size parser, with HF units.
pub use crate::options::parse_size;

/// One output shard.
struct Shard {
    /// Final file name in the output directory.
    file: String,
    /// The shard's own declarations (ties inside the shard re-based, ties to other shards cut).
    local: Vec<OutTensor>,
    /// Local index → global index.
    globals: Vec<usize>,
    /// The inner writer's order (local indices).
    order: Vec<usize>,
    /// Created when the shard's first tensor arrives, finished (into the staging directory) after its last.
    writer: Option<Box<dyn TensorWriter>>,
    written: usize,
    /// Files the finished inner writer produced in the staging directory.
    staged: Option<Vec<PathBuf>>,
}

/// Writes an HF sharded set into a directory.
///
/// Memory and file handles stay at one shard: each shard's writer is created when its first tensor arrives and
/// finished right after its last, into a hidden staging directory inside the output directory. `finish` then
/// renames every staged shard to its final name and writes the index last; if anything fails, the shards already
/// renamed are removed. Dropping the writer removes the staging directory.
struct ShardedWriter {
    dir: PathBuf,
    format: OutputFormat,
    opts: WriteOptions,
    staging: Option<tempfile::TempDir>,
    shards: Vec<Shard>,
    /// Global index → (shard, local index).
    loc: Vec<(usize, usize)>,
    order: Vec<usize>,
    pos: usize,
    /// The index json to write last (none for a single shard).
    index: Option<(PathBuf, String)>,
}

/// Greedy split of `tensors` in declared order into groups of at most `max` bytes (a bigger tensor alone).
fn plan_shards(tensors: &[OutTensor], max: Option<u64>) -> Vec<Vec<usize>> {
    let mut shards: Vec<Vec<usize>> = Vec::new();
    let mut cur: Vec<usize> = Vec::new();
    let mut cur_bytes = 0u64;
    for (i, t) in tensors.iter().enumerate() {
        let b = t.info.nbytes() as u64;
        if let Some(max) = max {
            if !cur.is_empty() && cur_bytes.saturating_add(b) > max {
                shards.push(std::mem::take(&mut cur));
                cur_bytes = 0;
            }
        }
        cur.push(i);
        cur_bytes = cur_bytes.saturating_add(b);
    }
    if !cur.is_empty() || shards.is_empty() {
        shards.push(cur);
    }
    shards
}

/// Create a writer for an HF sharded set in the directory `path` (created if missing). Tensors are split greedily
/// in declared order so that each shard holds at most `opts.max_shard_size` tensor bytes (a bigger tensor gets its
/// own shard); shards are `model-0000i-of-0000n.safetensors` / `pytorch_model-0000i-of-0000n.bin` /
/// `mindspore_model-0000i-of-0000n.ckpt` with an index json `<single name>.index.json` whose `total_size` is the sum
/// of the tensor bytes written; a single shard is written as `model.safetensors` / `pytorch_model.bin` /
/// `mindspore_model.ckpt` with no index. `order()` is the shards' orders one after the other. A `tied_to` that
/// points into another shard is cut (that copy is written in full). Nothing appears under a final name until
/// every shard is complete.
pub fn writer(
    format: OutputFormat,
    path: &Path,
    tensors: &[OutTensor],
    opts: &WriteOptions,
) -> Result<Box<dyn TensorWriter>> {
    if path.exists() && !path.is_dir() {
        return Err(FormatError::invalid(
            path,
            "a sharded output must be a directory, and this path is an existing file",
        ));
    }
    std::fs::create_dir_all(path).map_err(|e| FormatError::io(path, e))?;
    let (stem, ext) = match opts.shard_name.as_deref().and_then(|n| n.rsplit_once('.')) {
        Some((stem, ext)) if !stem.is_empty() && !ext.is_empty() => (stem, ext),
        _ => NAMES
            .iter()
            .find(|(f, _, _)| *f == format)
            .map(|(_, s, e)| (*s, *e))
            .ok_or_else(|| FormatError::invalid(path, format!("no shard naming for {format:?}")))?,
    };
    let staging = tempfile::Builder::new()
        .prefix(super::TEMP_PREFIX)
        .tempdir_in(path)
        .map_err(|e| FormatError::io(path, e))?;
    let plan = plan_shards(tensors, opts.max_shard_size);
    let n = plan.len();
    let inner_opts = WriteOptions {
        max_shard_size: None,
        ..opts.clone()
    };
    let mut loc = vec![(0usize, 0usize); tensors.len()];
    for (s, group) in plan.iter().enumerate() {
        for (l, &g) in group.iter().enumerate() {
            loc[g] = (s, l);
        }
    }
    let mut shards = Vec::with_capacity(n);
    let mut order = Vec::with_capacity(tensors.len());
    let mut weight_map: Vec<(&str, String)> = Vec::with_capacity(tensors.len());
    let mut total_size = 0u64;
    for (s, group) in plan.into_iter().enumerate() {
        let file = if n == 1 {
            format!("{stem}.{ext}")
        } else {
            format!("{stem}-{:05}-of-{n:05}.{ext}", s + 1)
        };
        let local: Vec<OutTensor> = group
            .iter()
            .map(|&g| OutTensor {
                info: tensors[g].info.clone(),
                tied_to: tensors[g]
                    .tied_to
                    .and_then(|t| loc.get(t))
                    .filter(|(ts, tl)| *ts == s && *tl < loc[g].1)
                    .map(|(_, tl)| *tl),
            })
            .collect();
        // The inner writer's order, from a writer made and dropped at once (it is made again when the shard's
        // first tensor arrives): this validates the shard early and keeps a single shard open at a time.
        let shard_order =
            super::create_single_writer(format, &staging.path().join(&file), &local, &inner_opts)?
                .order();
        for &l in &shard_order {
            let g = group.get(l).copied().ok_or_else(|| {
                FormatError::invalid(path, format!("inner writer asked for unknown tensor #{l}"))
            })?;
            total_size = total_size.saturating_add(tensors[g].info.nbytes() as u64);
            order.push(g);
        }
        for &g in &group {
            weight_map.push((tensors[g].info.name.as_str(), file.clone()));
        }
        shards.push(Shard {
            file,
            local,
            globals: group,
            order: shard_order,
            writer: None,
            written: 0,
            staged: None,
        });
    }
    let index = (n > 1).then(|| {
        weight_map.sort_by(|a, b| a.0.cmp(b.0));
        let mut wm = serde_json::Map::new();
        for (name, file) in weight_map {
            wm.insert(name.to_string(), serde_json::Value::String(file));
        }
        let json = serde_json::json!({
            "metadata": {"total_size": total_size},
            "weight_map": wm,
        });
        let text = serde_json::to_string_pretty(&json).unwrap_or_default() + "\n";
        (path.join(format!("{stem}.{ext}.index.json")), text)
    });
    Ok(Box::new(ShardedWriter {
        dir: path.to_path_buf(),
        format,
        opts: inner_opts,
        staging: Some(staging),
        shards,
        loc,
        order,
        pos: 0,
        index,
    }))
}

impl ShardedWriter {
    fn staging_dir(&self) -> Result<PathBuf> {
        self.staging
            .as_ref()
            .map(|t| t.path().to_path_buf())
            .ok_or_else(|| FormatError::invalid(&self.dir, "writer already finished"))
    }

    /// Create shard `s`'s writer if it does not exist yet.
    fn open_shard(&mut self, s: usize) -> Result<()> {
        if self.shards[s].writer.is_some() || self.shards[s].staged.is_some() {
            return Ok(());
        }
        let staging = self.staging_dir()?;
        let shard = &mut self.shards[s];
        let p = staging.join(&shard.file);
        let w = super::create_single_writer(self.format, &p, &shard.local, &self.opts)?;
        if w.order() != shard.order {
            return Err(FormatError::invalid(
                &p,
                "inner writer changed its tensor order between two creations",
            ));
        }
        shard.writer = Some(w);
        Ok(())
    }

    /// Finish shard `s` into the staging directory once all its tensors are written.
    fn close_shard(&mut self, s: usize) -> Result<()> {
        let shard = &mut self.shards[s];
        if shard.written == shard.order.len() {
            if let Some(w) = shard.writer.take() {
                shard.staged = Some(w.finish()?);
            }
        }
        Ok(())
    }
}

impl TensorWriter for ShardedWriter {
    fn order(&self) -> Vec<usize> {
        self.order.clone()
    }

    fn write(&mut self, index: usize, data: &[u8]) -> Result<()> {
        if self.order.get(self.pos) != Some(&index) {
            return Err(FormatError::invalid(
                &self.dir,
                format!(
                    "tensor #{index} written out of order (expected {:?})",
                    self.order.get(self.pos)
                ),
            ));
        }
        let (s, l) = self.loc[index];
        debug_assert_eq!(self.shards[s].globals.get(l), Some(&index));
        self.open_shard(s)?;
        let shard = &mut self.shards[s];
        let w = shard
            .writer
            .as_mut()
            .ok_or_else(|| FormatError::invalid(&self.dir, "shard already finished"))?;
        w.write(l, data)?;
        shard.written += 1;
        self.pos += 1;
        self.close_shard(s)
    }

    fn finish(mut self: Box<Self>) -> Result<Vec<PathBuf>> {
        if self.pos != self.order.len() {
            return Err(FormatError::invalid(
                &self.dir,
                format!(
                    "finished after {} of {} tensors",
                    self.pos,
                    self.order.len()
                ),
            ));
        }
        // Shards with nothing to write (an empty model) are created and finished here.
        for s in 0..self.shards.len() {
            self.open_shard(s)?;
            self.close_shard(s)?;
        }
        let mut done: Vec<PathBuf> = Vec::new();
        let cleanup = |done: &[PathBuf]| {
            for p in done {
                let _ = std::fs::remove_file(p);
            }
        };
        for shard in &self.shards {
            for staged in shard.staged.iter().flatten() {
                let Some(name) = staged.file_name() else {
                    continue;
                };
                let dst = self.dir.join(name);
                if let Err(e) = std::fs::rename(staged, &dst) {
                    cleanup(&done);
                    return Err(FormatError::io(&dst, e));
                }
                done.push(dst);
            }
        }
        // The renames are durable once the directory is (the index commit below syncs it again).
        if let Err(e) = crate::fsio::sync_dir(&self.dir) {
            cleanup(&done);
            return Err(e.into());
        }
        if let Some((path, text)) = self.index.take() {
            let r = AtomicFile::create(&path).and_then(|mut f| {
                f.put(text.as_bytes())?;
                f.commit()
            });
            match r {
                Ok(p) => done.push(p),
                Err(e) => {
                    cleanup(&done);
                    return Err(e);
                }
            }
        }
        if let Some(staging) = self.staging.take() {
            let _ = staging.close();
        }
        Ok(done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        for (s, v) in [
            ("500KB", 500_000u64),
            ("5GB", 5_000_000_000),
            ("5Gb", 625_000_000),
            ("10MiB", 10 << 20),
            ("2GiB", 2 << 30),
            ("12345", 12345),
            ("1tib", 1 << 40),
        ] {
            assert_eq!(parse_size(s), Ok(v), "{s}");
        }
        for s in [
            "",
            "GB",
            "5XB",
            "0",
            "-1GB",
            "99999999999999999999TB",
            "1.5KB",
        ] {
            assert!(parse_size(s).is_err(), "{s}");
        }
    }

    #[test]
    fn shard_names() {
        assert_eq!(
            shard_name_parts("pytorch_model-00001-of-00002.bin"),
            Some(("pytorch_model", "bin"))
        );
        assert_eq!(
            shard_name_parts("model-00003-of-00010.safetensors"),
            Some(("model", "safetensors"))
        );
        assert_eq!(shard_name_parts("model.safetensors"), None);
        assert_eq!(shard_name_parts("-00001-of-00002.bin"), None);
        assert_eq!(shard_name_parts("a-x-of-00002.bin"), None);
    }

    #[test]
    fn greedy_plan() {
        use crate::tensor::{DType, TensorInfo};
        let t = |n: usize| OutTensor {
            info: TensorInfo::new(format!("t{n}"), DType::U8, vec![n]),
            tied_to: None,
        };
        let ts = vec![t(4), t(4), t(10), t(1), t(3)];
        assert_eq!(
            plan_shards(&ts, Some(8)),
            vec![vec![0, 1], vec![2], vec![3, 4]]
        );
        assert_eq!(plan_shards(&ts, None), vec![vec![0, 1, 2, 3, 4]]);
        assert_eq!(plan_shards(&[], Some(8)), vec![Vec::<usize>::new()]);
    }
}

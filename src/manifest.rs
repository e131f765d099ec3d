//! Batch manifests: a TOML file of `[[job]]` tables with optional `[defaults]`.
//!
//! ```toml
//! [defaults]            # optional; any job key may be given here
//! dtype = "fp16"
//! jobs = 2              # concurrent jobs; default: number of cores
//! [[job]]
//! name = "llama-to-ms"  # unique; default: derived from input and output
//! model = "llama"       # optional: without it, a pure format conversion
//! input = "zoo/llama/pytorch_model.bin"   # relative paths are relative to the manifest's directory
//! output = "out/llama.ckpt"
//! reversed = false      # optional
//! dtype = "fp32"        # optional; n_head, hidden_size, layers, device, max_shard_size, state_dict_key likewise
//! keep_optimizer = true # optional, distributed inputs: keep optimizer state; strategy = "path" likewise
//! ```
//!
//! Everything is checked before anything runs: unknown keys, bad values, duplicate names, two jobs writing one
//! output, an output that is also an input. Errors read `manifest.toml:LINE: message`.

use std::collections::HashMap;
use std::fmt;
use std::path::{Component, Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use crate::options::{self, JobSpec};

/// One job of a manifest, ready to run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchJob {
    /// Unique name (given, or `INPUT -> OUTPUT` as written in the manifest).
    pub name: String,
    /// The conversion, with paths resolved against the manifest's directory.
    pub spec: JobSpec,
    /// 1-based line of the job's `[[job]]` table in the manifest.
    pub line: usize,
}

/// A parsed and checked manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    /// The manifest file (as given).
    pub path: PathBuf,
    /// `[defaults] jobs`: how many jobs to run at once, if given.
    pub concurrency: Option<usize>,
    /// The jobs in file order.
    pub jobs: Vec<BatchJob>,
}

/// A manifest that cannot be used. `Display` reads `FILE:LINE: message` (or `FILE: message` without a line).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ManifestError {
    pub path: PathBuf,
    /// 1-based line, when the problem has a place.
    pub line: Option<usize>,
    pub msg: String,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(l) => write!(f, "{}:{}: {}", self.path.display(), l, self.msg),
            None => write!(f, "{}: {}", self.path.display(), self.msg),
        }
    }
}

/// A value as written, with its place in the manifest. Values are typed by [`JobBuilder`], so that a type error
/// reads in the manifest's words (`key 'n_head' must be a positive integer, got the string "4"`).
type Raw = Option<Spanned<toml::Value>>;

/// The keys of a `[[job]]` table; `[defaults]` accepts these plus `jobs`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJob {
    name: Raw,
    model: Raw,
    input: Raw,
    output: Raw,
    reversed: Raw,
    dtype: Raw,
    n_head: Raw,
    hidden_size: Raw,
    layers: Raw,
    device: Raw,
    max_shard_size: Raw,
    keep_optimizer: Raw,
    strategy: Raw,
    mlp_layout: Raw,
    state_dict_key: Raw,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDefaults {
    jobs: Raw,
    name: Raw,
    model: Raw,
    input: Raw,
    output: Raw,
    reversed: Raw,
    dtype: Raw,
    n_head: Raw,
    hidden_size: Raw,
    layers: Raw,
    device: Raw,
    max_shard_size: Raw,
    keep_optimizer: Raw,
    strategy: Raw,
    mlp_layout: Raw,
    state_dict_key: Raw,
}

impl RawDefaults {
    fn job_keys(self) -> RawJob {
        RawJob {
            name: self.name,
            model: self.model,
            input: self.input,
            output: self.output,
            reversed: self.reversed,
            dtype: self.dtype,
            n_head: self.n_head,
            hidden_size: self.hidden_size,
            layers: self.layers,
            device: self.device,
            max_shard_size: self.max_shard_size,
            keep_optimizer: self.keep_optimizer,
            strategy: self.strategy,
            mlp_layout: self.mlp_layout,
            state_dict_key: self.state_dict_key,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    defaults: Option<RawDefaults>,
    #[serde(default)]
    job: Vec<Spanned<RawJob>>,
}

/// Take each key from the job, else from the defaults.
fn merge(job: RawJob, d: &RawJob) -> RawJob {
    RawJob {
        name: job.name.or_else(|| d.name.clone()),
        model: job.model.or_else(|| d.model.clone()),
        input: job.input.or_else(|| d.input.clone()),
        output: job.output.or_else(|| d.output.clone()),
        reversed: job.reversed.or_else(|| d.reversed.clone()),
        dtype: job.dtype.or_else(|| d.dtype.clone()),
        n_head: job.n_head.or_else(|| d.n_head.clone()),
        hidden_size: job.hidden_size.or_else(|| d.hidden_size.clone()),
        layers: job.layers.or_else(|| d.layers.clone()),
        device: job.device.or_else(|| d.device.clone()),
        max_shard_size: job.max_shard_size.or_else(|| d.max_shard_size.clone()),
        keep_optimizer: job.keep_optimizer.or_else(|| d.keep_optimizer.clone()),
        strategy: job.strategy.or_else(|| d.strategy.clone()),
        mlp_layout: job.mlp_layout.or_else(|| d.mlp_layout.clone()),
        state_dict_key: job.state_dict_key.or_else(|| d.state_dict_key.clone()),
    }
}

/// A TOML value in words: `the string "4"`, `the integer 0`, `a table`.
fn describe(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => format!("the string {s:?}"),
        toml::Value::Integer(i) => format!("the integer {i}"),
        toml::Value::Float(f) => format!("the number {f}"),
        toml::Value::Boolean(b) => format!("the boolean {b}"),
        toml::Value::Datetime(d) => format!("the date {d}"),
        toml::Value::Array(_) => "an array".to_string(),
        toml::Value::Table(_) => "a table".to_string(),
    }
}

/// 1-based line of a byte offset.
fn line_of(src: &str, offset: usize) -> usize {
    let end = offset.min(src.len());
    src.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

pub use crate::options::parse_memory_budget;

/// Normalise `base.join(p)` lexically (`.` and `..` removed), without touching the file system.
fn resolve(base: &Path, p: &str) -> PathBuf {
    let joined = base.join(p);
    let mut out = PathBuf::new();
    for c in joined.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                let can_pop = matches!(out.components().next_back(), Some(Component::Normal(_)));
                if can_pop {
                    out.pop();
                } else {
                    out.push("..");
                }
            }
            other => out.push(other.as_os_str()),
        }
    }
    if out.as_os_str().is_empty() {
        out.push(".");
    }
    // A trailing separator asks for a directory output: keep it.
    if p.ends_with('/') || p.ends_with(std::path::MAIN_SEPARATOR) {
        out.push("");
    }
    out
}

/// A key to compare paths by: the canonical path of the file, or of its directory plus its name, else lexical.
fn identity(p: &Path) -> PathBuf {
    if let Ok(c) = p.canonicalize() {
        return c;
    }
    if let (Some(dir), Some(name)) = (p.parent(), p.file_name()) {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        if let Ok(c) = dir.canonicalize() {
            return c.join(name);
        }
    }
    p.to_path_buf()
}

/// Checks of one job's values: turns a merged raw table into a spec.
struct JobBuilder<'a> {
    src: &'a str,
    file: &'a Path,
    base: &'a Path,
}

impl JobBuilder<'_> {
    fn err<T>(
        &self,
        span: std::ops::Range<usize>,
        msg: impl Into<String>,
    ) -> Result<T, ManifestError> {
        Err(ManifestError {
            path: self.file.to_path_buf(),
            line: Some(line_of(self.src, span.start)),
            msg: msg.into(),
        })
    }

    /// `key 'K' must be WANT, got the string "4"`.
    fn wrong_type<T>(
        &self,
        key: &str,
        want: &str,
        v: &Spanned<toml::Value>,
    ) -> Result<T, ManifestError> {
        self.err(
            v.span(),
            format!("key '{key}' must be {want}, got {}", describe(v.get_ref())),
        )
    }

    fn string(
        &self,
        key: &str,
        v: &Raw,
    ) -> Result<Option<(String, std::ops::Range<usize>)>, ManifestError> {
        match v {
            None => Ok(None),
            Some(s) => match s.get_ref() {
                toml::Value::String(t) => Ok(Some((t.clone(), s.span()))),
                _ => self.wrong_type(key, "a string", s),
            },
        }
    }

    fn boolean(&self, key: &str, v: &Raw) -> Result<Option<bool>, ManifestError> {
        match v {
            None => Ok(None),
            Some(s) => match s.get_ref() {
                toml::Value::Boolean(b) => Ok(Some(*b)),
                _ => self.wrong_type(key, "true or false", s),
            },
        }
    }

    fn positive(&self, key: &str, v: &Raw) -> Result<Option<usize>, ManifestError> {
        const WANT: &str = "a positive integer";
        match v {
            None => Ok(None),
            Some(s) => match s.get_ref() {
                toml::Value::Integer(i) => match options::positive(*i) {
                    Ok(n) => Ok(Some(n)),
                    Err(_) => self.err(s.span(), format!("key '{key}' must be {WANT}, got {i}")),
                },
                _ => self.wrong_type(key, WANT, s),
            },
        }
    }

    fn size(&self, key: &str, v: &Raw) -> Result<Option<u64>, ManifestError> {
        const WANT: &str =
            "a size: a positive integer (bytes) or a string like \"500MB\" or \"2GiB\"";
        match v {
            None => Ok(None),
            Some(s) => match s.get_ref() {
                toml::Value::Integer(i) => match u64::try_from(*i) {
                    Ok(n) if n > 0 => Ok(Some(n)),
                    _ => self.err(s.span(), format!("key '{key}' must be {WANT}, got {i}")),
                },
                toml::Value::String(t) => match options::parse_size(t) {
                    Ok(n) => Ok(Some(n)),
                    Err(e) => self.err(s.span(), format!("key '{key}': {e}")),
                },
                _ => self.wrong_type(key, WANT, s),
            },
        }
    }

    fn build(&self, raw: RawJob, table: std::ops::Range<usize>) -> Result<BatchJob, ManifestError> {
        let line = line_of(self.src, table.start);
        let input = self.string("input", &raw.input)?;
        let output = self.string("output", &raw.output)?;
        let (Some((input, in_span)), Some((output, out_span))) = (input, output) else {
            let missing = if raw.input.is_none() {
                "input"
            } else {
                "output"
            };
            return self.err(table, format!("job has no '{missing}'"));
        };
        for (key, v, span) in [("input", &input, in_span), ("output", &output, out_span)] {
            if v.trim().is_empty() {
                return self.err(span, format!("key '{key}' is empty"));
            }
        }
        let name = match self.string("name", &raw.name)? {
            Some((n, span)) => {
                let s = n.trim();
                if s.is_empty() {
                    return self.err(span, "key 'name' is empty");
                }
                if s.chars().any(char::is_control) {
                    return self.err(span, "key 'name' contains a control character");
                }
                s.to_string()
            }
            None => format!("{input} -> {output}"),
        };
        let model = match self.string("model", &raw.model)? {
            Some((m, span)) if m.trim().is_empty() => {
                return self.err(span, "key 'model' is empty")
            }
            Some((m, span)) => {
                let m = m.trim().to_string();
                // Checked before anything runs, like dtype and device.
                if let Err(e) = crate::models::find(&m) {
                    return self.err(span, e.to_string());
                }
                Some(m)
            }
            None => None,
        };
        let dtype = match self.string("dtype", &raw.dtype)? {
            None => None,
            Some((d, span)) => match options::parse_dtype(&d) {
                Ok(t) => Some(t),
                Err(e) => return self.err(span, e.to_string()),
            },
        };
        let device = match self.string("device", &raw.device)? {
            None => None,
            Some((d, span)) => match options::parse_device(&d) {
                Ok(v) => Some(v),
                Err(e) => return self.err(span, e.to_string()),
            },
        };
        let mlp_layout = match self.string("mlp_layout", &raw.mlp_layout)? {
            None => None,
            Some((m, span)) => match options::parse_mlp_layout(&m) {
                Ok(v) => Some(v),
                Err(e) => return self.err(span, e.to_string()),
            },
        };
        let spec = JobSpec {
            model,
            input: resolve(self.base, &input),
            output: resolve(self.base, &output),
            reversed: self.boolean("reversed", &raw.reversed)?.unwrap_or(false),
            dtype,
            n_head: self.positive("n_head", &raw.n_head)?,
            hidden_size: self.positive("hidden_size", &raw.hidden_size)?,
            layers: self.positive("layers", &raw.layers)?,
            device,
            max_shard_size: self.size("max_shard_size", &raw.max_shard_size)?,
            keep_optimizer: self
                .boolean("keep_optimizer", &raw.keep_optimizer)?
                .unwrap_or(false),
            strategy: self
                .string("strategy", &raw.strategy)?
                .map(|(p, _)| resolve(self.base, &p)),
            mlp_layout,
            state_dict_key: self
                .string("state_dict_key", &raw.state_dict_key)?
                .map(|(k, _)| k),
        };
        Ok(BatchJob { name, spec, line })
    }
}

impl Manifest {
    /// Read and check a manifest file.
    pub fn load(path: &Path) -> Result<Manifest, ManifestError> {
        let src = std::fs::read_to_string(path).map_err(|e| ManifestError {
            path: path.to_path_buf(),
            line: None,
            msg: format!("cannot read manifest: {e}"),
        })?;
        let base = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        Manifest::parse(&src, path, &base)
    }

    /// Parse and check manifest text; `file` names it in errors, `base` resolves relative paths.
    pub fn parse(src: &str, file: &Path, base: &Path) -> Result<Manifest, ManifestError> {
        let raw: RawManifest = toml::from_str(src).map_err(|e| ManifestError {
            path: file.to_path_buf(),
            line: e.span().map(|s| line_of(src, s.start)),
            msg: e.message().trim().to_string(),
        })?;
        let b = JobBuilder { src, file, base };
        let (concurrency, defaults) = match raw.defaults {
            None => (None, RawJob::default()),
            Some(d) => {
                let c = b.positive("jobs", &d.jobs)?;
                (c, d.job_keys())
            }
        };
        if raw.job.is_empty() {
            return Err(ManifestError {
                path: file.to_path_buf(),
                line: None,
                msg: "no [[job]] tables: nothing to do".into(),
            });
        }
        let mut jobs = Vec::with_capacity(raw.job.len());
        // Spans of each job's output, for errors about it.
        let mut out_spans = Vec::with_capacity(raw.job.len());
        for t in raw.job {
            let span = t.span();
            let merged = merge(t.into_inner(), &defaults);
            let out_span = merged
                .output
                .as_ref()
                .map(|o| o.span())
                .unwrap_or(span.clone());
            let name_span = merged
                .name
                .as_ref()
                .map(|o| o.span())
                .unwrap_or(span.clone());
            jobs.push(b.build(merged, span)?);
            out_spans.push((out_span, name_span));
        }
        let mut names: HashMap<&str, usize> = HashMap::new();
        let mut outputs: HashMap<PathBuf, usize> = HashMap::new();
        let mut inputs: HashMap<PathBuf, usize> = HashMap::new();
        for (i, j) in jobs.iter().enumerate() {
            inputs.entry(identity(&j.spec.input)).or_insert(i);
        }
        for (i, j) in jobs.iter().enumerate() {
            let (out_span, name_span) = out_spans[i].clone();
            if let Some(&k) = names.get(j.name.as_str()) {
                return b.err(
                    name_span,
                    format!(
                        "duplicate job name '{}' (first at line {})",
                        j.name, jobs[k].line
                    ),
                );
            }
            names.insert(&j.name, i);
            let out = identity(&j.spec.output);
            if let Some(&k) = outputs.get(&out) {
                return b.err(
                    out_span,
                    format!(
                        "job '{}' writes {}, which job '{}' (line {}) writes too",
                        j.name,
                        j.spec.output.display(),
                        jobs[k].name,
                        jobs[k].line
                    ),
                );
            }
            if let Some(&k) = inputs.get(&out) {
                let whose = if k == i {
                    "its own input".to_string()
                } else {
                    format!(
                        "the input of job '{}' (line {})",
                        jobs[k].name, jobs[k].line
                    )
                };
                return b.err(
                    out_span,
                    format!(
                        "job '{}': output {} is {whose}",
                        j.name,
                        j.spec.output.display()
                    ),
                );
            }
            outputs.insert(out, i);
        }
        Ok(Manifest {
            path: file.to_path_buf(),
            concurrency,
            jobs,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::DType;

    fn parse(src: &str) -> Result<Manifest, ManifestError> {
        Manifest::parse(src, Path::new("m.toml"), Path::new("/base"))
    }

    fn err(src: &str) -> String {
        parse(src)
            .expect_err("manifest should be rejected")
            .to_string()
    }

    #[test]
    fn defaults_apply_and_paths_resolve() {
        let m = parse(
            r#"
[defaults]
dtype = "fp16"
jobs = 2
device = "cuda:1"

[[job]]
name = "a"
model = "llama"
input = "zoo/in.bin"
output = "out/../out/a.ckpt"
dtype = "fp32"
max_shard_size = "2GiB"

[[job]]
input = "/abs/in.safetensors"
output = "hf/"
reversed = true
n_head = 4
"#,
        )
        .unwrap();
        assert_eq!(m.concurrency, Some(2));
        assert_eq!(m.jobs.len(), 2);
        let a = &m.jobs[0];
        assert_eq!(a.name, "a");
        assert_eq!(a.line, 7);
        assert_eq!(a.spec.model.as_deref(), Some("llama"));
        assert_eq!(a.spec.input, PathBuf::from("/base/zoo/in.bin"));
        assert_eq!(a.spec.output, PathBuf::from("/base/out/a.ckpt"));
        assert_eq!(a.spec.dtype, Some(DType::F32));
        assert_eq!(a.spec.device.as_deref(), Some("cuda:1"));
        assert_eq!(a.spec.max_shard_size, Some(2 << 30));
        let b = &m.jobs[1];
        assert_eq!(b.name, "/abs/in.safetensors -> hf/");
        assert_eq!(b.spec.output.as_os_str(), "/base/hf/");
        assert_eq!(b.line, 15);
        assert_eq!(b.spec.input, PathBuf::from("/abs/in.safetensors"));
        assert_eq!(b.spec.dtype, Some(DType::F16));
        assert!(b.spec.reversed);
        assert_eq!(b.spec.n_head, Some(4));
        assert_eq!(b.spec.model, None);
    }

    /// (manifest, expected error text): every error carries its line.
    const BAD: &[(&str, &str)] = &[
        (
            "[[job]]\ninput = \"a\"\noutput = \"b\"\nfoo = 1\n",
            "m.toml:4: unknown field `foo`",
        ),
        (
            "[defaults]\nbar = 1\n[[job]]\ninput = \"a\"\noutput = \"b\"\n",
            "m.toml:2: unknown field `bar`",
        ),
        (
            "[[job]]\ninput = \"a\"\noutput = \"b\"\njobs = 3\n",
            "m.toml:4: unknown field `jobs`",
        ),
        ("[other]\nx = 1\n", "m.toml:1: unknown field `other`"),
        (
            "[[job]]\nname = \"x\"\ninput = \"a\"\noutput = \"b\"\n\n[[job]]\nname = \"x\"\ninput = \"a\"\noutput = \"c\"\n",
            "m.toml:7: duplicate job name 'x' (first at line 1)",
        ),
        (
            "[[job]]\ninput = \"a\"\noutput = \"o/b\"\n[[job]]\ninput = \"c\"\noutput = \"o/./b\"\n",
            "m.toml:6: job 'c -> o/./b' writes /base/o/b, which job 'a -> o/b' (line 1) writes too",
        ),
        (
            "[[job]]\nname = \"self\"\ninput = \"a.bin\"\noutput = \"./a.bin\"\n",
            "m.toml:4: job 'self': output /base/a.bin is its own input",
        ),
        (
            "[[job]]\nname = \"p\"\ninput = \"a.bin\"\noutput = \"b.ckpt\"\n[[job]]\nname = \"q\"\ninput = \"c\"\noutput = \"a.bin\"\n",
            "m.toml:8: job 'q': output /base/a.bin is the input of job 'p' (line 1)",
        ),
        (
            "[[job]]\ninput = \"a\"\noutput = \"b\"\ndtype = \"fp8\"\n",
            "m.toml:4: unknown dtype 'fp8': expected fp32, fp16 or bf16",
        ),
        (
            "[[job]]\ninput = \"a\"\noutput = \"b\"\nn_head = 0\n",
            "m.toml:4: key 'n_head' must be a positive integer, got 0",
        ),
        (
            "[[job]]\ninput = \"a\"\noutput = \"b\"\nmax_shard_size = \"12 parsecs\"\n",
            "m.toml:4: key 'max_shard_size': invalid size '12 parsecs'",
        ),
        (
            "[[job]]\ninput = \"a\"\noutput = \"b\"\ndevice = \"tpu\"\n",
            "m.toml:4: unknown device 'tpu'",
        ),
        ("\n\n[[job]]\ninput = \"a\"\n", "m.toml:3: job has no 'output'"),
        (
            "[[job]]\ninput = \"a\"\noutput = \"b\"\nreversed = \"yes\"\n",
            "m.toml:4: key 'reversed' must be true or false, got the string \"yes\"",
        ),
        ("[defaults]\njobs = -1\n[[job]]\ninput = \"a\"\noutput = \"b\"\n", "m.toml:2: key 'jobs' must be a positive integer, got -1"),
        ("[[job]]\ninput = \"a\"\noutput = \"b\n", "m.toml:3:"),
        ("# empty\n", "m.toml: no [[job]] tables"),
    ];

    #[test]
    fn bad_manifests_name_the_line() {
        for (src, want) in BAD {
            let got = err(src);
            assert!(
                got.starts_with(want),
                "manifest:\n{src}\nexpected error starting with: {want}\ngot: {got}"
            );
        }
    }

    /// Issue 9 §4.9: a type error in the manifest's words, with its line.
    #[test]
    fn type_errors_in_the_manifest_words() {
        for (src, want) in [
            (
                "[[job]]\ninput = \"a\"\noutput = \"b\"\nn_head = \"4\"\n",
                "m.toml:4: key 'n_head' must be a positive integer, got the string \"4\"",
            ),
            (
                "[[job]]\ninput = \"a\"\noutput = 3\n",
                "m.toml:3: key 'output' must be a string, got the integer 3",
            ),
            (
                "[defaults]\njobs = \"2\"\n[[job]]\ninput = \"a\"\noutput = \"b\"\n",
                "m.toml:2: key 'jobs' must be a positive integer, got the string \"2\"",
            ),
            (
                "[[job]]\ninput = \"a\"\noutput = \"b\"\nmax_shard_size = 1.5\n",
                "m.toml:4: key 'max_shard_size' must be a size",
            ),
        ] {
            let got = err(src);
            assert!(got.starts_with(want), "want {want}\ngot  {got}");
        }
    }

    /// Issue 9 §4.2: an unknown model is refused before anything runs, with its line.
    #[test]
    fn unknown_model_names_the_line() {
        let got = err("[[job]]\ninput = \"a\"\noutput = \"b\"\n\n[[job]]\ninput = \"c\"\noutput = \"d\"\nmodel = \"lama\"\n");
        assert!(got.starts_with("m.toml:8: unknown model 'lama'"), "{got}");
        assert!(parse("[[job]]\ninput = \"a\"\noutput = \"b\"\nmodel = \"llama\"\n").is_ok());
    }

    #[test]
    fn sizes_are_the_cli_sizes() {
        let m =
            parse("[[job]]\ninput = \"a\"\noutput = \"b\"\nmax_shard_size = \"5Gb\"\n").unwrap();
        assert_eq!(
            m.jobs[0].spec.max_shard_size,
            crate::options::parse_size("5Gb").ok()
        );
        assert_eq!(m.jobs[0].spec.max_shard_size, Some(625_000_000));
    }

    #[test]
    fn integer_shard_size() {
        let m = parse("[[job]]\ninput = \"a\"\noutput = \"b\"\nmax_shard_size = 1000\n").unwrap();
        assert_eq!(m.jobs[0].spec.max_shard_size, Some(1000));
    }
}

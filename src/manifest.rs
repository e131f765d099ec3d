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
//! dtype = "fp32"        # optional; n_head, hidden_size, layers, device, max_shard_size likewise
//! ```
//!
//! Everything is checked before anything runs: unknown keys, bad values, duplicate names, two jobs writing one
//! output, an output that is also an input. Errors read `manifest.toml:LINE: message`.

use std::collections::HashMap;
use std::fmt;
use std::path::{Component, Path, PathBuf};

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use toml::Spanned;

use crate::convert::JobSpec;
use crate::tensor::DType;

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

/// A size in bytes: an HF size string (`"500KB"`, `"2GiB"`, `"5Gb"` = bits) or an integer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct SizeValue(u64);

impl<'de> Deserialize<'de> for SizeValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = SizeValue;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(
                    "a size: a positive integer (bytes) or a string like \"500MB\" or \"2GiB\"",
                )
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<SizeValue, E> {
                match u64::try_from(v) {
                    Ok(n) if n > 0 => Ok(SizeValue(n)),
                    _ => Err(E::custom(format!("size must be positive, got {v}"))),
                }
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<SizeValue, E> {
                if v == 0 {
                    return Err(E::custom("size must be positive, got 0"));
                }
                Ok(SizeValue(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<SizeValue, E> {
                parse_size(v).map(SizeValue).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// The keys of a `[[job]]` table; `[defaults]` accepts these plus `jobs`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJob {
    name: Option<Spanned<String>>,
    model: Option<Spanned<String>>,
    input: Option<Spanned<String>>,
    output: Option<Spanned<String>>,
    reversed: Option<Spanned<bool>>,
    dtype: Option<Spanned<String>>,
    n_head: Option<Spanned<i64>>,
    hidden_size: Option<Spanned<i64>>,
    layers: Option<Spanned<i64>>,
    device: Option<Spanned<String>>,
    max_shard_size: Option<Spanned<SizeValue>>,
    mlp_layout: Option<Spanned<String>>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDefaults {
    jobs: Option<Spanned<i64>>,
    name: Option<Spanned<String>>,
    model: Option<Spanned<String>>,
    input: Option<Spanned<String>>,
    output: Option<Spanned<String>>,
    reversed: Option<Spanned<bool>>,
    dtype: Option<Spanned<String>>,
    n_head: Option<Spanned<i64>>,
    hidden_size: Option<Spanned<i64>>,
    layers: Option<Spanned<i64>>,
    device: Option<Spanned<String>>,
    max_shard_size: Option<Spanned<SizeValue>>,
    mlp_layout: Option<Spanned<String>>,
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
            mlp_layout: self.mlp_layout,
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
        mlp_layout: job.mlp_layout.or_else(|| d.mlp_layout.clone()),
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

/// Parse an HF size: `"2GiB"`/`"500MiB"`/`"8KiB"` (powers of 1024), `"5GB"`/`"500MB"`/`"8KB"` (powers of 1000; a
/// lower-case final `b` means bits, as in HF's `convert_file_size_to_int`), a `TB`/`TiB` likewise, `"123B"` or
/// plain digits (bytes). Must be positive.
fn parse_size(s: &str) -> Result<u64, String> {
    const UNITS: &[(&str, u64)] = &[
        ("TIB", 1 << 40),
        ("GIB", 1 << 30),
        ("MIB", 1 << 20),
        ("KIB", 1 << 10),
        ("TB", 1_000_000_000_000),
        ("GB", 1_000_000_000),
        ("MB", 1_000_000),
        ("KB", 1_000),
        ("B", 1),
    ];
    let t = s.trim();
    let upper = t.to_ascii_uppercase();
    let (digits, mult, bits) = UNITS
        .iter()
        .find(|(u, _)| upper.ends_with(u))
        .map(|&(u, m)| {
            let num = &t[..t.len() - u.len()];
            // `5Gb`: bits (HF). Only for the decimal units with a unit letter before the `b`.
            let bits = u.len() == 2 && t.ends_with('b');
            (num.trim(), m, bits)
        })
        .unwrap_or((t, 1, false));
    let bad = || {
        format!("invalid size '{s}': expected an integer with an optional unit (B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)")
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let v = n
        .checked_mul(mult)
        .ok_or_else(|| format!("size '{s}' is too large"))?;
    let v = if bits { v / 8 } else { v };
    if v == 0 {
        return Err(format!("size '{s}' must be positive"));
    }
    Ok(v)
}

/// Parse a memory budget: a size as in the manifest's `max_shard_size` (`"8GiB"`, `"500MB"`, digits) or a
/// percentage of `available` bytes (`"50%"`).
pub fn parse_memory_budget(s: &str, available: u64) -> Result<u64, String> {
    if let Some(p) = s.trim().strip_suffix('%') {
        let pct: f64 = p
            .trim()
            .parse()
            .map_err(|_| format!("invalid memory budget '{s}': expected a size or a percentage"))?;
        if !(pct > 0.0 && pct <= 100.0) {
            return Err(format!(
                "invalid memory budget '{s}': percentage must be in (0, 100]"
            ));
        }
        // Precision loss is irrelevant at these magnitudes.
        return Ok(((available as f64) * pct / 100.0) as u64);
    }
    parse_size(s).map_err(|e| format!("invalid memory budget: {e}"))
}

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

    fn positive(
        &self,
        key: &str,
        v: &Option<Spanned<i64>>,
    ) -> Result<Option<usize>, ManifestError> {
        match v {
            None => Ok(None),
            Some(s) => match usize::try_from(*s.get_ref()) {
                Ok(n) if n > 0 => Ok(Some(n)),
                _ => self.err(
                    s.span(),
                    format!("{key} must be a positive integer, got {}", s.get_ref()),
                ),
            },
        }
    }

    fn build(&self, raw: RawJob, table: std::ops::Range<usize>) -> Result<BatchJob, ManifestError> {
        let line = line_of(self.src, table.start);
        let (Some(input), Some(output)) = (&raw.input, &raw.output) else {
            let missing = if raw.input.is_none() {
                "input"
            } else {
                "output"
            };
            return self.err(table, format!("job has no '{missing}'"));
        };
        for (key, v) in [("input", input), ("output", output)] {
            if v.get_ref().trim().is_empty() {
                return self.err(v.span(), format!("{key} is empty"));
            }
        }
        let name = match &raw.name {
            Some(n) => {
                let s = n.get_ref().trim();
                if s.is_empty() {
                    return self.err(n.span(), "name is empty");
                }
                if s.chars().any(char::is_control) {
                    return self.err(n.span(), "name contains a control character");
                }
                s.to_string()
            }
            None => format!("{} -> {}", input.get_ref(), output.get_ref()),
        };
        let model = match &raw.model {
            Some(m) if m.get_ref().trim().is_empty() => {
                return self.err(m.span(), "model is empty")
            }
            Some(m) => Some(m.get_ref().trim().to_string()),
            None => None,
        };
        let dtype = match &raw.dtype {
            None => None,
            Some(d) => match DType::from_cli(d.get_ref()) {
                Some(t) => Some(t),
                None => {
                    return self.err(
                        d.span(),
                        format!(
                            "unknown dtype '{}': expected fp32, fp16 or bf16",
                            d.get_ref()
                        ),
                    )
                }
            },
        };
        let device = match &raw.device {
            None => None,
            Some(d) => {
                let v = d.get_ref().as_str();
                let ok = matches!(v, "cpu" | "cuda" | "auto")
                    || v.strip_prefix("cuda:")
                        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
                if !ok {
                    return self.err(
                        d.span(),
                        format!("unknown device '{v}': expected cpu, cuda, cuda:N or auto"),
                    );
                }
                Some(v.to_string())
            }
        };
        let spec = JobSpec {
            model,
            input: resolve(self.base, input.get_ref()),
            output: resolve(self.base, output.get_ref()),
            reversed: raw.reversed.as_ref().is_some_and(|r| *r.get_ref()),
            dtype,
            n_head: self.positive("n_head", &raw.n_head)?,
            hidden_size: self.positive("hidden_size", &raw.hidden_size)?,
            layers: self.positive("layers", &raw.layers)?,
            device,
            max_shard_size: raw.max_shard_size.as_ref().map(|s| s.get_ref().0),
            mlp_layout: match &raw.mlp_layout {
                None => None,
                Some(m) => match crate::convert::parse_mlp_layout(m.get_ref()) {
                    Ok(v) => Some(v),
                    Err(e) => return self.err(m.span(), e),
                },
            },
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
            "m.toml:4: n_head must be a positive integer, got 0",
        ),
        (
            "[[job]]\ninput = \"a\"\noutput = \"b\"\nmax_shard_size = \"12 parsecs\"\n",
            "m.toml:4: invalid size '12 parsecs'",
        ),
        (
            "[[job]]\ninput = \"a\"\noutput = \"b\"\ndevice = \"tpu\"\n",
            "m.toml:4: unknown device 'tpu'",
        ),
        ("\n\n[[job]]\ninput = \"a\"\n", "m.toml:3: job has no 'output'"),
        (
            "[[job]]\ninput = \"a\"\noutput = \"b\"\nreversed = \"yes\"\n",
            "m.toml:4: invalid type",
        ),
        ("[defaults]\njobs = -1\n[[job]]\ninput = \"a\"\noutput = \"b\"\n", "m.toml:2: jobs must be"),
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

    #[test]
    fn sizes() {
        for (s, v) in [
            ("500KB", Ok(500_000)),
            ("2GiB", Ok(2u64 << 30)),
            ("5Gb", Ok(625_000_000)),
            ("10mb", Ok(1_250_000)),
            ("10MiB", Ok(10 << 20)),
            ("123", Ok(123)),
            ("7B", Ok(7)),
            (" 1 KiB ", Ok(1024)),
            ("0", Err(())),
            ("GB", Err(())),
            ("1.5GB", Err(())),
            ("-1", Err(())),
            ("99999999999TiB", Err(())),
        ] {
            assert_eq!(parse_size(s).map_err(|_| ()), v, "{s}");
        }
        assert_eq!(parse_memory_budget("50%", 1000), Ok(500));
        assert_eq!(parse_memory_budget("1KiB", 1000), Ok(1024));
        assert!(parse_memory_budget("0%", 1000).is_err());
        assert!(parse_memory_budget("150%", 1000).is_err());
    }

    #[test]
    fn integer_shard_size() {
        let m = parse("[[job]]\ninput = \"a\"\noutput = \"b\"\nmax_shard_size = 1000\n").unwrap();
        assert_eq!(m.jobs[0].spec.max_shard_size, Some(1000));
    }
}

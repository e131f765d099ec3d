//! Regression files for CI: every output tensor's sha256 per job (`--write-golden`), and the diff of a run
//! against them (`--check`).
//!
//! ```json
//! {"tool": "convert-weight", "version": "0.1.0",
//!  "jobs": {"llama-to-ms": {"tensors": {"model.embed_tokens.weight": "5f1c...", "...": "..."}}}}
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::fsio::{self, FsError};

/// A golden file that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum GoldenError {
    #[error(transparent)]
    Io(#[from] FsError),
    #[error("{}: not a convert-batch golden file: {msg}", path.display())]
    Parse { path: PathBuf, msg: String },
}

/// Why a job's tensors do not match the golden file.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Mismatch {
    #[error("job '{0}' is not in the golden file")]
    NotInGolden(String),
    #[error("{0}")]
    Differs(Diff),
}

/// One job's tensors: name → sha256, in write order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GoldenJob {
    pub tensors: serde_json::Map<String, serde_json::Value>,
}

/// A golden file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Golden {
    pub tool: String,
    pub version: String,
    /// Job name → its tensors (sorted by job name).
    pub jobs: BTreeMap<String, GoldenJob>,
}

/// How a job's tensors differ from the golden file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Diff {
    /// In the golden file, not in the output.
    pub missing: Vec<String>,
    /// In the output, not in the golden file.
    pub extra: Vec<String>,
    /// In both with other bytes.
    pub changed: Vec<String>,
}

impl Diff {
    pub fn is_empty(&self) -> bool {
        self.missing.is_empty() && self.extra.is_empty() && self.changed.is_empty()
    }
}

/// Lists at most this many names per kind in a message.
const LIST_MAX: usize = 20;

fn list(names: &[String]) -> String {
    let mut s = names
        .iter()
        .take(LIST_MAX)
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > LIST_MAX {
        s.push_str(&format!(", ... ({} more)", names.len() - LIST_MAX));
    }
    s
}

impl std::fmt::Display for Diff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        for (what, names) in [
            ("changed", &self.changed),
            ("missing", &self.missing),
            ("extra", &self.extra),
        ] {
            if !names.is_empty() {
                parts.push(format!("{} {what}: {}", names.len(), list(names)));
            }
        }
        write!(
            f,
            "output differs from the golden file: {}",
            parts.join("; ")
        )
    }
}

impl Golden {
    /// An empty golden file stamped with this tool's version.
    pub fn new() -> Golden {
        Golden {
            tool: env!("CARGO_PKG_NAME").to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            jobs: BTreeMap::new(),
        }
    }

    /// Record a job's tensors (name, sha256).
    pub fn insert(&mut self, job: &str, tensors: &[(String, String)]) {
        let map = tensors
            .iter()
            .map(|(n, h)| (n.clone(), serde_json::Value::String(h.clone())))
            .collect();
        self.jobs
            .insert(job.to_string(), GoldenJob { tensors: map });
    }

    /// Read a golden file.
    pub fn read(path: &Path) -> Result<Golden, GoldenError> {
        let text = std::fs::read_to_string(path).map_err(|e| FsError::new(path, e))?;
        serde_json::from_str(&text).map_err(|e| GoldenError::Parse {
            path: path.to_path_buf(),
            msg: e.to_string(),
        })
    }

    /// Write it as pretty JSON (atomically and durably).
    pub fn write(&self, path: &Path) -> Result<(), FsError> {
        let text = serde_json::to_string_pretty(self).unwrap_or_default();
        fsio::write_atomic(path, text.as_bytes())
    }

    /// Compare a job's tensors with the golden file: `Err` names what is wrong.
    pub fn check(&self, job: &str, tensors: &[(String, String)]) -> Result<(), Mismatch> {
        let Some(g) = self.jobs.get(job) else {
            return Err(Mismatch::NotInGolden(job.to_string()));
        };
        let mut d = Diff::default();
        let mut seen = std::collections::HashSet::new();
        for (name, hash) in tensors {
            seen.insert(name.as_str());
            match g.tensors.get(name) {
                None => d.extra.push(name.clone()),
                Some(serde_json::Value::String(h)) if h == hash && !hash.is_empty() => {}
                Some(_) => d.changed.push(name.clone()),
            }
        }
        d.missing = g
            .tensors
            .keys()
            .filter(|k| !seen.contains(k.as_str()))
            .cloned()
            .collect();
        if d.is_empty() {
            Ok(())
        } else {
            Err(Mismatch::Differs(d))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn diff_lists_missing_extra_changed() {
        let mut g = Golden::new();
        g.insert("j", &t(&[("a", "1"), ("b", "2"), ("c", "3")]));
        assert_eq!(
            g.check("j", &t(&[("a", "1"), ("b", "2"), ("c", "3")])),
            Ok(())
        );
        let e = g
            .check("j", &t(&[("a", "1"), ("b", "X"), ("d", "4")]))
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "output differs from the golden file: 1 changed: b; 1 missing: c; 1 extra: d"
        );
        // An unhashed tensor never matches.
        assert!(g
            .check("j", &t(&[("a", ""), ("b", "2"), ("c", "3")]))
            .is_err());
        assert_eq!(
            g.check("other", &[]).unwrap_err().to_string(),
            "job 'other' is not in the golden file"
        );
    }

    #[test]
    fn write_read_round_trip() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("g.json");
        let mut g = Golden::new();
        g.insert("j", &t(&[("z", "1"), ("a", "2")]));
        g.write(&p).unwrap();
        let back = Golden::read(&p).unwrap();
        assert_eq!(back, g);
        // Write order of tensors is kept.
        assert_eq!(
            back.jobs["j"].tensors.keys().collect::<Vec<_>>(),
            ["z", "a"]
        );
    }
}

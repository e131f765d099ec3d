//! Shard selection: which slice of a manifest's jobs one process (one Slurm array task, one Kubernetes index)
//! runs. Jobs are assigned by a stable hash of their name, so every machine picks the same slice.

use crate::manifest::BatchJob;

/// A `--shard` argument that cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ShardError {
    #[error("invalid --shard '{0}': expected K/N (1 <= K <= N) or auto/N")]
    Syntax(String),
    #[error("--shard auto: {var}='{value}' is not a number")]
    NotANumber { var: String, value: String },
    #[error("--shard auto: SLURM_ARRAY_TASK_ID {id} is below SLURM_ARRAY_TASK_MIN {min}")]
    BelowMin { id: u64, min: u64 },
    #[error("--shard auto/N needs SLURM_ARRAY_TASK_ID or JOB_COMPLETION_INDEX in the environment")]
    NoIndex,
    #[error("--shard {arg}: index {} (0-based {index}) is outside 1..={count}", index + 1)]
    OutOfRange { arg: String, index: u64, count: u64 },
}

/// 64-bit FNV-1a: a stable hash (never Rust's randomised one) so every machine picks the same slice.
pub fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// A `--shard` argument: which slice of the jobs this process runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    /// 0-based index, `< count`.
    pub index: u64,
    pub count: u64,
}

impl Shard {
    /// Parse `K/N` (1-based K) or `auto/N`, which reads the 0-based index from `SLURM_ARRAY_TASK_ID` (minus
    /// `SLURM_ARRAY_TASK_MIN` when set) or `JOB_COMPLETION_INDEX` through `env`.
    pub fn parse(s: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Shard, ShardError> {
        let bad = || ShardError::Syntax(s.to_string());
        let (k, n) = s.split_once('/').ok_or_else(bad)?;
        let count: u64 = n.trim().parse().map_err(|_| bad())?;
        if count == 0 {
            return Err(bad());
        }
        let index =
            if k.trim() == "auto" {
                let num =
                    |var: &str| -> Result<Option<u64>, ShardError> {
                        match env(var) {
                            None => Ok(None),
                            Some(v) => v.trim().parse::<u64>().map(Some).map_err(|_| {
                                ShardError::NotANumber {
                                    var: var.to_string(),
                                    value: v.clone(),
                                }
                            }),
                        }
                    };
                match (num("SLURM_ARRAY_TASK_ID")?, num("JOB_COMPLETION_INDEX")?) {
                    (Some(id), _) => {
                        let min = num("SLURM_ARRAY_TASK_MIN")?.unwrap_or(0);
                        id.checked_sub(min)
                            .ok_or(ShardError::BelowMin { id, min })?
                    }
                    (None, Some(i)) => i,
                    (None, None) => return Err(ShardError::NoIndex),
                }
            } else {
                let k: u64 = k.trim().parse().map_err(|_| bad())?;
                if k == 0 {
                    return Err(bad());
                }
                k - 1
            };
        if index >= count {
            return Err(ShardError::OutOfRange {
                arg: s.to_string(),
                index,
                count,
            });
        }
        Ok(Shard { index, count })
    }

    /// Whether the job named `name` belongs to this shard.
    pub fn contains(&self, name: &str) -> bool {
        fnv1a(name) % self.count == self.index
    }

    /// The jobs of this shard, in manifest order.
    pub fn select<'a>(&self, jobs: &'a [BatchJob]) -> Vec<&'a BatchJob> {
        jobs.iter().filter(|j| self.contains(&j.name)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::options::JobSpec;
    use std::collections::HashSet;

    #[test]
    fn shards_cover_every_job_once() {
        let names: Vec<String> = (0..200).map(|i| format!("job-{i}")).collect();
        let js: Vec<BatchJob> = names
            .iter()
            .map(|n| BatchJob {
                name: n.clone(),
                spec: JobSpec::default(),
                line: 1,
            })
            .collect();
        let env = |_: &str| None;
        let mut seen = HashSet::new();
        let mut sizes = Vec::new();
        for k in 1..=3 {
            let s = Shard::parse(&format!("{k}/3"), &env).unwrap();
            let sel = s.select(&js);
            sizes.push(sel.len());
            for j in sel {
                assert!(seen.insert(j.name.clone()), "{} in two shards", j.name);
            }
        }
        assert_eq!(seen.len(), names.len());
        assert!(sizes.iter().all(|&s| s > 40), "unbalanced: {sizes:?}");
        // Stable across processes and platforms.
        assert_eq!(fnv1a("a"), 0xaf63dc4c8601ec8c);
    }

    #[test]
    fn shard_arguments() {
        let none = |_: &str| None;
        let slurm = |k: &str| match k {
            "SLURM_ARRAY_TASK_ID" => Some("4".to_string()),
            "SLURM_ARRAY_TASK_MIN" => Some("3".to_string()),
            _ => None,
        };
        let k8s = |k: &str| (k == "JOB_COMPLETION_INDEX").then(|| "2".to_string());
        assert_eq!(Shard::parse("2/3", &none), Ok(Shard { index: 1, count: 3 }));
        assert_eq!(
            Shard::parse("auto/3", &slurm),
            Ok(Shard { index: 1, count: 3 })
        );
        assert_eq!(
            Shard::parse("auto/3", &k8s),
            Ok(Shard { index: 2, count: 3 })
        );
        for bad in ["0/3", "4/3", "1/0", "x/2", "3", "auto/2"] {
            let env: &dyn Fn(&str) -> Option<String> = if bad == "auto/2" { &k8s } else { &none };
            assert!(Shard::parse(bad, env).is_err(), "{bad}");
        }
        assert!(Shard::parse("auto/3", &none)
            .unwrap_err()
            .to_string()
            .contains("SLURM_ARRAY_TASK_ID"));
    }
}

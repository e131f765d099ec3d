//! The options of one job, shared by the `convert-weight` command line, the batch manifest and the fingerprint
//! record: [`JobSpec`] and the one parser of each value (size, dtype, device, positive hyper-parameter).
//!
//! Sizes follow HF's `convert_file_size_to_int`: `KB`/`MB`/`GB`/`TB` are powers of 1000, `KiB`/`MiB`/`GiB`/`TiB`
//! powers of 1024 (units case-insensitive), a lower-case final `b` after a decimal unit means bits (`5Gb` =
//! 625,000,000 bytes), `B` or bare digits are bytes. Only whole numbers; the size must be positive.

use std::path::PathBuf;

use crate::tensor::DType;

/// Everything that defines one conversion (a `convert-weight` call or one `[[job]]` of a manifest).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct JobSpec {
    /// Model family key or alias; `None` means a pure format conversion.
    pub model: Option<String>,
    pub input: PathBuf,
    pub output: PathBuf,
    pub reversed: bool,
    /// Cast floating tensors to this dtype.
    pub dtype: Option<DType>,
    pub n_head: Option<usize>,
    pub hidden_size: Option<usize>,
    pub layers: Option<usize>,
    /// `cpu`, `cuda`, `cuda:N` or `auto` (`None` = auto).
    pub device: Option<String>,
    /// Split the output into HF shards of at most this many bytes.
    pub max_shard_size: Option<u64>,
    /// Distributed inputs: keep optimizer state (moments, step counters) instead of dropping it by named rules.
    pub keep_optimizer: bool,
    /// Distributed MindSpore inputs: the strategy file or per-stage folder, when it is not in the input's root.
    pub strategy: Option<PathBuf>,
    /// MindFormers mcore `linear_fc1` layout: `Some(true)` interleaved, `Some(false)` contiguous (`--mlp-layout`).
    pub mlp_layout: Option<bool>,
    /// torch training checkpoints: the entry holding the model's state dict (`None`: chosen by the usual names).
    pub state_dict_key: Option<String>,
}

/// A value of a job option that cannot be used. The messages name the value, not where it came from: the CLI and
/// the manifest add their own place (`--dtype`, `jobs.toml:4: key 'dtype'`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OptionError {
    #[error("invalid size '{0}': expected a whole number with an optional unit (B, KB, MB, GB, TB, KiB, MiB, GiB, TiB; a lower-case final b means bits)")]
    Size(String),
    #[error("size '{0}' is too large")]
    SizeTooLarge(String),
    #[error("size '{0}' must be positive")]
    SizeZero(String),
    #[error("invalid memory budget '{0}': expected a size or a percentage in (0, 100]")]
    Budget(String),
    #[error("unknown dtype '{0}': expected fp32, fp16 or bf16")]
    Dtype(String),
    #[error("unknown device '{0}': expected cpu, cuda, cuda:N or auto")]
    Device(String),
    #[error("must be a positive integer, got {0}")]
    NotPositive(String),
    #[error(
        "unknown MLP layout '{0}': expected interleaved (MindFormers 2.1.0) or contiguous (2.0.0)"
    )]
    MlpLayout(String),
}

/// Parse a size (see the module docs).
pub fn parse_size(s: &str) -> Result<u64, OptionError> {
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
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(OptionError::Size(s.to_string()));
    }
    let n: u64 = digits
        .parse()
        .map_err(|_| OptionError::SizeTooLarge(s.to_string()))?;
    let v = n
        .checked_mul(mult)
        .ok_or_else(|| OptionError::SizeTooLarge(s.to_string()))?;
    let v = if bits { v / 8 } else { v };
    if v == 0 {
        return Err(OptionError::SizeZero(s.to_string()));
    }
    Ok(v)
}

/// Parse a memory budget: a size as [`parse_size`] or a percentage of `available` bytes (`"50%"`).
pub fn parse_memory_budget(s: &str, available: u64) -> Result<u64, OptionError> {
    if let Some(p) = s.trim().strip_suffix('%') {
        let pct: f64 = p
            .trim()
            .parse()
            .map_err(|_| OptionError::Budget(s.to_string()))?;
        if !(pct > 0.0 && pct <= 100.0) {
            return Err(OptionError::Budget(s.to_string()));
        }
        // Precision loss is irrelevant at these magnitudes.
        return Ok(((available as f64) * pct / 100.0) as u64);
    }
    parse_size(s)
}

/// Parse a dtype as the user spells it: `fp32`, `fp16`, `bf16`.
pub fn parse_dtype(s: &str) -> Result<DType, OptionError> {
    DType::from_cli(s.trim()).ok_or_else(|| OptionError::Dtype(s.to_string()))
}

/// Parse an MLP layout (`--mlp-layout`, manifest `mlp_layout`): `interleaved` (MindFormers 2.1.0) → true,
/// `contiguous` (2.0.0) → false.
pub fn parse_mlp_layout(s: &str) -> Result<bool, OptionError> {
    match s.trim() {
        "interleaved" => Ok(true),
        "contiguous" => Ok(false),
        _ => Err(OptionError::MlpLayout(s.to_string())),
    }
}

/// Parse a device: `cpu`, `cuda`, `cuda:N` or `auto`.
pub fn parse_device(s: &str) -> Result<String, OptionError> {
    let v = s.trim();
    let ok = matches!(v, "cpu" | "cuda" | "auto")
        || v.strip_prefix("cuda:")
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    if ok {
        Ok(v.to_string())
    } else {
        Err(OptionError::Device(s.to_string()))
    }
}

/// A hyper-parameter (`n_head`, `hidden_size`, `layers`) or a count (`jobs`): a positive integer.
pub fn positive(v: i64) -> Result<usize, OptionError> {
    match usize::try_from(v) {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(OptionError::NotPositive(v.to_string())),
    }
}

/// [`positive`] from text (the command line).
pub fn parse_positive(s: &str) -> Result<usize, OptionError> {
    match s.trim().parse::<i64>() {
        Ok(v) => positive(v),
        Err(_) => Err(OptionError::NotPositive(format!("'{s}'"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_follow_hf() {
        for (s, v) in [
            ("500KB", Some(500_000)),
            ("2GiB", Some(2u64 << 30)),
            ("2gib", Some(2u64 << 30)),
            ("5GB", Some(5_000_000_000)),
            ("5Gb", Some(625_000_000)),
            ("10mb", Some(1_250_000)),
            ("10MiB", Some(10 << 20)),
            ("123", Some(123)),
            ("7B", Some(7)),
            (" 1 KiB ", Some(1024)),
            ("0", None),
            ("GB", None),
            ("1.5GB", None),
            ("-1", None),
            ("5 parsecs", None),
            ("99999999999TiB", None),
        ] {
            assert_eq!(parse_size(s).ok(), v, "{s}");
        }
        assert_eq!(parse_memory_budget("50%", 1000), Ok(500));
        assert_eq!(parse_memory_budget("1KiB", 1000), Ok(1024));
        assert!(parse_memory_budget("0%", 1000).is_err());
        assert!(parse_memory_budget("150%", 1000).is_err());
    }

    #[test]
    fn dtypes_devices_counts() {
        assert_eq!(parse_dtype("bf16"), Ok(DType::BF16));
        assert!(parse_dtype("fp8").is_err());
        assert_eq!(parse_device("cuda:1").as_deref(), Ok("cuda:1"));
        for bad in ["tpu", "cuda:", "cuda:x"] {
            assert!(parse_device(bad).is_err(), "{bad}");
        }
        assert_eq!(positive(4), Ok(4));
        assert!(positive(0).is_err());
        assert!(positive(-3).is_err());
        assert_eq!(parse_positive("8"), Ok(8));
        assert_eq!(
            parse_positive("0").unwrap_err().to_string(),
            "must be a positive integer, got 0"
        );
    }
}

//! The batch report: JSON for machines (`{"jobs": [...], "summary": {...}}`), a table for people, JUnit XML for CI.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// How a job ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Converted (and matched the golden file, with `--check`).
    Ok,
    /// Failed: planning, conversion, a panic, or a golden mismatch. `error` says why.
    Failed,
    /// Up to date: its fingerprint matched and its outputs were intact, so nothing ran.
    Skipped,
    /// Stopped by a signal (or never started because of one).
    Cancelled,
}

impl Status {
    /// The word used in tables and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Failed => "failed",
            Status::Skipped => "skipped",
            Status::Cancelled => "cancelled",
        }
    }
}

/// One input file of a job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputEntry {
    pub path: String,
    pub bytes: u64,
}

/// One output file of a job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputEntry {
    pub path: String,
    pub bytes: u64,
    /// sha256 of the whole file (null if the engine did not hash it).
    pub sha256: Option<String>,
}

/// One job's line of the report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobReport {
    pub name: String,
    pub model: Option<String>,
    pub reversed: bool,
    pub status: Status,
    pub inputs: Vec<InputEntry>,
    pub outputs: Vec<OutputEntry>,
    /// Number of output tensors.
    pub tensors: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
    /// Wall time of the job (plan + run), 0 for a skipped job.
    pub seconds: f64,
    /// VmHWM of the process at the job's end (per job only when jobs ran one at a time), null if unknown.
    pub peak_rss_bytes: Option<u64>,
    pub warnings: Vec<String>,
    /// The whole cause chain, null unless failed or cancelled.
    pub error: Option<String>,
}

/// Counts and totals over the jobs of a report.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub jobs: u64,
    pub ok: u64,
    pub failed: u64,
    pub skipped: u64,
    pub cancelled: u64,
    pub tensors: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
    /// Sum of the jobs' seconds (more than the wall time when jobs overlap).
    pub seconds: f64,
    /// Largest `peak_rss_bytes` of any job.
    pub peak_rss_bytes: Option<u64>,
}

/// A whole report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub jobs: Vec<JobReport>,
    pub summary: Summary,
}

/// Errors of reading or merging reports.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("{path}: {msg}")]
    Read { path: String, msg: String },
    #[error("job '{name}' is in both {first} and {second}")]
    Duplicate {
        name: String,
        first: String,
        second: String,
    },
}

impl Summary {
    /// Recompute the summary of `jobs`.
    pub fn of(jobs: &[JobReport]) -> Summary {
        let mut s = Summary::default();
        for j in jobs {
            s.jobs += 1;
            match j.status {
                Status::Ok => s.ok += 1,
                Status::Failed => s.failed += 1,
                Status::Skipped => s.skipped += 1,
                Status::Cancelled => s.cancelled += 1,
            }
            s.tensors = s.tensors.saturating_add(j.tensors);
            s.bytes_read = s.bytes_read.saturating_add(j.bytes_read);
            s.bytes_written = s.bytes_written.saturating_add(j.bytes_written);
            s.seconds += j.seconds;
            s.peak_rss_bytes = s.peak_rss_bytes.max(j.peak_rss_bytes);
        }
        s
    }
}

impl Report {
    /// A report of these jobs, summary computed.
    pub fn new(jobs: Vec<JobReport>) -> Report {
        let summary = Summary::of(&jobs);
        Report { jobs, summary }
    }

    /// Whether every job is ok or skipped.
    pub fn all_succeeded(&self) -> bool {
        self.jobs
            .iter()
            .all(|j| matches!(j.status, Status::Ok | Status::Skipped))
    }

    /// Read a report written by `--report`.
    pub fn read(path: &Path) -> Result<Report, ReportError> {
        let err = |msg: String| ReportError::Read {
            path: path.display().to_string(),
            msg,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        serde_json::from_str(&text).map_err(|e| err(format!("not a convert-batch report: {e}")))
    }

    /// Combine reports of shards of one manifest: jobs concatenated in argument order, summary recomputed.
    /// A job name in two reports is an error.
    pub fn merge(reports: Vec<(String, Report)>) -> Result<Report, ReportError> {
        let mut seen: HashMap<String, String> = HashMap::new();
        let mut jobs = Vec::new();
        for (origin, r) in reports {
            for j in r.jobs {
                if let Some(first) = seen.get(&j.name) {
                    return Err(ReportError::Duplicate {
                        name: j.name,
                        first: first.clone(),
                        second: origin,
                    });
                }
                seen.insert(j.name.clone(), origin.clone());
                jobs.push(j);
            }
        }
        Ok(Report::new(jobs))
    }

    /// Pretty JSON.
    pub fn to_json(&self) -> String {
        // Serialising plain data with string keys cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// A table for people: one row per job, then the errors in full, then the summary line.
    pub fn to_table(&self) -> String {
        let header = [
            "STATUS", "JOB", "TENSORS", "READ", "WRITTEN", "SECONDS", "PEAK RSS",
        ];
        let rows: Vec<[String; 7]> = self
            .jobs
            .iter()
            .map(|j| {
                [
                    j.status.as_str().to_string(),
                    j.name.clone(),
                    j.tensors.to_string(),
                    human_bytes(j.bytes_read),
                    human_bytes(j.bytes_written),
                    format!("{:.2}", j.seconds),
                    j.peak_rss_bytes
                        .map(human_bytes)
                        .unwrap_or_else(|| "-".into()),
                ]
            })
            .collect();
        let mut w = header.map(|h| h.chars().count());
        for r in &rows {
            for (i, c) in r.iter().enumerate() {
                w[i] = w[i].max(c.chars().count());
            }
        }
        let mut out = String::new();
        let line = |out: &mut String, cells: &[String]| {
            let mut l = String::new();
            for (i, c) in cells.iter().enumerate() {
                // Name left-aligned, figures right-aligned.
                if i <= 1 {
                    let _ = write!(l, "{:<width$}  ", c, width = w[i]);
                } else {
                    let _ = write!(l, "{:>width$}  ", c, width = w[i]);
                }
            }
            out.push_str(l.trim_end());
            out.push('\n');
        };
        line(&mut out, &header.map(String::from));
        for r in &rows {
            line(&mut out, r);
        }
        for j in &self.jobs {
            if let Some(e) = &j.error {
                let _ = writeln!(out, "{} {}: {}", j.status.as_str(), j.name, e);
            }
            for wmsg in &j.warnings {
                let _ = writeln!(out, "warning {}: {}", j.name, wmsg);
            }
        }
        let s = &self.summary;
        let _ = writeln!(
            out,
            "{} jobs: {} ok, {} failed, {} skipped, {} cancelled; {} tensors, {} read, {} written, {:.2} s",
            s.jobs,
            s.ok,
            s.failed,
            s.skipped,
            s.cancelled,
            s.tensors,
            human_bytes(s.bytes_read),
            human_bytes(s.bytes_written),
            s.seconds
        );
        out
    }

    /// JUnit XML: one testsuite, one testcase per job; failed → `<failure>`, cancelled → `<error>`, skipped →
    /// `<skipped>` (up to date).
    pub fn to_junit(&self) -> String {
        let s = &self.summary;
        let mut x = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
        let _ = writeln!(
            x,
            "<testsuites tests=\"{}\" failures=\"{}\" errors=\"{}\" skipped=\"{}\" time=\"{:.3}\">",
            s.jobs, s.failed, s.cancelled, s.skipped, s.seconds
        );
        let _ = writeln!(
            x,
            "  <testsuite name=\"convert-batch\" tests=\"{}\" failures=\"{}\" errors=\"{}\" skipped=\"{}\" time=\"{:.3}\">",
            s.jobs, s.failed, s.cancelled, s.skipped, s.seconds
        );
        for j in &self.jobs {
            let _ = write!(
                x,
                "    <testcase classname=\"convert-batch\" name=\"{}\" time=\"{:.3}\"",
                xml_escape(&j.name),
                j.seconds
            );
            let err = xml_escape(j.error.as_deref().unwrap_or(""));
            match j.status {
                Status::Ok => x.push_str("/>\n"),
                Status::Skipped => {
                    x.push_str(">\n      <skipped message=\"up to date\"/>\n    </testcase>\n")
                }
                Status::Failed => {
                    let _ = write!(
                        x,
                        ">\n      <failure message=\"{err}\" type=\"failed\">{err}</failure>\n    </testcase>\n"
                    );
                }
                Status::Cancelled => {
                    let _ = write!(
                        x,
                        ">\n      <error message=\"{err}\" type=\"cancelled\">{err}</error>\n    </testcase>\n"
                    );
                }
            }
        }
        x.push_str("  </testsuite>\n</testsuites>\n");
        x
    }
}

/// Escape text for an XML attribute or element; drops characters XML 1.0 cannot hold.
fn xml_escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&apos;"),
            '\n' => o.push_str("&#10;"),
            '\t' => o.push_str("&#9;"),
            c if (c as u32) < 0x20 => {}
            c => o.push(c),
        }
    }
    o
}

/// `1.5 GiB`-style byte counts.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn job(name: &str, status: Status) -> JobReport {
        JobReport {
            name: name.into(),
            model: None,
            reversed: false,
            status,
            inputs: vec![InputEntry {
                path: "in.safetensors".into(),
                bytes: 10,
            }],
            outputs: vec![OutputEntry {
                path: "out.ckpt".into(),
                bytes: 12,
                sha256: Some("ab".into()),
            }],
            tensors: 2,
            bytes_read: 10,
            bytes_written: 12,
            seconds: 0.5,
            peak_rss_bytes: Some(100),
            warnings: vec![],
            error: (status == Status::Failed).then(|| "a: <b> & \"c\"".to_string()),
        }
    }

    #[test]
    fn summary_and_json_round_trip() {
        let r = Report::new(vec![
            job("a", Status::Ok),
            job("b", Status::Failed),
            job("c", Status::Skipped),
        ]);
        assert_eq!(r.summary.jobs, 3);
        assert_eq!(
            (r.summary.ok, r.summary.failed, r.summary.skipped),
            (1, 1, 1)
        );
        assert_eq!(r.summary.bytes_written, 36);
        assert!(!r.all_succeeded());
        let v: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(v["jobs"][1]["status"], "failed");
        assert_eq!(v["jobs"][0]["error"], serde_json::Value::Null);
        assert_eq!(v["jobs"][0]["outputs"][0]["sha256"], "ab");
        let back: Report = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn merge_recomputes_and_rejects_duplicates() {
        let a = Report::new(vec![job("a", Status::Ok)]);
        let b = Report::new(vec![job("b", Status::Failed), job("c", Status::Ok)]);
        let m = Report::merge(vec![("A.json".into(), a.clone()), ("B.json".into(), b)]).unwrap();
        assert_eq!(m.summary.jobs, 3);
        assert_eq!(m.summary.failed, 1);
        assert_eq!(
            m.jobs.iter().map(|j| j.name.as_str()).collect::<Vec<_>>(),
            ["a", "b", "c"]
        );
        let e =
            Report::merge(vec![("A.json".into(), a.clone()), ("C.json".into(), a)]).unwrap_err();
        assert_eq!(e.to_string(), "job 'a' is in both A.json and C.json");
    }

    #[test]
    fn junit_and_table() {
        let r = Report::new(vec![job("a", Status::Ok), job("b<1>", Status::Failed)]);
        let x = r.to_junit();
        assert!(x.contains("<testcase classname=\"convert-batch\" name=\"a\" time=\"0.500\"/>"));
        assert!(x.contains("name=\"b&lt;1&gt;\""));
        assert!(x.contains("<failure message=\"a: &lt;b&gt; &amp; &quot;c&quot;\""));
        assert!(x.contains("tests=\"2\" failures=\"1\""));
        let t = r.to_table();
        assert!(t.starts_with("STATUS"));
        assert!(t.contains("failed b<1>: a: <b> & \"c\""));
        assert!(t.contains("2 jobs: 1 ok, 1 failed, 0 skipped, 0 cancelled"));
    }
}

//! Progress on stderr while jobs run: indicatif bars in a terminal (sized to its width), plain lines otherwise,
//! and one `[k/N]` line per finished job, numbered in the order the lines appear.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::admission::lock;
use crate::report::{human_bytes, JobReport};

/// What to show on stderr while jobs run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgressMode {
    /// Nothing.
    Off,
    /// A line when a job ends and a status line at most every `interval`.
    Plain { interval: Duration },
    /// indicatif bars: one per running job and one for total bytes.
    Bars,
}

impl ProgressMode {
    /// Bars when stderr is a terminal, plain lines every 10 s otherwise; `Off` when `quiet`.
    pub fn auto(quiet: bool) -> ProgressMode {
        if quiet {
            ProgressMode::Off
        } else if std::io::stderr().is_terminal() {
            ProgressMode::Bars
        } else {
            ProgressMode::Plain {
                interval: Duration::from_secs(10),
            }
        }
    }
}

/// The indicatif side: the container, the total bar and one bar per running job.
type Bars = (MultiProgress, ProgressBar, Mutex<Vec<Option<ProgressBar>>>);

/// Width of stderr's terminal in columns (80 when unknown).
fn term_cols() -> usize {
    #[cfg(unix)]
    {
        // SAFETY: TIOCGWINSZ fills a winsize struct; fd 2 may be anything, failure is handled.
        let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
        let r = unsafe { libc::ioctl(2, libc::TIOCGWINSZ, &mut ws) };
        if r == 0 && ws.ws_col > 0 {
            return usize::from(ws.ws_col);
        }
    }
    80
}

/// Widest a human byte count gets (`1023.99 MiB`).
const BYTES_W: usize = 11;

/// Templates of the total bar and of a job bar for a terminal `cols` wide: fixed fields that leave the bar at
/// least 10 columns, the job name cut to fit, rate and eta only where they fit. No line is wider than `cols`
/// (for `cols` >= 40).
fn templates(cols: usize) -> (String, String) {
    // "total [" + bar + "] " + bytes + "/" + total
    let fixed = 5 + 2 + 2 + BYTES_W + 1 + BYTES_W;
    let total = if cols >= fixed + 1 + BYTES_W + 5 + 4 + 20 {
        format!("{{prefix:>5}} [{{wide_bar}}] {{bytes:>{BYTES_W}}}/{{total_bytes:<{BYTES_W}}} {{binary_bytes_per_sec:>{BYTES_W}}} eta {{eta:>4}}")
    } else {
        format!("{{prefix:>5}} [{{wide_bar}}] {{bytes:>{BYTES_W}}}/{{total_bytes:<{BYTES_W}}}")
    };
    // The job line: the same fields plus " " + name; the name gets what is left beyond a 10-column bar, up to 40.
    let name_w = cols.saturating_sub(fixed + 1 + 10).clamp(4, 40);
    let job = format!(
        "{{prefix:>5}} [{{wide_bar}}] {{bytes:>{BYTES_W}}}/{{total_bytes:<{BYTES_W}}} {{msg:<{name_w}!}}"
    );
    (total, job)
}

pub(super) struct Progress {
    mode: ProgressMode,
    names: Vec<String>,
    /// Bytes written so far per planned job, and its planned total.
    written: Vec<AtomicU64>,
    totals: Vec<u64>,
    grand_total: u64,
    /// Jobs finished; held while a `[k/N]` line is printed, so the lines come out in the order of k.
    finished: Mutex<usize>,
    running: Mutex<Vec<usize>>,
    last_line: Mutex<Instant>,
    bars: Option<Bars>,
    /// The job bars' template.
    job_style: Option<ProgressStyle>,
    /// Tests: the `[k/N]` lines as printed.
    #[cfg(test)]
    log: Mutex<Vec<String>>,
}

impl Progress {
    pub(super) fn new(mode: ProgressMode, names: Vec<String>, totals: Vec<u64>) -> Progress {
        Self::with_target(
            mode,
            names,
            totals,
            ProgressDrawTarget::stderr(),
            term_cols(),
        )
    }

    /// Bars drawn to `target`, a terminal `cols` wide.
    pub(super) fn with_target(
        mode: ProgressMode,
        names: Vec<String>,
        totals: Vec<u64>,
        target: ProgressDrawTarget,
        cols: usize,
    ) -> Progress {
        let grand_total = totals.iter().fold(0u64, |a, &b| a.saturating_add(b));
        let (total_t, job_t) = templates(cols);
        let style = |t: &str| {
            ProgressStyle::with_template(t)
                .ok()
                .map(|s| s.progress_chars("=> "))
        };
        let job_style = style(&job_t);
        let bars = (mode == ProgressMode::Bars).then(|| {
            let multi = MultiProgress::with_draw_target(target);
            let total = multi.add(ProgressBar::new(grand_total));
            if let Some(s) = style(&total_t) {
                total.set_style(s);
            }
            total.set_prefix("total");
            (multi, total, Mutex::new(vec![None; names.len()]))
        });
        Progress {
            mode,
            written: names.iter().map(|_| AtomicU64::new(0)).collect(),
            names,
            totals,
            grand_total,
            finished: Mutex::new(0),
            running: Mutex::new(Vec::new()),
            last_line: Mutex::new(Instant::now()),
            bars,
            job_style,
            #[cfg(test)]
            log: Mutex::new(Vec::new()),
        }
    }

    pub(super) fn started(&self, i: usize) {
        lock(&self.running).push(i);
        if let Some((multi, _, bars)) = &self.bars {
            let b = multi.add(ProgressBar::new(self.totals[i]));
            if let Some(s) = &self.job_style {
                b.set_style(s.clone());
            }
            b.set_prefix("job");
            b.set_message(self.names[i].clone());
            lock(bars)[i] = Some(b);
        }
    }

    pub(super) fn update(&self, i: usize, bytes: u64) {
        let prev = self.written[i].swap(bytes, Ordering::Relaxed);
        match self.mode {
            ProgressMode::Off => {}
            ProgressMode::Bars => {
                if let Some((_, total, bars)) = &self.bars {
                    if let Some(b) = &lock(bars)[i] {
                        b.set_position(bytes);
                    }
                    total.inc(bytes.saturating_sub(prev));
                }
            }
            ProgressMode::Plain { interval } => {
                let mut last = lock(&self.last_line);
                if last.elapsed() >= interval {
                    *last = Instant::now();
                    drop(last);
                    self.status_line();
                }
            }
        }
    }

    fn status_line(&self) {
        let done: u64 = self
            .written
            .iter()
            .map(|w| w.load(Ordering::Relaxed))
            .fold(0, u64::saturating_add);
        let running: Vec<String> = lock(&self.running)
            .iter()
            .map(|&i| {
                let w = self.written[i].load(Ordering::Relaxed);
                match self.totals[i] {
                    0 => self.names[i].clone(),
                    t => format!("{} {}%", self.names[i], w.saturating_mul(100) / t),
                }
            })
            .collect();
        eprintln!(
            "convert-batch: {}/{} jobs done, {} / {} written; running: {}",
            *lock(&self.finished),
            self.names.len(),
            human_bytes(done),
            human_bytes(self.grand_total),
            if running.is_empty() {
                "-".to_string()
            } else {
                running.join(", ")
            }
        );
    }

    pub(super) fn finished(&self, i: usize, r: &JobReport) {
        // Count and print under one lock: `[k/N]` lines appear in the order of k.
        let mut finished = lock(&self.finished);
        *finished += 1;
        let n = *finished;
        lock(&self.running).retain(|&k| k != i);
        let msg = format!(
            "[{n}/{}] {} {} ({:.2} s){}",
            self.names.len(),
            r.status.as_str(),
            r.name,
            r.seconds,
            r.error
                .as_ref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        );
        match (&self.mode, &self.bars) {
            (ProgressMode::Bars, Some((multi, total, bars))) => {
                if let Some(b) = lock(bars)[i].take() {
                    b.finish_and_clear();
                    multi.remove(&b);
                }
                // Jobs that wrote less than planned (or failed) still count as done in the total.
                let w = self.written[i].load(Ordering::Relaxed);
                total.inc(self.totals[i].saturating_sub(w));
                let _ = multi.println(&msg);
            }
            (ProgressMode::Plain { .. }, _) => eprintln!("convert-batch: {msg}"),
            _ => {}
        }
        #[cfg(test)]
        lock(&self.log).push(msg);
        drop(finished);
    }

    pub(super) fn close(&self) {
        if let Some((multi, total, _)) = &self.bars {
            total.finish_and_clear();
            let _ = multi.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Status;
    use indicatif::TermLike;
    use std::sync::Arc;

    /// A terminal `width` columns wide that keeps what is drawn, line by line.
    #[derive(Debug, Clone)]
    struct Screen {
        width: u16,
        lines: Arc<Mutex<Vec<String>>>,
    }

    impl TermLike for Screen {
        fn width(&self) -> u16 {
            self.width
        }
        fn move_cursor_up(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_down(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_right(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_left(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn write_line(&self, s: &str) -> std::io::Result<()> {
            lock(&self.lines).push(s.to_string());
            Ok(())
        }
        fn write_str(&self, s: &str) -> std::io::Result<()> {
            lock(&self.lines).push(s.to_string());
            Ok(())
        }
        fn clear_line(&self) -> std::io::Result<()> {
            Ok(())
        }
        fn flush(&self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn report(name: &str) -> JobReport {
        JobReport {
            name: name.to_string(),
            model: None,
            reversed: false,
            status: Status::Ok,
            inputs: vec![],
            outputs: vec![],
            tensors: 0,
            bytes_read: 0,
            bytes_written: 0,
            seconds: 0.0,
            peak_rss_bytes: None,
            warnings: vec![],
            error: None,
        }
    }

    /// Issue 9 §4.4: at 60 columns (and 40, and 200) no bar is wider than the terminal.
    #[test]
    fn bars_fit_the_terminal() {
        for cols in [40u16, 60, 80, 200] {
            let screen = Screen {
                width: cols,
                lines: Arc::default(),
            };
            let names = vec![
                "a-rather-long-job-name-llama-7b-to-mindspore-fp16".to_string(),
                "b".to_string(),
            ];
            let p = Progress::with_target(
                ProgressMode::Bars,
                names,
                vec![3 << 30, 1000],
                ProgressDrawTarget::term_like_with_hz(Box::new(screen.clone()), 200),
                usize::from(cols),
            );
            p.started(0);
            p.started(1);
            p.update(0, 1_500_000_000);
            p.update(1, 500);
            std::thread::sleep(Duration::from_millis(20));
            p.update(0, 2_500_000_000);
            if let Some((multi, _, _)) = &p.bars {
                let _ = multi.println("");
            }
            let drawn = lock(&screen.lines).clone();
            let bars: Vec<&String> = drawn.iter().filter(|l| l.contains('[')).collect();
            assert!(!bars.is_empty(), "nothing drawn at {cols} columns");
            for l in bars {
                let w = console_width(l);
                assert!(w <= usize::from(cols), "{w} > {cols} columns: {l:?}");
            }
            p.close();
        }
    }

    /// Display width of a line (ANSI escapes removed).
    fn console_width(s: &str) -> usize {
        let mut w = 0;
        let mut esc = false;
        for c in s.chars() {
            match (esc, c) {
                (false, '\x1b') => esc = true,
                (true, c) if c.is_ascii_alphabetic() => esc = false,
                (true, _) => {}
                (false, _) => w += 1,
            }
        }
        w
    }

    /// Issue 9 §4.3: with jobs finishing on several threads, the `[k/N]` lines come out in the order of k.
    #[test]
    fn finished_lines_are_in_order() {
        let n = 4000;
        let names: Vec<String> = (0..n).map(|i| format!("j{i}")).collect();
        let p = Progress::with_target(
            ProgressMode::Off,
            names,
            vec![1; n],
            ProgressDrawTarget::hidden(),
            80,
        );
        let reports: Vec<JobReport> = (0..n).map(|i| report(&format!("j{i}"))).collect();
        std::thread::scope(|s| {
            for t in 0..4 {
                let (p, reports) = (&p, &reports);
                s.spawn(move || {
                    for i in (t..n).step_by(4) {
                        p.finished(i, &reports[i]);
                    }
                });
            }
        });
        let log = lock(&p.log);
        assert_eq!(log.len(), n);
        for (k, l) in log.iter().enumerate() {
            assert!(l.starts_with(&format!("[{}/{n}] ", k + 1)), "line {k}: {l}");
        }
    }
}

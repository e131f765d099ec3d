//! Memory admission: the memory a job's plan says it will hold, the budget the running jobs share, and first-fit
//! admission under it (a job bigger than the whole budget runs alone).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// `MemAvailable` from /proc/meminfo, in bytes.
pub fn mem_available() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    proc_field_kb(&text, "MemAvailable:")
}

/// The process's peak resident set (VmHWM from /proc/self/status), in bytes.
pub fn peak_rss() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    proc_field_kb(&text, "VmHWM:")
}

/// Reset the process's peak RSS counter (Linux: write 5 to /proc/self/clear_refs). Best effort.
pub(super) fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", b"5").is_ok()
}

fn proc_field_kb(text: &str, key: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(key))?;
    let kb: u64 = line[key.len()..].split_whitespace().next()?.parse().ok()?;
    kb.checked_mul(1024)
}

/// The default memory budget: half of MemAvailable (no limit when it cannot be read).
pub fn default_memory_budget() -> u64 {
    mem_available().map_or(u64::MAX, |m| m / 2)
}

/// First-fit admission of planned jobs under a memory budget.
pub(super) struct Admission {
    state: Mutex<AdmState>,
    cv: Condvar,
    budget: u64,
}

struct AdmState {
    /// Indices (into the planned jobs) not started yet, in manifest order.
    pending: VecDeque<usize>,
    used: u64,
    running: usize,
}

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Admission {
    pub(super) fn new(n: usize, budget: u64) -> Admission {
        Admission {
            state: Mutex::new(AdmState {
                pending: (0..n).collect(),
                used: 0,
                running: 0,
            }),
            cv: Condvar::new(),
            budget,
        }
    }

    /// The next job to start (its peak reserved), or `None` when none is left. Returns at once with the first
    /// pending job when `cancel` is set (it will not run).
    pub(super) fn next(&self, peaks: &[u64], cancel: &AtomicBool) -> Option<(usize, bool)> {
        let mut st = lock(&self.state);
        loop {
            if st.pending.is_empty() {
                return None;
            }
            if cancel.load(Ordering::SeqCst) {
                return st.pending.pop_front().map(|i| (i, false));
            }
            let fits =
                |p: u64, st: &AdmState| st.running == 0 || st.used.saturating_add(p) <= self.budget;
            if let Some(pos) = st.pending.iter().position(|&i| fits(peaks[i], &st)) {
                let i = st.pending.remove(pos)?;
                st.used = st.used.saturating_add(peaks[i]);
                st.running += 1;
                return Some((i, true));
            }
            st = self
                .cv
                .wait_timeout(st, Duration::from_millis(200))
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
        }
    }

    pub(super) fn done(&self, peak: u64) {
        let mut st = lock(&self.state);
        st.used = st.used.saturating_sub(peak);
        st.running = st.running.saturating_sub(1);
        drop(st);
        self.cv.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_fields() {
        assert_eq!(
            proc_field_kb("VmPeak: 10 kB\nVmHWM:\t  2048 kB\n", "VmHWM:"),
            Some(2048 * 1024)
        );
        assert_eq!(proc_field_kb("VmHWM: x kB\n", "VmHWM:"), None);
    }
}

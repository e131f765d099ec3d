//! Choosing the compute device, and how one install serves machines with and without an NVIDIA GPU.
//!
//! A build with `--features cuda` links the CUDA driver library (`libcuda.so.1`; candle turns on cudarc's
//! dynamic linking), so that binary cannot even start on a machine without the NVIDIA driver. One install therefore
//! holds two artifacts side by side:
//!
//! - `convert-weight` / `convert-batch`: the plain CPU build, which starts everywhere;
//! - `convert-weight-cuda` / `convert-batch-cuda`: the same program built with `--features cuda`
//!   (`tools/build-cuda.sh` builds and places them).
//!
//! The plain build, when it starts, looks for its `-cuda` sibling; when one exists and the driver answers with at
//! least one device, it hands the whole run to it (`exec`, same arguments; see [`reexec_cuda_build_if_present`]).
//! Otherwise it computes on the CPU. The CUDA build itself never hands over.
//!
//! `--device auto` (the default) then tells the truth on each machine: CUDA when this process has CUDA and a device
//! answers (round robin over the devices, one per job, so `convert-batch` uses every GPU), else the CPU, with one note on stderr when that could surprise (`auto` asked for explicitly, a CUDA build
//! without a device, or a GPU present that this build cannot use). `--device cuda[:N]` without a usable device is a
//! one-line error, never a crash.

use std::sync::Once;

use candle_core::Device;

/// Environment variable that stops the plain build from handing over to the CUDA build (`1`), or names the CUDA
/// build to hand over to (a path).
pub const CUDA_EXE_ENV: &str = "CONVERT_WEIGHT_CUDA_EXE";

/// Marks a process started by the hand-over, so that it never hands over again.
const HANDED_OVER_ENV: &str = "CONVERT_WEIGHT_HANDED_OVER";

/// Whether this binary was built with CUDA support.
pub fn cuda_built() -> bool {
    cfg!(feature = "cuda")
}

/// Print `msg` as a note on stderr, once per process.
fn note_once(msg: &str) {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| eprintln!("note: {msg}"));
}

/// Resolve a device spec (`cpu`, `cuda`, `cuda:N`, `auto`; `None` = `auto`) to a candle device. Errors are one line.
pub fn resolve(spec: Option<&str>) -> Result<Device, String> {
    let explicit_auto = spec == Some("auto");
    match spec.unwrap_or("auto") {
        "cpu" => Ok(Device::Cpu),
        "auto" => {
            if cuda_built() {
                match open_cuda(next_auto_ordinal()) {
                    Ok(d) => Ok(d),
                    Err(e) => {
                        note_once(&format!(
                            "device auto: no CUDA device answered ({e}); computing on the CPU"
                        ));
                        Ok(Device::Cpu)
                    }
                }
            } else {
                match driver_device_count() {
                    Some(n) if n > 0 => note_once(&format!(
                        "device auto: {n} CUDA device(s) present, but this build has no CUDA support and no \
                         convert-weight-cuda beside it (tools/build-cuda.sh); computing on the CPU"
                    )),
                    _ if explicit_auto => note_once(
                        "device auto: this build has no CUDA support (see tools/build-cuda.sh); computing on the CPU",
                    ),
                    _ => {}
                }
                Ok(Device::Cpu)
            }
        }
        s if s == "cuda" || s.starts_with("cuda:") => {
            let n = match s.strip_prefix("cuda:") {
                Some(n) => n
                    .parse::<usize>()
                    .map_err(|_| format!("bad device '{s}': expected cuda:N"))?,
                None => 0,
            };
            if !cuda_built() {
                let why = match driver_device_count() {
                    Some(k) if k > 0 => format!(
                        "{k} CUDA device(s) present, but this build has no CUDA support and no convert-weight-cuda \
                         beside it (build it with tools/build-cuda.sh)"
                    ),
                    _ => "this build has no CUDA support and no CUDA driver answered (build with \
                          tools/build-cuda.sh on a GPU machine)"
                        .to_string(),
                };
                return Err(format!("device '{s}': {why}"));
            }
            open_cuda(n).map_err(|e| format!("device '{s}': no CUDA device answered: {e}"))
        }
        s => Err(format!(
            "unknown device '{s}': expected cpu, cuda, cuda:N or auto"
        )),
    }
}

/// The device `auto` takes: round robin over the devices the driver reports, one per call (every job resolves
/// its device once), so `convert-batch` spreads jobs over all GPUs; 0 when none or in a CPU build.
fn next_auto_ordinal() -> usize {
    #[cfg(feature = "cuda")]
    {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = candle_core::cuda_backend::cudarc::driver::CudaContext::device_count()
            .map(|n| n.max(0) as usize)
            .unwrap_or(0);
        if n > 1 {
            return NEXT.fetch_add(1, Ordering::Relaxed) % n;
        }
    }
    0
}

/// Open CUDA device `n` (once per process: later calls share its context, streams and kernels), with the error
/// (or a panic in a lower layer) as one line.
fn open_cuda(n: usize) -> Result<Device, String> {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    static OPEN: OnceLock<Mutex<HashMap<usize, Device>>> = OnceLock::new();
    let open = OPEN.get_or_init(Default::default);
    if let Some(d) = open.lock().ok().and_then(|m| m.get(&n).cloned()) {
        return Ok(d);
    }
    match std::panic::catch_unwind(|| Device::new_cuda(n)) {
        Ok(Ok(d)) => {
            if let Ok(mut m) = open.lock() {
                m.insert(n, d.clone());
            }
            Ok(d)
        }
        Ok(Err(e)) => Err(one_line(&e.to_string())),
        Err(_) => Err("the CUDA layer panicked while opening the device".into()),
    }
}

fn one_line(s: &str) -> String {
    let first = s
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim();
    first.to_string()
}

/// Number of CUDA devices the driver reports, asking the driver library directly (`dlopen("libcuda.so.1")`,
/// `cuInit`, `cuDeviceGetCount`), so that it works in a build without CUDA. `None`: no driver library, or it failed.
pub fn driver_device_count() -> Option<i32> {
    #[cfg(unix)]
    {
        type CuInit = unsafe extern "C" fn(u32) -> i32;
        type CuCount = unsafe extern "C" fn(*mut i32) -> i32;
        // SAFETY: dlopen/dlsym with NUL-terminated names; the two functions have these C signatures in every
        // CUDA driver (CUresult cuInit(unsigned), CUresult cuDeviceGetCount(int*)). The handle is never closed:
        // the driver is not meant to be unloaded.
        unsafe {
            let h = libc::dlopen(c"libcuda.so.1".as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL);
            if h.is_null() {
                return None;
            }
            let init = libc::dlsym(h, c"cuInit".as_ptr());
            let count = libc::dlsym(h, c"cuDeviceGetCount".as_ptr());
            if init.is_null() || count.is_null() {
                return None;
            }
            let init: CuInit = std::mem::transmute::<*mut libc::c_void, CuInit>(init);
            let count: CuCount = std::mem::transmute::<*mut libc::c_void, CuCount>(count);
            if init(0) != 0 {
                return Some(0);
            }
            let mut n = 0i32;
            if count(&mut n) != 0 {
                return Some(0);
            }
            Some(n)
        }
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// The CUDA build to hand over to, if any: `$CONVERT_WEIGHT_CUDA_EXE` (a path; `0` or empty turns the hand-over
/// off), else `<this executable>-cuda` in the same folder.
fn cuda_sibling() -> Option<std::path::PathBuf> {
    match std::env::var_os(CUDA_EXE_ENV) {
        Some(v) if v.is_empty() || v == "0" => return None,
        Some(v) => return Some(v.into()),
        None => {}
    }
    let exe = std::env::current_exe().ok()?;
    let name = exe.file_name()?.to_str()?;
    let sibling = exe.with_file_name(format!("{name}-cuda"));
    sibling.is_file().then_some(sibling)
}

/// Called first thing by the binaries. In the plain (CPU) build: if a CUDA build of this program sits beside it
/// (see [`cuda_sibling`]) and the NVIDIA driver reports a device, replace this process with it, same arguments.
/// Returns (doing nothing) in the CUDA build, when no sibling or no device exists, or after a failed hand-over
/// (with a note). `--device cpu` still works after a hand-over: the CUDA build computes wherever it is told.
pub fn reexec_cuda_build_if_present() {
    if cuda_built() || std::env::var_os(HANDED_OVER_ENV).is_some() {
        return;
    }
    let Some(exe) = cuda_sibling() else {
        return;
    };
    if !exe.is_file() {
        note_once(&format!(
            "{CUDA_EXE_ENV}={}: no such file; computing on the CPU",
            exe.display()
        ));
        return;
    }
    if driver_device_count().is_none_or(|n| n <= 0) {
        return;
    }
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        let err = std::process::Command::new(&exe)
            .args(std::env::args_os().skip(1))
            .env(HANDED_OVER_ENV, "1")
            .exec();
        note_once(&format!(
            "could not start the CUDA build {}: {err}; computing on the CPU",
            exe.display()
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_and_bad_specs() {
        assert!(matches!(resolve(Some("cpu")), Ok(Device::Cpu)));
        let e = resolve(Some("tpu")).unwrap_err();
        assert!(e.contains("expected cpu, cuda, cuda:N or auto"), "{e}");
        let e = resolve(Some("cuda:x")).unwrap_err();
        assert!(e.contains("expected cuda:N"), "{e}");
    }

    #[test]
    fn auto_and_cuda_tell_the_truth() {
        // On a machine with a usable device and a CUDA build, auto is CUDA; everywhere else it is the CPU, and
        // `cuda` is a one-line error.
        let usable = cuda_built() && Device::new_cuda(0).is_ok();
        let auto = resolve(Some("auto")).unwrap();
        assert_eq!(auto.is_cuda(), usable);
        match resolve(Some("cuda")) {
            Ok(d) => assert!(usable && d.is_cuda()),
            Err(e) => {
                assert!(!usable);
                assert!(e.starts_with("device 'cuda': ") && !e.contains('\n'), "{e}");
            }
        }
    }
}

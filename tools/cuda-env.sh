# shellcheck shell=bash
# Source me (`source tools/cuda-env.sh`) after tools/setup-cuda.sh: sets what `cargo build --features cuda` needs.
#   PATH                     + $CUDA_ROOT/bin (nvcc, ptxas, fatbinary)
#   CUDA_ROOT/CUDA_PATH/CUDA_HOME  the toolkit root that tools/setup-cuda.sh made ($CUDA_SETUP_DIR/current)
#   LIBRARY_PATH             link time only: $CUDA_ROOT/lib and the driver stub folder $CUDA_ROOT/lib/stubs
#   LD_LIBRARY_PATH          + $CUDA_ROOT/lib only (cudart, cuBLAS, cuRAND, NVRTC); never the stub folder, so the
#                            real driver (libcuda.so.1 from the NVIDIA driver) is what runs
#   CUDA_COMPUTE_CAP         the GPU architecture candle's kernels are compiled for when no GPU can be queried:
#                            90 (H100/H200) unless already set. Override before sourcing, e.g.
#                            `CUDA_COMPUTE_CAP=80 source tools/cuda-env.sh` for A100, 89 for L4/L40S, 100 for B200.
#   CUDARC_CUDA_VERSION      the toolkit version for cudarc's bindings (13040 for 13.4, 12080 for 12.8)
# The binaries built with --features cuda also carry $CUDA_ROOT/lib as their run path (build.rs), so they run
# without this file; they do need the NVIDIA driver (see README, "GPU").
_cw_repo=$(cd "$(dirname "${BASH_SOURCE[0]:-$0}")/.." && pwd)
_cw_dir=${CUDA_SETUP_DIR:-$_cw_repo/.cuda}
if [ ! -x "$_cw_dir/current/bin/nvcc" ]; then
    echo "cuda-env.sh: no toolkit in $_cw_dir/current (run tools/setup-cuda.sh first)" >&2
    unset _cw_repo _cw_dir
    return 1 2>/dev/null || exit 1
fi
CUDA_ROOT=$(cd "$_cw_dir/current" && pwd -P)
export CUDA_ROOT
export CUDA_PATH=$CUDA_ROOT CUDA_HOME=$CUDA_ROOT
case ":$PATH:" in *":$CUDA_ROOT/bin:"*) ;; *) export PATH=$CUDA_ROOT/bin:$PATH ;; esac
export LIBRARY_PATH=$CUDA_ROOT/lib:$CUDA_ROOT/lib/stubs${LIBRARY_PATH:+:$LIBRARY_PATH}
case ":${LD_LIBRARY_PATH:-}:" in
*":$CUDA_ROOT/lib:"*) ;;
*) export LD_LIBRARY_PATH=$CUDA_ROOT/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH} ;;
esac
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
case "$(basename "$CUDA_ROOT")" in
cuda-13.4) export CUDARC_CUDA_VERSION=13040 ;;
cuda-12.8) export CUDARC_CUDA_VERSION=12080 ;;
esac
unset _cw_repo _cw_dir

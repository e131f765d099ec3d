#!/usr/bin/env bash
# The one command for a GPU-capable install: sets up the CUDA toolkit (tools/setup-cuda.sh), builds the plain
# binaries and the CUDA ones, and puts the CUDA ones beside the plain ones:
#   $CARGO_TARGET_DIR/release/convert-weight        CPU build: starts on any machine
#   $CARGO_TARGET_DIR/release/convert-weight-cuda   --features cuda: needs the NVIDIA driver
#   (and the same for convert-batch)
# The plain binary hands a run over to its -cuda sibling when the driver reports a GPU (src/device.rs), so the
# same command line works on both kinds of machine. Compute capability: CUDA_COMPUTE_CAP (default 90, H100/H200).
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
tools/setup-cuda.sh
# shellcheck source=tools/cuda-env.sh
source tools/cuda-env.sh
target=${CARGO_TARGET_DIR:-$repo/target}
CARGO_TARGET_DIR=$target cargo build --release --bins
CARGO_TARGET_DIR=$target/cuda cargo build --release --features cuda --bins
for b in convert-weight convert-batch; do
    install -m 755 "$target/cuda/release/$b" "$target/release/$b-cuda"
done

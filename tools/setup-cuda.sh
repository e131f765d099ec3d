#!/usr/bin/env bash
# Installs what `cargo build --features cuda` needs, without root and without a GPU, from PyPI wheels:
# nvcc + ptxas + cicc, the CUDA headers, cudart, cuBLAS, cuRAND and NVRTC, plus a *link stub* of the driver library
# (libcuda.so.1, every cu* symbol the cudarc crate binds, as empty functions). The stub only satisfies the linker;
# at run time the real driver (shipped with the NVIDIA kernel driver) is used, and the stub is never on a run-time
# library path (see tools/cuda-env.sh).
#
# Where: $CUDA_SETUP_DIR (default: <repo>/.cuda, git-ignored). Layout:
#   $CUDA_SETUP_DIR/cuda-<ver>/{bin,include,lib,nvvm}   a toolkit root (CUDA_ROOT), files hard-linked from the wheels
#   $CUDA_SETUP_DIR/cuda-<ver>/lib/stubs/libcuda.so*     the driver link stub
#   $CUDA_SETUP_DIR/current -> cuda-<ver>                what tools/cuda-env.sh uses
# Which toolkit: $CUDA_SETUP_VERSION = 13.4 (default; the newest that candle 0.11's cudarc 0.19 knows) or 12.8 (for
# GPU machines whose driver predates CUDA 13: PTX from a newer nvcc does not load on an older driver).
# Offline machines: CUDA_WHEELS_DIR=<folder of the .whl files> installs from there only (pip --no-index); fill it
# elsewhere with `pip download --no-deps -d <folder> <the packages below>`.
# Idempotent: a second run with the same version checks a stamp and the files, and does nothing.
# Prints nothing but errors (the pip log is shown when pip fails).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
dir=${CUDA_SETUP_DIR:-$repo/.cuda}
ver=${CUDA_SETUP_VERSION:-13.4}
python=${PYTHON:-python3}

case "$ver" in
13.4)
    pkgs=(nvidia-cuda-nvcc==13.4.92 nvidia-cuda-crt==13.4.92 nvidia-nvvm==13.4.92 nvidia-cuda-runtime==13.4.92
          nvidia-cuda-nvrtc==13.4.92 nvidia-cublas==13.4.3.11 nvidia-curand==10.4.5.25 nvidia-cuda-cccl==13.3.5.0.6)
    ;;
12.8)
    pkgs=(nvidia-cuda-nvcc-cu12==12.8.93 nvidia-cuda-runtime-cu12==12.8.90 nvidia-cuda-nvrtc-cu12==12.8.93
          nvidia-cublas-cu12==12.8.4.1 nvidia-curand-cu12==10.3.9.90)
    ;;
*)
    echo "setup-cuda.sh: CUDA_SETUP_VERSION=$ver is not supported (choose 13.4 or 12.8)" >&2
    exit 2
    ;;
esac

root=$dir/cuda-$ver
stamp=$root/.setup-stamp
want="v3 ${pkgs[*]}"

cudarc_src() {
    # The cudarc sources cargo fetched for this lock file: the driver symbols come from its bindings.
    local v
    v=$(awk '/^name = "cudarc"$/ {getline; gsub(/[^0-9.]/, ""); print; exit}' "$repo/Cargo.lock")
    [ -n "$v" ] || { echo "setup-cuda.sh: no cudarc in $repo/Cargo.lock" >&2; return 1; }
    local home=${CARGO_HOME:-$HOME/.cargo} d
    for d in "$home"/registry/src/*/cudarc-"$v"; do
        [ -f "$d/src/driver/sys/mod.rs" ] && { echo "$d"; return 0; }
    done
    (cd "$repo" && cargo fetch --quiet >/dev/null 2>&1) || true
    for d in "$home"/registry/src/*/cudarc-"$v"; do
        [ -f "$d/src/driver/sys/mod.rs" ] && { echo "$d"; return 0; }
    done
    echo "setup-cuda.sh: cudarc $v sources not found under $home/registry/src (run cargo fetch)" >&2
    return 1
}

complete() {
    [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$root/bin/nvcc" ] \
        && [ -f "$root/lib/stubs/libcuda.so.1" ] && [ -e "$root/lib/libcudart.so" ] \
        && [ "$(readlink "$dir/current" 2>/dev/null)" = "cuda-$ver" ]
}

if complete; then
    exit 0
fi

mkdir -p "$dir"
tmp=$(mktemp -d "$dir/.tmp.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

# 1. The wheels (pip resolves nothing else: --no-deps, every package is listed).
offline=()
[ -n "${CUDA_WHEELS_DIR:-}" ] && offline=(--no-index --find-links "$CUDA_WHEELS_DIR")
if ! "$python" -m pip install --quiet --disable-pip-version-check --no-warn-script-location --no-deps \
        "${offline[@]}" --target "$tmp/pip" "${pkgs[@]}" >"$tmp/pip.log" 2>&1; then
    cat "$tmp/pip.log" >&2
    echo "setup-cuda.sh: pip install failed (packages: ${pkgs[*]})" >&2
    exit 1
fi

# 2. One toolkit root: every nvidia/<pkg>/ tree merged by hard links (cu13 wheels already share nvidia/cu13; the
#    cu12 wheels have one folder each). Hard links, not symlinks: nvcc finds its tools relative to its real path.
mkdir -p "$tmp/root"
for p in "$tmp"/pip/nvidia/*/; do
    [ "$(basename "$p")" = "__pycache__" ] && continue
    cp -al "$p/." "$tmp/root/"
done
rm -f "$tmp/root/__init__.py"
[ -x "$tmp/root/bin/nvcc" ] || { echo "setup-cuda.sh: no bin/nvcc in the wheels" >&2; exit 1; }
# CUDA 13 keeps CCCL headers in include/cccl; older nvcc profiles do not add that folder.
if [ -d "$tmp/root/include/cccl" ] && [ ! -e "$tmp/root/include/cuda/std" ]; then
    for e in "$tmp"/root/include/cccl/*; do
        [ -e "$tmp/root/include/$(basename "$e")" ] || ln -s "cccl/$(basename "$e")" "$tmp/root/include/"
    done
fi

# 3. Unversioned names for the linker (libcublas.so -> libcublas.so.13, ...). Wheels ship only the sonames.
for f in "$tmp"/root/lib/lib*.so.*; do
    b=$(basename "$f")
    base=${b%%.so.*}.so
    [ -e "$tmp/root/lib/$base" ] || ln -s "$b" "$tmp/root/lib/$base"
done
[ -e "$tmp/root/lib64" ] || ln -s lib "$tmp/root/lib64"

# 4. The driver link stub: every cu* function the cudarc driver bindings declare, as an empty C function, in a
#    library named libcuda.so with the driver's soname. Only for linking: lib/stubs is never a run-time path.
src=$(cudarc_src)
mkdir -p "$tmp/root/lib/stubs"
grep -oE 'pub unsafe fn cu[A-Za-z0-9_]+\(' "$src/src/driver/sys/mod.rs" \
    | sed -E 's/pub unsafe fn (cu[A-Za-z0-9_]+)\(/\1/' | sort -u >"$tmp/cuda-symbols.txt"
n=$(wc -l <"$tmp/cuda-symbols.txt")
[ "$n" -gt 100 ] || { echo "setup-cuda.sh: only $n driver symbols found in $src" >&2; exit 1; }
{
    echo "/* Link stub of the CUDA driver library, generated by tools/setup-cuda.sh: never load it. */"
    echo "int cuda_link_stub_never_load(void) { return 999; }"
    sed -E 's/.*/int &(void) { return 999; }/' "$tmp/cuda-symbols.txt"
} >"$tmp/root/lib/stubs/libcuda-stub.c"
cp "$tmp/cuda-symbols.txt" "$tmp/root/lib/stubs/"
${CC:-cc} -shared -fPIC -O0 -Wl,-soname,libcuda.so.1 -o "$tmp/root/lib/stubs/libcuda.so.1" \
    "$tmp/root/lib/stubs/libcuda-stub.c"
ln -s libcuda.so.1 "$tmp/root/lib/stubs/libcuda.so"

echo "$want" >"$tmp/root/.setup-stamp"

# 5. Swap in atomically-enough: the old root (if any) goes, the new one takes its name, `current` points at it.
rm -rf "$root.old"
[ -e "$root" ] && mv "$root" "$root.old"
mv "$tmp/root" "$root"
rm -rf "$root.old"
ln -sfn "cuda-$ver" "$dir/current"

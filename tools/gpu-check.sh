#!/usr/bin/env bash
# The device check, in one go, for a fresh GPU machine (made for an NVIDIA H200, 16 cores, 128 GiB; budget 8 min):
#   1. set up the CUDA toolkit from PyPI (tools/setup-cuda.sh; a toolkit matching the driver: 13.4, or 12.8 for
#      drivers older than CUDA 13.4) and source tools/cuda-env.sh (compute capability from nvidia-smi);
#   2. build with --features cuda (binaries, the bench, the GPU tests);
#   3. run the GPU-vs-CPU bit-identity tests (tests/gpu.rs) with CONVERT_WEIGHT_REQUIRE_GPU=1: no silent skip;
#   4. run the benchmark with --device cuda and --device cpu on the same inputs (bf16 → fp16 cast, bloom head
#      split + transposes), compare one output of each device byte for byte, and print one table.
# Without a GPU (no nvidia-smi, or it fails) it does what it can: setup, build, the tests (which then skip, loudly,
# and run their cases CPU against CPU; the CUDA binaries start thanks to the driver link stub), and the CPU half of
# the table, at GPU_CHECK_SIZE (default 8GiB with a GPU, 512MiB without).
#
# Settings (environment): GPU_CHECK_SIZE, GPU_CHECK_RUNS (timed runs per case, default 1),
# GPU_CHECK_CACHE (bench inputs, default $CARGO_TARGET_DIR/bench-cache), CARGO_TARGET_DIR, CUDA_SETUP_DIR,
# CUDA_SETUP_VERSION, CUDA_WHEELS_DIR (offline wheels), CUDA_COMPUTE_CAP.
# Needs: cargo with crates.io (or a filled ~/.cargo registry), python3 with pip, cc; network for PyPI unless
# CUDA_WHEELS_DIR is given.
# Exit status: 0 when everything that could run passed; 1 otherwise.
set -uo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo" || exit 1
t0=$(date +%s)
phase() { printf '[gpu-check %4ss] %s\n' "$(($(date +%s) - t0))" "$*" >&2; }
fail=0
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$repo/target}
logs=$CARGO_TARGET_DIR/gpu-check
mkdir -p "$logs"

# 0. Is there a GPU?
gpu=0
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >"$logs/nvidia-smi.txt" 2>&1; then
    gpu=1
    driver_cuda=$(nvidia-smi 2>/dev/null | grep -o 'CUDA Version: *[0-9.]*' | grep -o '[0-9.]*$' | head -1)
    cap=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d ' .')
    [ -n "$cap" ] && export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-$cap}
    if [ -z "${CUDA_SETUP_VERSION:-}" ] && [ -n "$driver_cuda" ]; then
        # The toolkit's PTX must not be newer than the driver.
        if awk -v v="$driver_cuda" 'BEGIN { exit !(v + 0 < 13.4) }'; then
            export CUDA_SETUP_VERSION=12.8
        fi
    fi
    phase "GPU: $(head -1 "$logs/nvidia-smi.txt"); driver CUDA ${driver_cuda:-?}; compute capability ${CUDA_COMPUTE_CAP:-?}"
else
    phase "no GPU answered (nvidia-smi absent or failing): setup, build, tests (skipping) and the CPU half only"
fi
size=${GPU_CHECK_SIZE:-$([ $gpu = 1 ] && echo 8GiB || echo 512MiB)}
runs=${GPU_CHECK_RUNS:-1}
cache=${GPU_CHECK_CACHE:-$CARGO_TARGET_DIR/bench-cache}

# 1. Toolkit.
phase "setup: tools/setup-cuda.sh (CUDA ${CUDA_SETUP_VERSION:-13.4})"
if ! tools/setup-cuda.sh; then
    phase "FAILED: tools/setup-cuda.sh"
    exit 1
fi
# shellcheck source=tools/cuda-env.sh
source tools/cuda-env.sh || exit 1

# 2. Build.
phase "build: cargo build --release --features cuda (bins, bench, GPU tests) -> $logs/build.log"
tb=$(date +%s)
if ! { cargo build --release --features cuda --bins --example bench \
        && cargo test --release --features cuda --test gpu --lib --no-run; } >"$logs/build.log" 2>&1; then
    tail -30 "$logs/build.log" >&2
    phase "FAILED: the CUDA build"
    exit 1
fi
build_s=$(($(date +%s) - tb))
phase "build: done in ${build_s}s"

# Without a GPU the CUDA build cannot even start (it links libcuda.so.1, which only the NVIDIA driver installs).
# Here, and only here, the link stub stands in for the driver: every CUDA call then fails, so the tests take their
# no-device path (loud skips, CPU-against-CPU cases) and the benchmark's CPU half runs with the very same binaries.
if [ $gpu = 0 ]; then
    export LD_LIBRARY_PATH=$CUDA_ROOT/lib/stubs:$LD_LIBRARY_PATH
    phase "no GPU: the driver link stub is on LD_LIBRARY_PATH for the tests and the benchmark (CUDA calls fail)"
fi

# 3. GPU tests.
test_result="skipped (no GPU)"
phase "tests: cargo test --release --features cuda --test gpu (and src/device.rs) -> $logs/tests.log"
req=$([ $gpu = 1 ] && echo 1 || echo 0)
if { CONVERT_WEIGHT_REQUIRE_GPU=$req cargo test --release --features cuda --test gpu \
        && CONVERT_WEIGHT_REQUIRE_GPU=$req cargo test --release --features cuda --lib device; } \
        >"$logs/tests.log" 2>&1; then
    skipped=$(grep -c '^SKIPPED (no CUDA device)' "$logs/tests.log")
    passed=$(grep -o 'test result: ok. [0-9]* passed' "$logs/tests.log" | awk '{s += $4} END {print s + 0}')
    test_result="ok: $passed passed, $skipped GPU tests skipped (no CUDA device)"
    [ $gpu = 1 ] && [ "$skipped" != 0 ] && { test_result="FAILED: skips on a GPU machine"; fail=1; }
else
    grep -E '^(test .* FAILED|SKIPPED|---- |thread .* panicked)|first difference' "$logs/tests.log" | head -20 >&2
    test_result="FAILED (see $logs/tests.log)"
    fail=1
fi
phase "tests: $test_result"

# 4. Benchmark, both devices on the same inputs.
bench() { # device
    cargo run --release --features cuda --example bench -- --size "$size" --runs "$runs" --device "$1" \
        --inputs llama-bf16-st,bloom-f16-st --only cast,bloom --cache "$cache" >"$logs/bench-$1.md" \
        2>"$logs/bench-$1.log"
}
devices=(cpu)
[ $gpu = 1 ] && devices=(cuda cpu)
for d in "${devices[@]}"; do
    phase "bench: --device $d --size $size -> $logs/bench-$d.md"
    if ! bench "$d"; then
        tail -5 "$logs/bench-$d.log" >&2
        phase "bench --device $d: FAILED (or a target missed; see $logs/bench-$d.md)"
        fail=1
    fi
done

# 5. One output from each device, byte for byte.
same="not compared (no GPU)"
if [ $gpu = 1 ]; then
    in=$(ls -d "$cache"/llama-bf16-st-L*/ 2>/dev/null | head -1)
    if [ -n "$in" ]; then
        for d in cuda cpu; do
            "$CARGO_TARGET_DIR/release/convert-weight" --input_path "$in/model.safetensors" \
                --output_path "$cache/out/cmp-$d.ckpt" --model llama --dtype fp16 --device "$d" \
                >"$logs/cmp-$d.log" 2>&1 || fail=1
        done
        if cmp -s "$cache/out/cmp-cuda.ckpt" "$cache/out/cmp-cpu.ckpt"; then
            same="identical (llama bf16 → fp16 .ckpt, $(stat -c %s "$cache/out/cmp-cpu.ckpt") bytes)"
        else
            same="DIFFERENT (llama bf16 → fp16 .ckpt)"
            fail=1
        fi
        rm -f "$cache/out/cmp-cuda.ckpt" "$cache/out/cmp-cpu.ckpt"
    fi
fi

# 6. The table: one row per case, the devices side by side.
row() { # file case-substring -> "secs|cp|cp+fsync|result"
    [ -f "$1" ] || return 0
    awk -F'|' -v want="$2" 'index($2, want) && $3 ~ /[0-9]/ {
        gsub(/ /, "", $3); gsub(/ /, "", $5); gsub(/ /, "", $7); gsub(/^ +| +$/, "", $12);
        print $3 "|" $5 "|" $7 "|" $12; exit }' "$1"
}
echo
echo "gpu-check: $(date -u +%FT%TZ), $(nproc) cores, size $size, runs $runs, GPU: $([ $gpu = 1 ] && head -1 "$logs/nvidia-smi.txt" || echo none)"
echo "build (--features cuda): ${build_s}s; GPU tests: $test_result; CUDA vs CPU output: $same"
echo
echo "| case | cpu s | cuda s | cp s | cp+fsync s | cuda / (cp+fsync) | cuda / cpu | target (≤ 1.2 × cp+fsync, cuda ≤ cpu) |"
echo "|---|---:|---:|---:|---:|---:|---:|---|"
for c in "bf16 → fp16 cast" "bloom"; do
    IFS='|' read -r cs ccp cfs _ <<<"$(row "$logs/bench-cpu.md" "$c")"
    IFS='|' read -r gs gcp gfs _ <<<"$(row "$logs/bench-cuda.md" "$c")"
    cp=${gcp:-$ccp}
    fs=${gfs:-$cfs}
    r1=—
    r2=—
    verdict="GPU part not run"
    if [ -n "${gs:-}" ] && [ -n "${fs:-}" ] && [ "$fs" != "—" ]; then
        r1=$(awk -v a="$gs" -v b="$fs" 'BEGIN { printf "%.2f", a / b }')
    fi
    if [ -n "${gs:-}" ] && [ -n "${cs:-}" ]; then
        r2=$(awk -v a="$gs" -v b="$cs" 'BEGIN { printf "%.2f", a / b }')
        verdict=$(awk -v r1="$r1" -v r2="$r2" -v cast="$([ "$c" = "bloom" ] && echo 0 || echo 1)" \
            'BEGIN { ok = (r2 <= 1.0) && (!cast || r1 <= 1.2); print ok ? "met" : "MISSED" }')
        [ "$verdict" = met ] || fail=1
    fi
    echo "| $c | ${cs:-—} | ${gs:-—} | ${cp:-—} | ${fs:-—} | $r1 | $r2 | $verdict |"
done
echo "| FP8 → bf16 (block scales) | — | — | — | — | — | — | not yet: no FP8 input until the mcore-rust FP8 work is on main |"
echo
phase "done ($([ $fail = 0 ] && echo ok || echo FAILED)); logs in $logs"
exit $fail

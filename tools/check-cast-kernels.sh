#!/usr/bin/env bash
# Checks, without a GPU, that the CUDA cast kernels of src/exec_cuda.rs compute what the CPU path computes: the
# kernel source (integer-only device functions) is compiled as host C with cc, run over every f16/bf16 bit pattern
# and ~1M f32 patterns, and compared bit for bit with the `half` crate's slice conversions (the CPU executor's).
# Prints one line; exit 1 on any difference. Needs cc and cargo (the `half` crate from the local registry).
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 - "$repo/src/exec_cuda.rs" "$tmp/k.c" <<'PY'
import sys
src = open(sys.argv[1]).read()
start = src.index('const CAST_SRC: &str = r#"') + len('const CAST_SRC: &str = r#"')
body = src[start:src.index('"#;', start)]
body = '\n'.join(l for l in body.split('\n') if not l.startswith('CW_CAST('))
head = '#include <stdio.h>\n#define __device__\n#define __forceinline__ static inline\n#define __global__\n#define __clz(x) __builtin_clz(x)\n'
main = r'''
int main(int argc, char** argv) {
    FILE* f = fopen(argv[1], "wb");
    for (u32 i = 0; i <= 0xFFFF; i++) {
        u16 h = (u16)i; u32 a = f16_to_f32(h), b = bf16_to_f32(h);
        u16 c = f32_to_f16(bf16_to_f32(h)), d = f32_to_bf16(f16_to_f32(h));
        fwrite(&a, 4, 1, f); fwrite(&b, 4, 1, f); fwrite(&c, 2, 1, f); fwrite(&d, 2, 1, f);
    }
    for (u64 i = 0; i < (1ull << 32); i += 4099) {
        u32 x = (u32)i; u16 a = f32_to_f16(x), b = f32_to_bf16(x);
        fwrite(&a, 2, 1, f); fwrite(&b, 2, 1, f);
    }
    return fclose(f);
}
'''
open(sys.argv[2], 'w').write(head + body + main)
PY
${CC:-cc} -O2 -o "$tmp/k" "$tmp/k.c"
"$tmp/k" "$tmp/kernel.bin"
half=$(awk '/^name = "half"$/ {getline; gsub(/[^0-9.]/, ""); print; exit}' "$repo/Cargo.lock")
mkdir -p "$tmp/rs/src"
cp "$repo/tools/cast-kernel-check/compare.rs" "$tmp/rs/src/main.rs"
printf '[package]\nname = "cast-kernel-check"\nversion = "0.1.0"\nedition = "2021"\n[dependencies]\nhalf = { version = "=%s", features = ["std"] }\n[workspace]\n' "$half" >"$tmp/rs/Cargo.toml"
out=$(cd "$tmp/rs" && CARGO_TARGET_DIR="$tmp/target" cargo run --release --quiet --offline -- "$tmp/kernel.bin")
echo "$out"
grep -q ': 0 differences' <<<"$out"

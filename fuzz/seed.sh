#!/bin/sh
# Seed the fuzz corpora from the vendored golden fixtures (tests/fixtures) and the regression inputs
# (tests/regress). Run from anywhere; idempotent. FIXTURES=DIR seeds from another fixture tree instead.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
fx="${FIXTURES:-$here/../tests/fixtures}"
[ -d "$fx" ] || { echo "no fixtures at $fx" >&2; exit 1; }
c="$here/corpus"
mkdir -p "$c/ckpt" "$c/safetensors" "$c/torch_zip" "$c/torch_legacy" "$c/pickle" "$c/manifest"
# Small files only: libFuzzer's default -max_len is derived from the seeds, and big seeds slow every run.
small() { find "$fx" -type f -name "$1" -size -200k ! -name '*.tensors.json'; }
for f in $(small '*.ckpt'); do cp -f "$f" "$c/ckpt/$(echo "$f" | sed "s|$fx/||; s|/|_|g")"; done
for f in $(small '*.safetensors'); do cp -f "$f" "$c/safetensors/$(echo "$f" | sed "s|$fx/||; s|/|_|g")"; done
for f in $(small '*.bin') $(small '*.pth'); do
  n=$(echo "$f" | sed "s|$fx/||; s|/|_|g")
  if head -c 2 "$f" | grep -q PK; then
    cp -f "$f" "$c/torch_zip/$n"
    # The pickle machine: the data.pkl entry of each zip (stored uncompressed by torch.save).
    if command -v unzip >/dev/null 2>&1; then
      unzip -p "$f" '*/data.pkl' > "$c/pickle/$n.pkl" 2>/dev/null || rm -f "$c/pickle/$n.pkl"
    fi
  else
    cp -f "$f" "$c/torch_legacy/$n"
  fi
done
# Regression inputs (small hostile files), by format folder.
for sub in ckpt safetensors torch_zip torch_legacy; do
  for f in $(find "$here/../tests/regress/$sub" -type f 2>/dev/null); do cp -f "$f" "$c/$sub/regress_$(basename "$f")"; done
done
# Manifests: the repo's job manifests and examples.
for f in $(find "$here/../jobs" "$here/../examples" -type f -name '*.toml' 2>/dev/null); do
  cp -f "$f" "$c/manifest/$(basename "$f")"
done
# Hand-written manifests touching every key (values valid and not).
cat > "$c/manifest/all_keys.toml" <<'TOML'
[defaults]
jobs = 2
model = "llama"
dtype = "fp16"
device = "cpu"
max_shard_size = "5GB"

[[job]]
name = "a"
input = "in/a.bin"
output = "out/a.ckpt"
reversed = false
n_head = 4
hidden_size = 32
layers = 2

[[job]]
name = "b"
input = "in/b.ckpt"
output = "out/b/"
reversed = true
max_shard_size = 1000000
TOML
cat > "$c/manifest/bad_values.toml" <<'TOML'
[defaults]
jobs = 0
[[job]]
name = "x"
input = ""
output = "out/x.weird"
dtype = "fp8"
n_head = -1
max_shard_size = "12 parsecs"
TOML
for d in "$c"/*; do echo "$(basename "$d"): $(ls "$d" | wc -l) seeds"; done

#!/bin/sh
# Seed the fuzz corpora from the golden fixtures (../shared/fixtures). Run from anywhere; idempotent.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
fx="${FIXTURES:-$here/../../shared/fixtures}"
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
# Manifests: the repo's job manifests and examples.
for f in $(find "$here/../jobs" "$here/../examples" -type f -name '*.toml' 2>/dev/null); do
  cp -f "$f" "$c/manifest/$(basename "$f")"
done
for d in "$c"/*; do echo "$(basename "$d"): $(ls "$d" | wc -l) seeds"; done

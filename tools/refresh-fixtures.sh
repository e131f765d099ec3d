#!/usr/bin/env bash
# Refresh the vendored golden fixtures (tests/fixtures/) from the maintainers' full set (default ../shared/fixtures
# beside the repository, or ../../shared/fixtures; override with FIXTURES_SRC=DIR). The list of what is vendored lives here and only here.
#
#   tools/refresh-fixtures.sh            copy, then print the size
#   tools/refresh-fixtures.sh --check    exit 1 if tests/fixtures differs from what a refresh would write
#
# It rewrites only what it manages (index.json, SOURCE-README.md, edge/ and the family directories below); other
# folders under tests/fixtures/ (mcore/, wild/, distributed/, ...) and README.md are left alone.
# Needs: bash, cp, jq.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
src=${FIXTURES_SRC:-$root/../shared/fixtures}
# A git worktree one level further down (e.g. wt/NAME) finds the same folder one level up.
[ -n "${FIXTURES_SRC:-}" ] || [ -d "$src" ] || src=$root/../../shared/fixtures
dst=$root/tests/fixtures
[ -f "$src/index.json" ] || { echo "no fixtures at $src (set FIXTURES_SRC)" >&2; exit 1; }

# Variants vendored whole: inputs in every layout (torch, torch_sharded, safetensors), every reference output
# (ms/expected*.ckpt, reversed/), configs, manifest, sidecars. One float dtype per family: fp32 for the families the
# reference loads with from_pretrained (their reference outputs are fp32, so values are compared bit for bit), fp16
# for the ones that keep the file's dtype (gpt2, bloom: the BloomForCausalLM layout with a tied head, blip2: the
# patched bf16 run). Tests assert these counts: change them together (see tests/common/fixtures.rs).
FULL=(
  llama/fp32 glm/fp32 qwen/fp32 internlm/fp32 baichuan/fp32 baichuan2_7b/fp32 baichuan2_13b/fp32
  wizardcoder/fp32 skywork/fp32 gpt2/fp16 bloom/fp16 blip2/fp16
)
# Every other variant: metadata only (manifest.json, torch/config.json and every *.tensors.json sidecar), which the
# plan tests (tests/models_plan.rs) check names, shapes and dtypes against, without any data file.
META=(
  llama/fp16 glm/fp16 qwen/fp16 internlm/fp16 baichuan/fp16 baichuan2_7b/fp16 baichuan2_13b/fp16
  wizardcoder/fp16 skywork/fp16 gpt2/fp32 bloom/fp32 blip2/fp32
)
# Format edge cases: the whole folder.
EDGE=edge

out=$dst
check=0
if [ "${1:-}" = "--check" ]; then
  check=1
  out=$(mktemp -d)
  trap 'rm -rf "$out"' EXIT
fi

mkdir -p "$out"
# Remove what this script manages (and nothing else).
families=$(jq -r '.variants[].family' "$src/index.json" | sort -u)
for f in $families $EDGE index.json SOURCE-README.md; do
  if [ -e "$out/$f" ]; then chmod -R u+w "$out/$f"; rm -rf "${out:?}/$f"; fi
done

copy() { # copy SRC-relative file $1, keeping its path
  mkdir -p "$out/$(dirname "$1")"
  cp "$src/$1" "$out/$1"
  chmod 644 "$out/$1"
}

for v in "${FULL[@]}"; do
  [ -d "$src/$v" ] || { echo "missing variant $src/$v" >&2; exit 1; }
  (cd "$src" && find "$v" -type f | sort) | while read -r f; do copy "$f"; done
done
for v in "${META[@]}"; do
  [ -d "$src/$v" ] || { echo "missing variant $src/$v" >&2; exit 1; }
  copy "$v/manifest.json"
  copy "$v/torch/config.json"
  (cd "$src" && find "$v" -type f -name '*.tensors.json' | sort) | while read -r f; do copy "$f"; done
done
(cd "$src" && find "$EDGE" -type f | sort) | while read -r f; do copy "$f"; done
copy README.md
mv "$out/README.md" "$out/SOURCE-README.md"

# index.json: the maintainers' index, every entry kept, each marked with what is vendored ("full" or "sidecars").
full_json=$(printf '%s\n' "${FULL[@]}" | jq -R . | jq -s .)
meta_json=$(printf '%s\n' "${META[@]}" | jq -R . | jq -s .)
jq --argjson full "$full_json" --argjson meta "$meta_json" '
  .variants |= map(. + {vendored: (if (.dir | IN($full[])) then "full"
                                   elif (.dir | IN($meta[])) then "sidecars"
                                   else error("variant \(.dir) is in neither list of tools/refresh-fixtures.sh") end)})
  | .vendored_by = "tools/refresh-fixtures.sh"' "$src/index.json" > "$out/index.json"

if [ $check = 1 ]; then
  rc=0
  for f in $families $EDGE index.json SOURCE-README.md; do
    diff -r -q "$out/$f" "$dst/$f" || rc=1
  done
  [ $rc = 0 ] && echo "tests/fixtures is up to date with $src"
  exit $rc
fi
echo "vendored ${#FULL[@]} full variants, ${#META[@]} sidecar-only variants and $EDGE/ from $src"
du -sh "$dst"

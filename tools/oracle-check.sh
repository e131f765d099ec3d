#!/usr/bin/env bash
# Optional, by hand (never in CI): load files written by convert-weight with the REAL torch / MindSpore /
# safetensors (a venv from ../shared/tools/setup-oracle-venv.sh) and compare with our own reader, tensor by tensor.
#   usage: tools/oracle-check.sh VENV FILE...
set -euo pipefail
venv=${1:?usage: oracle-check.sh VENV FILE...}; shift
here=$(cd "$(dirname "$0")/.." && pwd)
cw="$here/target/debug/convert-weight"
[ -x "$cw" ] || cw="$here/target/release/convert-weight"
fail=0
for f in "$@"; do
  real=$("$venv/bin/python" "$here/../shared/tools/describe.py" "$f" 2>&1) || { echo "REFUSED $f: $real" | head -3; fail=1; continue; }
  ours=$("$cw" inspect "$f" --json --hash)
  if python3 - "$real" "$ours" <<'PY'
import json, sys
norm = lambda d: sorted((t["name"], t["dtype"], list(t["shape"]), t["sha256"]) for t in d["tensors"])
real, ours = json.loads(sys.argv[1]), json.loads(sys.argv[2])
sys.exit(0 if norm(real) == norm(ours) else 1)
PY
  then echo "ok      $f"; else echo "DIFFERS $f"; fail=1; fi
done
exit $fail

#!/usr/bin/env bash
# Creates (or completes) a scratch Python venv holding the real MindFormers 2.1.0 reference, used only to read and
# run its weight-conversion code when regenerating tests/fixtures/mcore/ (tools/make-mcore-fixtures.py).
# Optional: nothing in the project's build or CI needs it. Idempotent: re-running only installs what is missing.
#
#   usage: tools/setup-mindformers-venv.sh VENV_DIR          (needs python3.11 on PATH; PyPI only)
#
# Why these pins: the wheel declares mindspore~=2.11 and hyper-parallel, neither of which is on PyPI, and
# transformers>=5.3 / datasets>=5 (not needed to import the converter). This combination imports the converter
# templates and the model utils on Python 3.11 (issue 10). torch comes from PyPI (its default wheel pulls the CUDA
# runtime packages, several GB; a GPU is not needed) and is used by transformers to build tiny random HF models.
set -euo pipefail
venv=${1:?usage: setup-mindformers-venv.sh VENV_DIR}

if [ ! -x "$venv/bin/python" ]; then
    python3.11 -m venv "$venv" 2>/dev/null || python3 -m venv "$venv"
fi
py="$venv/bin/python"
pip=("$venv/bin/pip" install --disable-pip-version-check)

have() { "$py" -c "import importlib.metadata as m, sys; v = m.version('$1'); sys.exit(0 if (not '$2' or v == '$2') else 1)" 2>/dev/null; }

# 1. the pinned core (resolved together so pip keeps numpy < 2)
if ! have mindspore 2.10.0 || ! have transformers 4.57.1 || ! have datasets 3.6.0 || ! have torch ""; then
    "${pip[@]}" "mindspore==2.10.0" "transformers==4.57.1" "numpy<2" "pyarrow<18" "datasets==3.6.0" \
        "huggingface-hub<1.0" torch safetensors
fi

# 2. the wheel's other requirements (less mindspore, hyper-parallel, transformers, datasets, pyarrow: pinned above)
if ! have tiktoken "" || ! have jieba "" || ! have tensorboardX ""; then
    "${pip[@]}" "numpy<2" "pyarrow<18" "setuptools" "sentencepiece>=0.2.1" "ftfy>=6.1.1" "regex>=2022.10.31" \
        "tqdm>=4.65.0" "pyyaml>=6.0" "jieba>=0.42.1" "rouge_chinese>=1.0.3" opencv-python-headless tokenizers \
        "astunparse>=1.6.3" tiktoken jinja2 setproctitle tensorboardX "deprecated>=1.2.0" pybind11
fi

# 3. the reference itself, without its unsatisfiable declared requirements; mindpet's own (click, pyyaml) by hand
if ! have mindformers 2.1.0 || ! have mindpet 1.0.4; then
    "${pip[@]}" --no-deps "mindformers==2.1.0" "mindpet==1.0.4"
fi
if ! have click ""; then
    "${pip[@]}" click "pyyaml>=6.0"
fi

"$py" - <<'EOF'
import importlib.metadata as m
import mindspore, transformers, torch, numpy, safetensors
from mindformers.checkpoint.converter.template import WeightTemplate  # the converter templates import
print("mindformers venv ready:", ", ".join(f"{p} {m.version(p)}" for p in
      ["mindformers", "mindspore", "transformers", "torch", "numpy", "safetensors", "mindpet"]))
EOF

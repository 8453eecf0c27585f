#!/usr/bin/env bash
# The prepared GPU benchmark (one H200, under 10 minutes, nothing downloaded).
#
#   bash benchmarks/gpu.sh                   # Llama-3.2-1B and Llama-3.1-8B shapes on the GPU
#   SHAPES=tiny bash benchmarks/gpu.sh       # the same plumbing on CPU with a tiny shape (a minute)
#
# Builds random-init Llama-3.2-1B-shaped and Llama-3.1-8B-shaped models from their config values,
# trains each at sequence length 2048 with packing and prints real tokens/s, MFU (against 989 TFLOP/s
# dense bf16; formula in benchmarks/gpu_bench.py) and peak memory against llmft's estimate:
#   1B LoRA, 1B full fine-tuning, HF Trainer + PEFT LoRA on 1B (for the ratio), 8B LoRA, 8B QLoRA
#   (the QLoRA row says "skipped" with llmft's reason where the installed llmft has no QLoRA).
# Results go to $OUT/gpu-bench.json (the device tool's output folder) or benchmarks/results/.
#
# The GPU image has torch, transformers, peft and accelerate but not datasets, pydantic or
# bitsandbytes. Carry them as wheels (built here, where pip reaches PyPI):
#   bash benchmarks/gpu_wheels.sh            # writes .whl/ (ignored by git)
# and in the device call name `.whl` in `carry`; this script installs them into /tmp/site first.
# Environment: SHAPES (comma list: 1b,8b,tiny), RUNS (comma list of run names, e.g. 1b-lora), STEPS (default 20), WARMUP (3), WORKDIR, RESULTS,
# PYTHON (default .venv/bin/python, else python3), USE_WHEELS=0 to ignore .whl/ (e.g. a CPU dry run here:
# the wheels are built for the GPU image's Python 3.12).
set -euo pipefail
cd "$(dirname "$0")/.."

SHAPES=${SHAPES:-1b,8b}
STEPS=${STEPS:-20}
WARMUP=${WARMUP:-3}
WORKDIR=${WORKDIR:-/tmp/llmft-gpu-bench}
PY=${PYTHON:-python3}
if [ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ]; then PY=.venv/bin/python; fi

if [ "${USE_WHEELS:-1}" = 1 ] && compgen -G ".whl/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD:$PWD/src${PYTHONPATH:+:$PYTHONPATH}
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1

missing=$("$PY" - <<'EOF'
import importlib.util
need = ["torch", "transformers", "peft", "accelerate", "datasets", "pydantic", "yaml", "safetensors"]
print(" ".join(n for n in need if importlib.util.find_spec(n) is None))
EOF
)
if [ -n "$missing" ]; then
    echo "gpu.sh: missing Python packages: $missing" >&2
    echo "gpu.sh: run 'bash benchmarks/gpu_wheels.sh' where pip works and carry .whl (see the header)" >&2
    exit 2
fi
"$PY" -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("bitsandbytes") is None)' \
    || echo "gpu.sh: bitsandbytes is not installed: the QLoRA row will be skipped"

if [ -n "${OUT:-}" ]; then RESULTS=${RESULTS:-$OUT/gpu-bench.json}; fi
RESULTS=${RESULTS:-benchmarks/results/$(date -u +%Y-%m-%d)-gpu-$(hostname).json}
"$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available(),
    torch.cuda.get_device_name() if torch.cuda.is_available() else "")'
time "$PY" -m benchmarks.gpu_bench --shapes "$SHAPES" --steps "$STEPS" --warmup "$WARMUP" \
    --workdir "$WORKDIR" --out "$RESULTS" --runs "${RUNS:-}"
echo "wrote $RESULTS"

#!/usr/bin/env bash
# Everything one GPU lease runs, in one call (the device tool's `run`): the CUDA tests, the lever
# probes and the benchmark, each stage under its own time limit, every log and JSON under $OUT.
#
#   STAGES=tests,probe,bench bash benchmarks/gpu_session.sh
#
# Stages: info (versions, nvidia-smi), tests (pytest tests/gpu), probe (benchmarks/gpu_probe.py),
# bench (benchmarks/gpu.sh; SHAPES, STEPS as there). Wheels in .whl/ (benchmarks/gpu_wheels.sh) are
# installed into /tmp/site first. Limits per stage: TESTS_S, PROBE_S, BENCH_S (seconds).
set -uo pipefail
cd "$(dirname "$0")/.."
STAGES=${STAGES:-info,tests,probe,bench}
OUT=${OUT:-/tmp/llmft-gpu-out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
if [ "${USE_WHEELS:-1}" = 1 ] && compgen -G ".whl/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || echo "gpu_session: wheel install failed" >&2
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD:$PWD/src${PYTHONPATH:+:$PYTHONPATH}
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
has() { [[ ",$STAGES," == *",$1,"* ]]; }
stamp() { echo "=== $1 ($(date -u +%H:%M:%S))"; }

if has info; then
    stamp info
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv
    "$PY" - <<'EOF'
import importlib, torch
print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(),
      "cc", torch.cuda.get_device_capability(), "nccl", torch.cuda.nccl.version())
for name in ["transformers", "peft", "accelerate", "datasets", "pydantic", "bitsandbytes", "torchao",
             "pyarrow", "fsspec", "huggingface_hub", "triton", "flash_attn"]:
    try:
        print(name, importlib.import_module(name).__version__)
    except Exception as exc:
        print(name, "-", type(exc).__name__, str(exc)[:120])
EOF
fi
if has tests; then
    stamp tests
    timeout "${TESTS_S:-150}" "$PY" -m pytest tests/gpu -q -rA -p no:cacheprovider 2>&1 | tee "$OUT/tests.log" | tail -40
fi
if has probe; then
    stamp probe
    timeout "${PROBE_S:-150}" "$PY" -m benchmarks.gpu_probe --size "${PROBE_SIZE:-1b}" --only "${PROBES:-attention,loss,compile,float8,optimizers}" \
        --out "$OUT/probe.json" 2>"$OUT/probe.err"
    echo "probe exit $?"; grep -E "Error|error" "$OUT/probe.err" | grep -v Warning | tail -8
fi
if has bench; then
    stamp bench
    USE_WHEELS=0 RESULTS="$OUT/gpu-bench.json" timeout "${BENCH_S:-300}" bash benchmarks/gpu.sh 2>&1 | tee "$OUT/bench.log" | tail -25
fi
stamp done

#!/usr/bin/env bash
# The checks that need a CUDA GPU, in one run (for a session that is lent a GPU machine; see README "GPU").
# Usage on the GPU machine, from the repository root, with a python3 that has torch with CUDA:
#   bash scripts/gpu_checks.sh [OUT_DIR]
# 1. the GPU tests (CUDA kernels: forward parity in both numerics, gradients, a whole forecast; the shared
#    empty start through the CUDA forward-from-states path);
# 2. the inference benchmark on the GPU (ours only where tirex-ts is not installed);
# 3. where fastapi, uvicorn and mcp import (carry them as wheels where the machine has none), the server's
#    load test with the model on the GPU, 10 s per mode.
# Each step's output goes to OUT_DIR (default ./gpu_checks) and a failing step does not stop the others.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-gpu_checks}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 | tee "$OUT/gpu.txt"
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())" \
  2>&1 | tee -a "$OUT/gpu.txt"
status=0
timeout 300 "$PY" -m pytest -q -m gpu -p no:cacheprovider tests/test_cuda_kernels.py tests/test_empty_prefix.py \
  2>&1 | tee "$OUT/pytest_gpu.txt" || status=1
timeout 240 "$PY" benchmarks/bench_inference.py --device cuda --quick --no-ref --json "$OUT/bench_inference_cuda.json" \
  2>&1 | tee "$OUT/bench_inference_cuda.txt" || status=1
if "$PY" -c "import fastapi, uvicorn, mcp" 2>/dev/null; then
  timeout 200 "$PY" benchmarks/load_test_server.py --device cuda --duration 10 --threads 4 \
    --output "$OUT/server_load_cuda.json" 2>&1 | tee "$OUT/server_load_cuda.txt" || status=1
else
  echo "fastapi / uvicorn / mcp missing: server load test skipped" | tee "$OUT/server_load_cuda.txt"
fi
exit $status

#!/usr/bin/env bash
# Measure one CPU family for the README's "CPU families measured" table: exact mode (and the fast mode,
# and torch's matmuls as an A/B) against tirex-ts eager, in alternating processes, one thread and the
# default threads, at batch 32 and batch 1. Writes benchmarks/results/cpu_<tag>_*.json (the JSON holds
# the CPU model, its ISA flags and the load average of every process) and prints the tables.
#
# Usage: bash benchmarks/run_cpu_family.sh TAG        (e.g. zen4, spr, graviton3)
# Needs .venv (bash scripts/setup.sh) and .venv-ref (see benchmarks/bench_inference.py). Run it on a
# quiet machine: `uptime` before and after is recorded; a 1-minute load above the core count makes
# default-thread numbers meaningless (torch's parallel ops then wait for descheduled workers).
set -euo pipefail
cd "$(dirname "$0")/.."
TAG="${1:?usage: run_cpu_family.sh TAG}"
OUT=benchmarks/results
lscpu | grep -E "Model name|^CPU\(s\)|Flags" | sed 's/^/# /'
uptime
# The fast mode is measured at batch 32 only where the CPU multiplies bfloat16 natively: elsewhere
# set_fast_mode refuses it (emulated bfloat16 runs about 30x slower), and batch 1 already shows that cost.
b32_fast=()
if .venv/bin/python -c "import sys, tirex.inference as i; sys.exit(0 if i.cpu_has_fast_bf16() else 1)"; then
  b32_fast=(--ours-fast)
else
  echo "# no native bfloat16 on this CPU: fast mode timed at batch 1 only"
fi
for threads in 1 default; do
  extra=()
  [ "$threads" = 1 ] && extra=(--threads 1)
  .venv/bin/python benchmarks/bench_inference.py "${extra[@]}" --ours-fast --variant torch_mm=TIREX_CPU_GEMM=0 \
    --scenario b1_ctx2048_h32 --procs 3 --reps 5 --json "$OUT/cpu_${TAG}_b1_threads${threads}.json"
  uptime
  .venv/bin/python benchmarks/bench_inference.py "${extra[@]}" "${b32_fast[@]}" \
    --scenario b32_ctx2048_h64 --procs 2 --reps 2 --json "$OUT/cpu_${TAG}_b32_threads${threads}.json"
  uptime
done

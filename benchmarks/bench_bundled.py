"""Batch-1 forecast time of two bundled-model candidates side by side, in alternating processes.

The bundled model is what ``load_model()`` returns; a new one must stay fast at batch 1 on a CPU. Each
measurement is a fresh process that loads one model, forecasts once (first call), then times
``--reps`` more forecasts of one series (median). Processes alternate A, B, A, B, ... so that load drift
on a shared machine hits both alike; the script prints medians over processes and the ratio B / A.

Usage:
    python benchmarks/bench_bundled.py previous=runs/bundled_v1_model new=tirex/weights/default
    python benchmarks/bench_bundled.py a=DIR b=DIR --context 2048 --horizon 48 --processes 5 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

WORKER = r"""
import json, sys, time
import numpy as np
from tirex import load_model
source, context, horizon, reps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
model = load_model(source)
x = np.sin(np.arange(context) / 7.0) * 10 + np.random.default_rng(0).normal(size=context)
t = time.perf_counter(); model.forecast(x, horizon); first = time.perf_counter() - t
times = []
for _ in range(reps):
    t = time.perf_counter(); model.forecast(x, horizon); times.append(time.perf_counter() - t)
print(json.dumps({"first_s": first, "median_s": sorted(times)[len(times) // 2],
                  "context_length": model.config.context_length, "parameters": model.num_parameters}))
"""


def cpu_info() -> dict:
    info = {"machine": platform.machine()}
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in text.splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("Model name", "Flags"):
                info[key.strip()] = value.strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    info["load_1min"] = os.getloadavg()[0]
    return info


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs=2, help="NAME=SOURCE, twice (load_model sources)")
    p.add_argument("--context", type=int, default=2048)
    p.add_argument("--horizon", type=int, default=48)
    p.add_argument("--processes", type=int, default=5, help="processes per model")
    p.add_argument("--reps", type=int, default=20, help="timed forecasts per process")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    models = dict(m.split("=", 1) for m in args.models)
    runs = {name: [] for name in models}
    for _ in range(args.processes):
        for name, source in models.items():
            out = subprocess.run([sys.executable, "-c", WORKER, source, str(args.context), str(args.horizon), str(args.reps)],
                                 capture_output=True, text=True, check=True).stdout
            runs[name].append(json.loads(out.strip().splitlines()[-1]))
    summary = {"cpu": cpu_info(), "context": args.context, "horizon": args.horizon, "models": {}}
    for name, rs in runs.items():
        summary["models"][name] = {
            "source": models[name], "context_length": rs[0]["context_length"], "parameters": rs[0]["parameters"],
            "median_s": statistics.median(r["median_s"] for r in rs), "first_s": statistics.median(r["first_s"] for r in rs),
        }
    a, b = list(summary["models"])
    summary["ratio_b_over_a"] = summary["models"][b]["median_s"] / summary["models"][a]["median_s"]
    print(f"CPU: {summary['cpu'].get('Model name', '?')}, load {summary['cpu']['load_1min']:.1f}")
    for name, row in summary["models"].items():
        print(f"{name:12s} context {row['context_length']:5d}  batch-1 forecast {row['median_s'] * 1e3:7.1f} ms "
              f"(first call {row['first_s'] * 1e3:7.1f} ms)")
    print(f"{b} / {a}: {summary['ratio_b_over_a']:.2f}x the time")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

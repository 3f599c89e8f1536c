"""What the two quantile post-processing steps of ``forecast`` do on the offline suite, side by side:

- raw: the model's quantiles as it predicts them (``model.rollout``; crossing levels possible);
- sorted: sorted along the level (what ``forecast`` returns; a rearrangement that never raises the loss);
- keep_sign: sorted, then clipped at 0 for series whose history is all >= 0 (``forecast(..., keep_sign=True)``).

    python -m tirex_eval.offline_quantiles [--model SOURCE] [--tasks a,b]

For each of the nine M1 / M3 / Tourism tasks (official horizons, last window): WQL (mean over the nine levels of
2 * summed pinball loss / summed |y|, as fev computes it), MASE of the median (seasonal error of each history,
the task's seasonality), the share of forecast steps with crossing quantiles in the raw output and the share of
steps with a quantile below 0 in a non-negative series. The aggregate is the geometric mean over tasks of each
metric relative to Seasonal Naive computed the same way, on the same data. These series are evaluation data only.
"""

from __future__ import annotations

import argparse
import math

import numpy as np
import torch

from .chronos_bench import load_task_configs
from .metrics import seasonal_error
from .offline import DIFFERENT_FROM_PUBLISHED, OFFLINE_TASKS, offline_series


def wql(quantiles: np.ndarray, y: np.ndarray, levels) -> float:
    """Weighted quantile loss: mean over levels of 2 * sum of pinball losses / sum |y|; quantiles (n, H, L), y (n, H)."""
    levels = np.asarray(levels)
    diff = y[..., None] - quantiles
    pinball = np.maximum(levels * diff, (levels - 1) * diff)
    return float(2 * pinball.sum(axis=(0, 1)).mean() / np.abs(y).sum())


def mase(median: np.ndarray, y: np.ndarray, histories, season: int) -> float:
    scales = np.array([seasonal_error(h, season) for h in histories])
    errors = np.abs(y - median).mean(axis=1)
    valid = np.isfinite(scales) & (scales > 0)
    return float(np.mean(errors[valid] / scales[valid]))


def seasonal_naive(histories, horizon: int, season: int) -> np.ndarray:
    out = []
    for h in histories:
        m = season if len(h) >= season else 1
        out.append(np.resize(h[-m:], horizon) if m > 1 else np.full(horizon, h[-1]))
    return np.stack(out)


def evaluate_task(model, task: str, season: int) -> dict[str, float]:
    from tirex.inputs import pad_batch

    rows = offline_series(task)
    horizon = rows[0][2]
    histories = [full[:-horizon] for _, full, _ in rows]
    y = np.stack([full[-horizon:] for _, full, _ in rows])
    levels = model.config.quantile_levels
    context = pad_batch([torch.tensor(h[-model.config.context_length:]) for h in histories])  # copies: read-only arrays too
    raw = model.rollout(context, horizon).double().numpy()
    variants = {"raw": raw, "sorted": np.sort(raw, axis=-1)}
    kept, _ = model.forecast(histories, horizon, output_type="numpy", keep_sign=True)
    variants["keep_sign"] = kept.astype(np.float64)
    non_negative = np.array([bool((h[np.isfinite(h)] >= 0).all()) for h in histories])
    out = {"crossing_steps": float((np.diff(raw, axis=-1) < 0).any(-1).mean()),
           "below_zero_steps": float((raw[non_negative].min(-1) < 0).mean()) if non_negative.any() else 0.0}
    median = levels.index(0.5)
    for name, q in variants.items():
        out[f"WQL {name}"] = wql(q, y, levels)
        out[f"MASE {name}"] = mase(q[..., median], y, histories, season)
    sn = seasonal_naive(histories, horizon, season)
    out["WQL seasonal_naive"] = wql(np.repeat(sn[..., None], len(levels), axis=-1), y, levels)
    out["MASE seasonal_naive"] = mase(sn, y, histories, season)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="a load_model source (default: the bundled model)")
    parser.add_argument("--tasks", default=None, help="comma-separated offline tasks (default: all nine)")
    args = parser.parse_args(argv)
    from tirex import load_model

    model = load_model(args.model)
    seasons = {c["task_name"]: int(c.get("seasonality", 1)) for c in load_task_configs()}
    tasks = args.tasks.split(",") if args.tasks else list(OFFLINE_TASKS)
    results = {task: evaluate_task(model, task, seasons[task]) for task in tasks}
    variants = ("raw", "sorted", "keep_sign")
    print("| task | crossing steps (raw) | steps below 0 (raw, non-negative series) | "
          + " | ".join(f"WQL {v}" for v in variants) + " | " + " | ".join(f"MASE {v}" for v in variants) + " |")
    print("| --- |" + " --- |" * (2 + 2 * len(variants)))
    for task, r in results.items():
        cells = [f"{r['crossing_steps']:.1%}", f"{r['below_zero_steps']:.1%}"]
        cells += [f"{r[f'WQL {v}']:.5f}" for v in variants] + [f"{r[f'MASE {v}']:.4f}" for v in variants]
        print(f"| {task}{' (*)' if task in DIFFERENT_FROM_PUBLISHED else ''} | " + " | ".join(cells) + " |")
    for label, subset in (("8 tasks", [t for t in tasks if t not in DIFFERENT_FROM_PUBLISHED]), ("all tasks", tasks)):
        if not subset:
            continue
        cells = []
        for metric in ("WQL", "MASE"):
            for v in variants:
                ratios = [results[t][f"{metric} {v}"] / results[t][f"{metric} seasonal_naive"] for t in subset]
                cells.append(f"{metric} {v} {math.exp(np.mean(np.log(ratios))):.4f}")
        print(f"\nrelative to Seasonal Naive, {label}: " + ", ".join(cells))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

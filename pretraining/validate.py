"""Choose between finished models on the pretraining pool's held-out series only (never on evaluation data).

The validation that runs during training scores one patch at the end of each held-out series: cheap, but
with a few hundred series it moves by several percent between neighbouring checkpoints. This is the
thorough version for a final choice (which run, which checkpoint): the real ``forecast`` path, short-term
horizons by frequency (GIFT-Eval's: yearly 6, quarterly 8, monthly 12, weekly 8, daily 30, else 48), up to
``windows`` rolling origins per series, every model on exactly the same windows.

Scores, each relative to Seasonal Naive on the same windows (lower is better):
    MASE  mean absolute error of the median / the series' seasonal error, averaged over forecasts
    sQL   the quantile loss (9 levels) / the seasonal error: a scaled CRPS, averaged over forecasts
Paired per-series differences against the first model give a standard error, so "B beats A by 0.01"
can be told apart from noise.

    python -m tirex_pretraining.validate runs/a/model_best runs/b/model_best --config default_model
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from .config import load_config
from .corpus import SEASON_LENGTH
from .datamodule import load_sources, seasonal_naive, split_sources

HORIZONS = {"Y": 6, "Q": 8, "M": 12, "W": 8, "D": 30}
DEFAULT_HORIZON = 48
MIN_CONTEXT = 16


def validation_tasks(series: list[np.ndarray], freqs: list[str], windows: int = 3) -> list[dict]:
    """Forecast windows: {"series", "context", "target", "season"}, the last ``windows`` origins per series."""
    tasks = []
    for i, (x, f) in enumerate(zip(series, freqs)):
        h = HORIZONS.get(f, DEFAULT_HORIZON)
        x = np.asarray(x, dtype=np.float32)
        for w in range(windows):
            end = len(x) - w * h
            context, target = x[: end - h], x[end - h : end]
            if np.count_nonzero(~np.isnan(context)) < MIN_CONTEXT or np.isnan(target).all():
                break
            tasks.append({"series": i, "context": context, "target": target, "season": SEASON_LENGTH.get(f, 1)})
    return tasks


def _seasonal_error(context: np.ndarray, season: int) -> float:
    x = context[~np.isnan(context)]
    m = season if 1 <= season < len(x) else 1
    err = np.abs(x[m:] - x[:-m]).mean() if len(x) > m else np.nan
    return float(err) if err > 0 else np.nan


def scaled_losses(tasks: list[dict], quantiles: list[np.ndarray], levels) -> tuple[np.ndarray, np.ndarray]:
    """Per task: MAE of the median / seasonal error, and mean quantile loss / seasonal error (NaN if unscalable)."""
    levels = np.asarray(levels, dtype=np.float64)
    median = int(np.argmin(np.abs(levels - 0.5)))
    mase, sql = np.full(len(tasks), np.nan), np.full(len(tasks), np.nan)
    for k, (task, q) in enumerate(zip(tasks, quantiles)):
        y = task["target"].astype(np.float64)
        ok = ~np.isnan(y)
        scale = _seasonal_error(task["context"], task["season"])
        if not np.isfinite(scale) or not ok.any():
            continue
        q = np.asarray(q, dtype=np.float64)[ok]  # (h, Q)
        diff = y[ok, None] - q
        mase[k] = np.abs(diff[:, median]).mean() / scale
        sql[k] = (2 * np.maximum(levels * diff, (levels - 1) * diff)).mean() / scale
    return mase, sql


def forecast_tasks(model, tasks: list[dict], batch_size: int = 256) -> list[np.ndarray]:
    """(h, Q) quantile forecasts per task, grouped by horizon."""
    out: list[np.ndarray | None] = [None] * len(tasks)
    by_h: dict[int, list[int]] = {}
    for k, t in enumerate(tasks):
        by_h.setdefault(len(t["target"]), []).append(k)
    for h, ids in by_h.items():
        for start in range(0, len(ids), batch_size):
            chunk = ids[start : start + batch_size]
            q, _ = model.forecast([torch.from_numpy(tasks[k]["context"]) for k in chunk], prediction_length=h,
                                  output_type="numpy")
            for k, qk in zip(chunk, q):
                out[k] = qk
    return out


def seasonal_naive_quantiles(tasks: list[dict], num_levels: int) -> list[np.ndarray]:
    return [np.repeat(seasonal_naive(t["context"], t["season"], len(t["target"]))[:, None], num_levels, axis=1)
            for t in tasks]


def validate(models: dict[str, str], config, windows: int = 3, batch_size: int = 256) -> dict:
    """Score models (name -> ``load_model`` source) on the held-out pool series of ``config``'s split."""
    from tirex import load_model

    cfg = load_config(config)
    _, val = split_sources(cfg, load_sources(cfg))
    tasks = validation_tasks(val.values, val.freqs, windows)
    if not tasks:
        raise ValueError("no validation windows: the held-out series are too short")
    series = np.array([t["series"] for t in tasks])
    results = {}
    levels = None
    for name, source in models.items():
        model = load_model(source)
        levels = model.config.quantile_levels
        mase, sql = scaled_losses(tasks, forecast_tasks(model, tasks, batch_size), levels)
        results[name] = {"mase": mase, "sql": sql}
    sn_mase, sn_sql = scaled_losses(tasks, seasonal_naive_quantiles(tasks, len(levels)), levels)
    valid = np.isfinite(sn_mase) & np.all([np.isfinite(r["mase"]) for r in results.values()], axis=0)
    summary = {"tasks": int(valid.sum()), "series": int(len(np.unique(series[valid]))), "models": {}}
    first = next(iter(results))
    for name, r in results.items():
        row = {
            "MASE_rel": float(r["mase"][valid].mean() / sn_mase[valid].mean()),
            "sQL_rel": float(r["sql"][valid].mean() / sn_sql[valid].mean()),
        }
        # paired difference of the relative sQL against the first model, with a standard error over series
        diff = (r["sql"][valid] - results[first]["sql"][valid]) / sn_sql[valid].mean()
        by_series = np.array([diff[series[valid] == s].sum() for s in np.unique(series[valid])])
        row["sQL_rel_minus_first"] = float(diff.sum() / valid.sum())
        row["stderr"] = float(by_series.std(ddof=1) * np.sqrt(len(by_series)) / valid.sum()) if len(by_series) > 1 else 0.0
        summary["models"][name] = row
    return summary


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m tirex_pretraining.validate", description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="+", help="model folders / checkpoints (load_model sources); NAME=SOURCE to label")
    p.add_argument("--config", default="default_model", help="training config whose validation split is used")
    p.add_argument("--windows", type=int, default=3, help="rolling origins per held-out series")
    p.add_argument("--json", type=Path, help="also write the summary here")
    args = p.parse_args(argv)
    from .cli import _config_path

    models = {}
    for item in args.models:
        name, sep, source = item.partition("=")
        models[name if sep else item] = source if sep else item
    try:
        summary = validate(models, _config_path(args.config), args.windows)
    except (ValueError, FileNotFoundError) as exc:
        print(f"validate: error: {exc}", file=sys.stderr)
        return 2
    print(f"{summary['tasks']} forecasts on {summary['series']} held-out pool series (relative to Seasonal Naive)")
    print(f"{'model':40s} {'MASE':>7s} {'sQL':>7s} {'sQL - first':>12s} {'+-':>7s}")
    for name, row in summary["models"].items():
        print(f"{name:40s} {row['MASE_rel']:7.4f} {row['sQL_rel']:7.4f} {row['sQL_rel_minus_first']:12.4f} {row['stderr']:7.4f}")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

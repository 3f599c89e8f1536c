"""Choose between finished models on the pretraining pool's held-out series only (never on evaluation data).

The validation that runs during training scores one patch at the end of each held-out series: cheap, but
with a few hundred series it moves by several percent between neighbouring checkpoints. This is the
thorough version for a final choice (which run, which checkpoint): the real ``forecast`` path, horizons
that fit each frequency (``corpus.FORECAST_HORIZON``: yearly 6, quarterly 8, monthly 12, weekly 8,
daily 30, else 48), up to ``windows`` rolling origins per series, every model on exactly the same windows.

Validation series are the config's held-out series (whole series no training run saw) and, with
``data.val_tail_windows``, the held-out tails of long high-frequency training series (the last horizons,
cut from training). Results are stratified by frequency (``corpus.STRATA``: hourly, sub-hourly, daily,
weekly, monthly, quarterly, yearly).

Scores, per stratum, each relative to Seasonal Naive on the same windows (lower is better):
    MASE  mean absolute error of the median / the series' seasonal error, averaged over forecasts
    sQL   the quantile loss (9 levels) / the seasonal error: a scaled CRPS, averaged over forecasts
The aggregate is the geometric mean over strata (as GIFT-Eval aggregates over tasks). Differences to the
first model are paired (same windows); their standard errors come from a bootstrap over series within
each stratum, so "B beats A by 0.01" can be told apart from noise.

    python -m tirex_pretraining.validate current=tirex/weights/default runs/a/model_best fracast-0 --config bundled_v2
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import torch

from .config import load_config
from .corpus import DEFAULT_HORIZON, FORECAST_HORIZON, SEASON_LENGTH, STRATA, STRATUM
from .datamodule import load_sources, seasonal_naive, split_sources

HORIZONS = FORECAST_HORIZON  # kept for callers of the first version
MIN_CONTEXT = 16
MAX_CONTEXT = 16_384  # longer histories are cut (no model here reads more; the seasonal error uses these values)
BASELINES = ("fracast-0",)  # model names that are not load_model sources


def validation_tasks(series, freqs, windows: int = 3, kinds=None, tail_windows: int | None = None) -> list[dict]:
    """Forecast windows: {"series", "context", "target", "season", "stratum"}, the last origins per series.

    A held-out tail (kind "tail") gets at most ``tail_windows`` origins: only those targets were cut from training.
    """
    tasks = []
    kinds = kinds or ["series"] * len(series)
    for i, (x, f, kind) in enumerate(zip(series, freqs, kinds)):
        h = FORECAST_HORIZON.get(f, DEFAULT_HORIZON)
        n_windows = min(windows, tail_windows) if kind == "tail" and tail_windows is not None else windows
        x = np.asarray(x, dtype=np.float32)
        for w in range(n_windows):
            end = len(x) - w * h
            context, target = x[max(0, end - h - MAX_CONTEXT) : end - h], x[end - h : end]
            if np.count_nonzero(~np.isnan(context)) < MIN_CONTEXT or np.isnan(target).all():
                break
            tasks.append({"series": i, "context": context, "target": target, "season": SEASON_LENGTH.get(f, 1),
                          "stratum": STRATUM.get(f, "other")})
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


def forecast_tasks(predict, tasks: list[dict], batch_size: int = 256) -> list[np.ndarray]:
    """(h, Q) quantile forecasts per task, grouped by horizon; ``predict(contexts, h, season) -> (n, h, Q)``."""
    out: list[np.ndarray | None] = [None] * len(tasks)
    by_key: dict[tuple[int, int], list[int]] = {}
    for k, t in enumerate(tasks):
        by_key.setdefault((len(t["target"]), t["season"]), []).append(k)
    for (h, season), ids in by_key.items():
        for start in range(0, len(ids), batch_size):
            chunk = ids[start : start + batch_size]
            q = predict([tasks[k]["context"] for k in chunk], h, season)
            for k, qk in zip(chunk, q):
                out[k] = np.asarray(qk)
    return out


def _predictor(name: str, source: str, levels):
    """``(predict(contexts, h, season), identity)`` for a load_model source or a named baseline; the identity
    names the exact model (a digest of its config and weights), so cached scores are reused only for it."""
    if source == "fracast-0":
        from importlib.metadata import version

        from tirex_eval.fracast_adapter import FracastForecaster

        model = FracastForecaster()
        return (lambda ctx, h, season: model.predict_quantiles(ctx, h, levels, season)[0]), f"fracast-0-{version('fracast')}"
    from tirex import load_model
    from tirex.loading import model_digest

    model = load_model(source)
    if [round(q, 6) for q in model.config.quantile_levels] != [round(q, 6) for q in levels]:
        raise ValueError(f"{name}: predicts levels {model.config.quantile_levels}, validation uses {list(levels)}")
    predict = lambda ctx, h, season: model.forecast([torch.from_numpy(c) for c in ctx], prediction_length=h,  # noqa: E731
                                                    output_type="numpy")[0]
    return predict, model_digest(model)


def window_digests(tasks: list[dict], levels) -> list[str]:
    """One digest per validation window (context, target, season, stratum, series) and the levels."""
    salt = json.dumps([round(float(q), 6) for q in levels]).encode()
    out = []
    for t in tasks:
        digest = hashlib.sha256(salt)
        digest.update(f"{t['series']}|{t['stratum']}|{t['season']}|{len(t['context'])}|{len(t['target'])}|".encode())
        digest.update(np.ascontiguousarray(t["context"], dtype=np.float64).tobytes())
        digest.update(np.ascontiguousarray(t["target"], dtype=np.float64).tobytes())
        out.append(digest.hexdigest()[:32])
    return out


def model_scores(name: str, source: str, tasks: list[dict], levels, batch_size: int = 256,
                 cache_dir: Path | None = None, digests: list[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-window (MASE, sQL) of one model. With ``cache_dir``, scores are kept per window in one file per
    model identity (a digest of its config and weights): a window scored before, in any selection of windows,
    is not forecast again, and other weights never reuse them."""
    predict, identity = _predictor(name, source, levels)
    if cache_dir is None:
        return scaled_losses(tasks, forecast_tasks(predict, tasks, batch_size), levels)
    digests = digests or window_digests(tasks, levels)
    path = Path(cache_dir) / f"scores-{identity[:32]}.npz"
    known: dict[str, tuple[float, float]] = {}
    if path.is_file():
        with np.load(path, allow_pickle=False) as cached:
            known = {str(k): (float(m), float(q)) for k, m, q in zip(cached["windows"], cached["mase"], cached["sql"])}
    missing = [k for k, d in enumerate(digests) if d not in known]
    if missing:
        mase, sql = scaled_losses([tasks[k] for k in missing], forecast_tasks(predict, [tasks[k] for k in missing],
                                                                               batch_size), levels)
        known.update({digests[k]: (float(m), float(q)) for k, m, q in zip(missing, mase, sql)})
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        keys = sorted(known)
        np.savez(tmp, windows=np.array(keys), mase=np.array([known[k][0] for k in keys]),
                 sql=np.array([known[k][1] for k in keys]), source=np.array(str(source)), identity=np.array(identity))
        tmp.replace(path)
    return np.array([known[d][0] for d in digests]), np.array([known[d][1] for d in digests])


def seasonal_naive_quantiles(tasks: list[dict], num_levels: int) -> list[np.ndarray]:
    return [np.repeat(seasonal_naive(t["context"], t["season"], len(t["target"]))[:, None], num_levels, axis=1)
            for t in tasks]


def _relative(scores: np.ndarray, baseline: np.ndarray, strata: np.ndarray, names) -> dict[str, float]:
    return {s: float(scores[strata == s].mean() / baseline[strata == s].mean()) for s in names}


def _geomean(values) -> float:
    return float(np.exp(np.mean(np.log(list(values)))))


def _bootstrap_indices(series: np.ndarray, strata: np.ndarray, names, replicates: int, seed: int = 0):
    """Task indices of ``replicates`` resamples of whole series within each stratum."""
    rng = np.random.default_rng(seed)
    groups = {s: [np.flatnonzero((strata == s) & (series == i)) for i in np.unique(series[strata == s])] for s in names}
    for _ in range(replicates):
        picked = []
        for s in names:
            g = groups[s]
            picked.extend(g[j] for j in rng.integers(len(g), size=len(g)))
        yield np.concatenate(picked)


def validate(models: dict[str, str], config, windows: int = 3, batch_size: int = 256, replicates: int = 200,
             cache_dir: Path | None = None, exclude: tuple[str, ...] = ()) -> dict:
    """Score models (name -> ``load_model`` source, or "fracast-0") on the config's held-out pool series.

    Returns per-model, per-stratum MASE and sQL relative to Seasonal Naive, their geometric means over the
    strata, and paired differences to the first model with bootstrap standard errors. ``cache_dir`` keeps
    each model's per-window scores (keyed by the windows and the model's weights) for later comparisons.
    ``exclude`` drops validation series by origin: "pool" (a source's held-out series), "pool/tails" (the
    held-out tails of its training series), e.g. windows that an earlier model was trained on.
    """
    from tirex import DEFAULT_QUANTILE_LEVELS

    cfg = load_config(config)
    _, val = split_sources(cfg, load_sources(cfg))
    if exclude:
        unknown = set(exclude) - set(val.sources)
        if unknown:
            raise ValueError(f"exclude: no validation series come from {sorted(unknown)}; origins: {sorted(set(val.sources))}")
        val = val.subset([i for i, origin in enumerate(val.sources) if origin not in exclude], "val")
    tasks = validation_tasks(val.values, val.freqs, windows, val.kinds, cfg.data.val_tail_windows or None)
    if not tasks:
        raise ValueError("no validation windows: the held-out series are too short")
    levels = list(DEFAULT_QUANTILE_LEVELS)
    digests = window_digests(tasks, levels)
    results = {name: model_scores(name, source, tasks, levels, batch_size, cache_dir, digests)
               for name, source in models.items()}
    sn_mase, sn_sql = scaled_losses(tasks, seasonal_naive_quantiles(tasks, len(levels)), levels)
    valid = np.isfinite(sn_mase) & np.all([np.isfinite(m) for m, _ in results.values()], axis=0)
    series = np.array([t["series"] for t in tasks])[valid]
    strata = np.array([t["stratum"] for t in tasks])[valid]
    names = [s for s in (*STRATA, "other") if (strata == s).any()]  # "other": series of unknown frequency
    sn_mase, sn_sql = sn_mase[valid], sn_sql[valid]
    summary = {
        "tasks": int(valid.sum()),
        "excluded": list(exclude),
        "series": int(len(np.unique(series))),
        "strata": {s: {"forecasts": int((strata == s).sum()), "series": int(len(np.unique(series[strata == s])))}
                   for s in names},
        "models": {},
    }
    boot = list(_bootstrap_indices(series, strata, names, replicates))
    first = next(iter(results))
    agg_boot = {}
    for name, (mase, sql) in results.items():
        mase, sql = mase[valid], sql[valid]
        rel_mase, rel_sql = _relative(mase, sn_mase, strata, names), _relative(sql, sn_sql, strata, names)
        agg_boot[name] = np.array([_geomean(_relative(sql[b], sn_sql[b], strata[b], names).values()) for b in boot])
        summary["models"][name] = {
            "source": models[name],
            "MASE": rel_mase, "sQL": rel_sql,
            "MASE_geomean": _geomean(rel_mase.values()), "sQL_geomean": _geomean(rel_sql.values()),
            "strata_boot": {s: [float(sql[b][strata[b] == s].mean() / sn_sql[b][strata[b] == s].mean()) for b in boot]
                            for s in names},
        }
    for name, row in summary["models"].items():
        ref = summary["models"][first]
        row["sQL_geomean_minus_first"] = row["sQL_geomean"] - ref["sQL_geomean"]
        row["sQL_geomean_minus_first_se"] = float(np.std(agg_boot[name] - agg_boot[first], ddof=1))
        row["sQL_minus_first"] = {s: row["sQL"][s] - ref["sQL"][s] for s in names}
        row["sQL_minus_first_se"] = {
            s: float(np.std(np.subtract(row["strata_boot"][s], ref["strata_boot"][s]), ddof=1)) for s in names
        }
    for row in summary["models"].values():
        del row["strata_boot"]
    return summary


GUARDED_STRATA = ("monthly", "quarterly", "yearly")  # what the M1/M3/Tourism suite measures


def apply_rule(summary: dict, guarded=GUARDED_STRATA) -> dict[str, dict]:
    """The selection rule against the first model of ``summary`` (the model in use), for every other one:
    it qualifies if its aggregate sQL beats the first by more than one paired standard error and it is not
    worse on any ``guarded`` stratum by more than one paired standard error of that stratum. The winner is
    the qualifying model with the lowest aggregate sQL (``None``: keep the first). Baselines (fracast-0) are
    reported beside the candidates but never chosen."""
    first, *others = summary["models"]
    others = [n for n in others if summary["models"][n].get("source") not in BASELINES]  # reported, never chosen
    verdicts: dict[str, dict] = {}
    for name in others:
        row = summary["models"][name]
        diff, se = row["sQL_geomean_minus_first"], row["sQL_geomean_minus_first_se"]
        worse = [s for s in guarded if s in row["sQL_minus_first"]
                 and row["sQL_minus_first"][s] > row["sQL_minus_first_se"][s]]
        beats = diff < -se
        verdicts[name] = {"beats_first": bool(beats), "worse_on": worse, "qualifies": bool(beats and not worse)}
    qualified = [n for n, v in verdicts.items() if v["qualifies"]]
    winner = min(qualified, key=lambda n: summary["models"][n]["sQL_geomean"]) if qualified else None
    return {"first": first, "verdicts": verdicts, "winner": winner}


def format_rule(decision: dict) -> str:
    lines = []
    for name, v in decision["verdicts"].items():
        why = "qualifies" if v["qualifies"] else (
            "does not beat " + decision["first"] + " by > 1 s.e." if not v["beats_first"] else "")
        if v["worse_on"]:
            why = (why + "; " if why and not v["qualifies"] else "") + "worse by > 1 s.e. on " + ", ".join(v["worse_on"])
        lines.append(f"- {name}: {why}")
    lines.append(f"winner: {decision['winner'] or 'none (keep ' + decision['first'] + ')'}")
    return "\n".join(lines)


def format_table(summary: dict) -> str:
    """A markdown table: one row per model, sQL / MASE per stratum, then the geometric means."""
    names = list(summary["strata"])
    head = "| model | " + " | ".join(f"{s} ({summary['strata'][s]['forecasts']})" for s in names) + " | geo. mean | vs first (+- s.e.) |"
    lines = [head, "|" + " --- |" * (len(names) + 3)]
    for name, row in summary["models"].items():
        cells = [f"{row['sQL'][s]:.3f} / {row['MASE'][s]:.3f}" for s in names]
        diff = f"{row['sQL_geomean_minus_first']:+.4f} +- {row['sQL_geomean_minus_first_se']:.4f}"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {row['sQL_geomean']:.3f} / {row['MASE_geomean']:.3f} | {diff} |")
    lines.append("| Seasonal Naive | " + " | ".join("1.000 / 1.000" for _ in names) + " | 1.000 / 1.000 | |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m tirex_pretraining.validate", description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="+", help="model folders / checkpoints (load_model sources) or fracast-0; NAME=SOURCE to label")
    p.add_argument("--config", default="default_model", help="training config whose validation split is used")
    p.add_argument("--windows", type=int, default=3, help="rolling origins per held-out series")
    p.add_argument("--replicates", type=int, default=200, help="bootstrap resamples for the standard errors")
    p.add_argument("--json", type=Path, help="also write the summary here")
    p.add_argument("--rule", action="store_true", help="apply the selection rule against the first model (see "
                   "apply_rule) and print each candidate's verdict and the winner")
    p.add_argument("--exclude", action="append", default=[], metavar="ORIGIN",
                   help="leave out validation series of this origin (repeatable): SOURCE for a source's held-out "
                   "series, SOURCE/tails for the held-out tails of its training series, e.g. pool/tails")
    p.add_argument("--cache-dir", type=Path, help="keep per-window scores here (by windows and model weights): a model "
                   "scored once, e.g. the current bundled one, is not forecast again")
    args = p.parse_args(argv)
    from .cli import _config_path

    models = {}
    for item in args.models:
        name, sep, source = item.partition("=")
        models[name if sep else item] = source if sep else item
    try:
        summary = validate(models, _config_path(args.config), args.windows, replicates=args.replicates,
                           cache_dir=args.cache_dir, exclude=tuple(args.exclude))
    except (ValueError, FileNotFoundError) as exc:
        print(f"validate: error: {exc}", file=sys.stderr)
        return 2
    left_out = f" (left out: {', '.join(summary['excluded'])})" if summary["excluded"] else ""
    print(f"{summary['tasks']} forecasts on {summary['series']} held-out pool series{left_out}; "
          "sQL / MASE relative to Seasonal Naive")
    print(format_table(summary))
    if args.rule:
        summary["rule"] = apply_rule(summary)
        print(format_rule(summary["rule"]))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

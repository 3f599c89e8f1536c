"""Leaderboards: GIFT-Eval (relative MASE / CRPS and ranks) and Chronos Benchmark II (relative score, skill
score, win rate), computed from our results next to the published ones shipped in ``data/``."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

GIFT_MASE = "eval_metrics/MASE[0.5]"
GIFT_CRPS = "eval_metrics/mean_weighted_sum_quantile_loss"
BASELINE_GIFT = "seasonal_naive"
BASELINE_CHRONOS = "seasonal_naive"


def own_runs(ours: pd.DataFrame, column: str, baseline: str) -> pd.DataFrame:
    """Our results with a run of the baseline renamed ``<baseline> (this run)``: it joins the board next to
    the published baseline instead of replacing it, so every published model keeps its published ratios."""
    ours = ours.copy()
    ours[column] = ours[column].where(ours[column] != baseline, f"{baseline} (this run)")
    return ours


def _data_dir() -> Path:
    return Path(str(resources.files(__package__) / "data"))


def geometric_mean(values) -> float:
    """Geometric mean of positive values (NaN if any is missing or not positive)."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0 or not np.all(values > 0):
        return float("nan")
    return float(np.exp(np.mean(np.log(values))))


# ---------------------------------------------------------------------------------------------- GIFT-Eval
def load_gift_published(folder: str | Path | None = None) -> pd.DataFrame:
    """All published GIFT-Eval results as one frame; ``model`` is the submission's folder name."""
    folder = Path(folder) if folder else _data_dir() / "gift_eval_published_results"
    frames = []
    for path in sorted(folder.glob("*/all_results.csv")):
        frame = pd.read_csv(path)
        frame["model"] = path.parent.name
        frames.append(frame)
    if not frames:
        raise FileNotFoundError(f"no */all_results.csv under {folder}")
    return pd.concat(frames, ignore_index=True)


def gift_leaderboard(
    results: pd.DataFrame | Sequence[pd.DataFrame] | None = None,
    published: pd.DataFrame | None = None,
    baseline: str = BASELINE_GIFT,
    configs: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Rank models the way the GIFT-Eval leaderboard does.

    Missing (or infinite) metric values are filled with that column's mean over all rows; each metric is divided
    by the baseline's (Seasonal Naive) on the same configuration; MASE and CRPS are geometric means of those ratios;
    MASE_Rank / CRPS_Rank are the rank within each configuration among all models on the board (ties broken by
    model name order), averaged over configurations. ``results`` (our all_results.csv frames) join the
    published ones; a model name present in both is replaced by ours, except the baseline: our run of it is
    shown as ``<baseline> (this run)`` and every ratio stays relative to the published baseline.

    Returns one row per model, sorted by CRPS_Rank: model, MASE, CRPS, MASE_Rank, CRPS_Rank, n_configs.
    """
    board = load_gift_published() if published is None else published.copy()
    if results is not None:
        ours = pd.concat([results] if isinstance(results, pd.DataFrame) else list(results), ignore_index=True)
        ours = own_runs(ours, "model", baseline)
        board = pd.concat([board[~board["model"].isin(ours["model"].unique())], ours], ignore_index=True)
    board = board.drop_duplicates(["model", "dataset"], keep="last").copy()
    for column in (GIFT_MASE, GIFT_CRPS):
        board[column] = pd.to_numeric(board[column], errors="coerce").replace([np.inf, -np.inf], np.nan)
        board[column] = board[column].fillna(board[column].mean())
    if configs is not None:  # after the fill: the leaderboard fills from all rows
        board = board[board["dataset"].isin(configs)]
    base = board[board["model"] == baseline].set_index("dataset")
    if base.empty:
        raise ValueError(f"baseline {baseline!r} has no results on the board")
    board = board[board["dataset"].isin(base.index)]
    board["mase_ratio"] = board[GIFT_MASE].to_numpy() / base.loc[board["dataset"], GIFT_MASE].to_numpy()
    board["crps_ratio"] = board[GIFT_CRPS].to_numpy() / base.loc[board["dataset"], GIFT_CRPS].to_numpy()
    board = board.sort_values(["dataset", "model"], kind="stable")
    grouped = board.groupby("dataset")
    board["mase_rank"] = grouped[GIFT_MASE].rank(method="first")
    board["crps_rank"] = grouped[GIFT_CRPS].rank(method="first")
    table = board.groupby("model").agg(
        MASE=("mase_ratio", geometric_mean), CRPS=("crps_ratio", geometric_mean),
        MASE_Rank=("mase_rank", "mean"), CRPS_Rank=("crps_rank", "mean"), n_configs=("dataset", "size"),
    )
    return table.sort_values(["CRPS_Rank", "CRPS"]).reset_index()


# ---------------------------------------------------------------------------------------- Chronos Bench II
def load_chronos_published(folder: str | Path | None = None) -> pd.DataFrame:
    """Published per-task Chronos Benchmark II results: columns model_name, task_name, MASE, WQL."""
    folder = Path(folder) if folder else _data_dir() / "chronos_bench_ii"
    frames = [pd.read_csv(p) for p in sorted(folder.glob("*.csv"))]
    if not frames:
        raise FileNotFoundError(f"no published result CSVs in {folder}")
    return pd.concat(frames, ignore_index=True)[["model_name", "task_name", "MASE", "WQL"]]


def chronos_leaderboard(
    results: pd.DataFrame | Sequence[pd.DataFrame] | None = None,
    published: pd.DataFrame | None = None,
    baseline: str = BASELINE_CHRONOS,
    tasks: Sequence[str] | None = None,
    clip: tuple[float, float] = (0.01, 100.0),
) -> pd.DataFrame:
    """Aggregate Chronos Benchmark II results over the tasks every model on the board has.

    Per metric (WQL, MASE): ``relative_*`` = geometric mean over tasks of model / baseline (Chronos paper),
    ``skill_*`` = 1 - geometric mean of those ratios clipped to ``clip`` (fev), ``win_rate_*`` = share of
    (task, other model) pairs with a lower error, ties counting half (fev).
    ``tasks`` restricts the board (e.g. the nine offline tasks); otherwise the tasks of ``results`` are used
    when given, else all published tasks. A task missing for any model raises. ``results`` must come from
    the same data as the published runs (the offline suite leaves out tasks whose copy differs). Our run
    of the baseline joins as ``<baseline> (this run)``; it never replaces the published baseline.
    """
    board = load_chronos_published() if published is None else published.copy()
    if results is not None:
        ours = pd.concat([results] if isinstance(results, pd.DataFrame) else list(results), ignore_index=True)
        ours = own_runs(ours[["model_name", "task_name", "MASE", "WQL"]], "model_name", baseline)
        board = pd.concat([board[~board["model_name"].isin(ours["model_name"].unique())], ours], ignore_index=True)
        tasks = tasks if tasks is not None else list(ours["task_name"].unique())
    if tasks is not None:
        board = board[board["task_name"].isin(tasks)]
    rows = {}
    for metric in ("WQL", "MASE"):
        errors = board.pivot_table(index="task_name", columns="model_name", values=metric, aggfunc="last")
        if errors.isna().any().any():
            missing = errors.columns[errors.isna().any()].tolist()
            raise ValueError(f"{metric}: models {missing} lack results on some of the tasks {errors.index.tolist()}")
        if baseline not in errors:
            raise ValueError(f"baseline {baseline!r} has no results on these tasks")
        ratios = errors.div(errors[baseline], axis=0)
        rows[f"relative_{metric}"] = ratios.apply(geometric_mean)
        rows[f"skill_{metric}"] = 1 - ratios.clip(*clip).apply(geometric_mean)
        values = errors.to_numpy()  # (tasks, models)
        a, b = values[:, :, None], values[:, None, :]
        wins = (a < b).mean(0) + 0.5 * (a == b).mean(0)
        np.fill_diagonal(wins, np.nan)
        rows[f"win_rate_{metric}"] = pd.Series(np.nanmean(wins, axis=1), index=errors.columns)
    table = pd.DataFrame(rows)
    table["n_tasks"] = board.groupby("model_name")["task_name"].nunique()
    return table.sort_values("relative_WQL").rename_axis("model").reset_index()

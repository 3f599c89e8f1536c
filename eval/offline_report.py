"""One command for the default model's results table: the offline suite for our model, fracast-0 and
Seasonal Naive through the harness, next to the published results.

    python -m tirex_eval.offline_report [--model SOURCE] [--output-dir eval_results/offline_report]

Relative scores are per task model / Seasonal Naive (our runs against the harness's own Seasonal Naive on
the same data, published models against the published Seasonal Naive), then the geometric mean over the
tasks. The headline aggregate uses the 8 tasks whose data matches the Hub's (without tourism yearly, see the
offline-suite notes); the 9-task figure is shown too. Reruns skip finished tasks.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from .leaderboard import load_chronos_published
from .offline import DIFFERENT_FROM_PUBLISHED
from .suites import run_fev_suite

OFFLINE_TASKS = [
    "monash_m1_yearly", "monash_m1_quarterly", "monash_m1_monthly",
    "monash_m3_yearly", "monash_m3_quarterly", "monash_m3_monthly",
    "monash_tourism_yearly", "monash_tourism_quarterly", "monash_tourism_monthly",
]
MISMATCHED = DIFFERENT_FROM_PUBLISHED  # ours there are divided by the harness Seasonal Naive on the same copy
PUBLISHED = {"tirex": "TiRex (35M)", "auto_theta": "AutoTheta", "chronos_bolt_base": "Chronos-Bolt-base",
             "auto_ets": "AutoETS", "chronos_bolt_tiny": "Chronos-Bolt-tiny"}


def _geomean_relative(frame: pd.DataFrame, baseline: pd.DataFrame, tasks) -> dict[str, float]:
    out = {}
    for metric in ("MASE", "WQL"):
        ratio = frame.set_index("task_name").loc[tasks, metric] / baseline.set_index("task_name").loc[tasks, metric]
        out[metric] = float(np.exp(np.log(ratio).mean()))
    return out


def build_table(ours: dict[str, pd.DataFrame], harness_sn: pd.DataFrame) -> str:
    published = load_chronos_published()
    published = published[published["task_name"].isin(OFFLINE_TASKS)]
    pub_sn = published[published["model_name"] == "seasonal_naive"]
    matched = [t for t in OFFLINE_TASKS if t not in MISMATCHED]
    rows = []
    for label, frame in ours.items():
        rows.append((label, frame, harness_sn))
    for key, label in PUBLISHED.items():
        rows.append((label + " (published)", published[published["model_name"] == key], pub_sn))
    rows.append(("Seasonal Naive", harness_sn, harness_sn))

    lines = ["| model | MASE (8 tasks) | WQL (8 tasks) | MASE (9 tasks) | WQL (9 tasks) |", "| --- | --- | --- | --- | --- |"]
    for label, frame, base in rows:
        a, b = _geomean_relative(frame, base, matched), _geomean_relative(frame, base, OFFLINE_TASKS)
        lines.append(f"| {label} | {a['MASE']:.3f} | {a['WQL']:.3f} | {b['MASE']:.3f} | {b['WQL']:.3f} |")
    lines += ["", "Per task (MASE / WQL):", "",
              "| task | " + " | ".join(ours) + " | TiRex (published) | Seasonal Naive |",
              "| --- |" + " --- |" * (len(ours) + 2)]
    tirex = published[published["model_name"] == "tirex"].set_index("task_name")
    sn = harness_sn.set_index("task_name")
    for task in OFFLINE_TASKS:
        cells = [f"{f.set_index('task_name').loc[task, 'MASE']:.3f} / {f.set_index('task_name').loc[task, 'WQL']:.3f}"
                 for f in ours.values()]
        cells += [f"{tirex.loc[task, 'MASE']:.3f} / {tirex.loc[task, 'WQL']:.3f}", f"{sn.loc[task, 'MASE']:.3f} / {sn.loc[task, 'WQL']:.3f}"]
        lines.append(f"| {task}{' (*)' if task in MISMATCHED else ''} | " + " | ".join(cells) + " |")
    lines += ["", "Relative scores: geometric mean over tasks of model / Seasonal Naive (lower is better). "
              "(*) the package's copy of tourism yearly differs from the Hub's; excluded from the 8-task aggregate."]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="our model (default: the bundled model)")
    parser.add_argument("--name", default="tirex-default (ours)", help="label of our model")
    parser.add_argument("--no-fracast", action="store_true", help="skip fracast-0 (needs pip install fracast)")
    parser.add_argument("--output-dir", type=Path, default=Path("eval_results/offline_report"))
    args = parser.parse_args(argv)
    data_dir = args.output_dir / "data"
    runs = [(args.name, args.model, "ours"), ("Seasonal Naive (harness)", "seasonal_naive", "seasonal_naive")]
    if not args.no_fracast:
        runs.insert(1, ("fracast-0 (85k)", "fracast", "fracast_0"))
    frames = {}
    for label, spec, folder in runs:
        out = args.output_dir / folder
        run_fev_suite("offline", spec, folder, data_dir, out, OFFLINE_TASKS, progress=True)
        frames[label] = pd.read_csv(out / "results.csv")[["task_name", "MASE", "WQL"]]
    harness_sn = frames.pop("Seasonal Naive (harness)")
    table = build_table(frames, harness_sn)
    (args.output_dir / "results_table.md").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

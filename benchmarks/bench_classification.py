"""Classification and regression from TiRex embeddings against MiniRocket and a random forest on raw values.

Runs every method on the UCR/UEA datasets that ship inside the ``aeon`` wheel, in one process, and prints
one markdown table: accuracy (regression: RMSE) and fit + predict seconds per dataset and method. These
datasets are evaluation data only: nothing here trains or tunes the forecaster on them.

    # aeon 1.6 caps numba below 0.64, which does not support this project's numpy; its MiniRocket runs
    # fine on numba 0.64, so install aeon without its pins (only the benchmark needs it):
    pip install --no-deps aeon==1.6.0 && pip install numba==0.64.0 deprecated
    OMP_NUM_THREADS=1 python benchmarks/bench_classification.py [--model SOURCE] [--datasets A,B] [--out FILE.json]

Data are read from aeon's folder with ``tirex.tsfile.read_ts`` (no aeon import needed for them); without
aeon importable the MiniRocket column is left empty. Unequal-length datasets are resampled (linear
interpolation) to their longest case for MiniRocket and the raw random forest, which need equal lengths;
TiRex takes them as they are. Everything runs on one thread. Each method runs with seeds 0, 1 and 2 (on
training sets of 36-50 cases one seed's accuracy can be 0.05 off the mean) and the table shows the mean
score and the seconds of one fit + predict (TiRex: the seed-0 run, which embeds; seeds 1 and 2 reuse its
embeddings through ``cache_dir``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from tirex.cpu_kernel import cpu_model, isa_flags  # the CPU as the speed benchmarks record it

CLASSIFICATION = ["ArrowHead", "GunPoint", "ItalyPowerDemand", "OSULeaf", "ACSF1", "BasicMotions", "JapaneseVowels",
                  "PickupGestureWiimoteZ"]
REGRESSION = ["Covid3Month", "CardanoSentiment"]
UNIVARIATE = {"ArrowHead", "GunPoint", "ItalyPowerDemand", "OSULeaf", "ACSF1", "PickupGestureWiimoteZ"}


def aeon_data_dir() -> Path:
    spec = importlib.util.find_spec("aeon")
    if spec is None or spec.origin is None:
        sys.exit("aeon is not installed; see the docstring of this script for how to install it")
    return Path(spec.origin).parent / "datasets" / "data"


def load(name: str):
    from tirex.tsfile import read_ts

    folder = aeon_data_dir() / name
    train, test = read_ts(folder / f"{name}_TRAIN.ts"), read_ts(folder / f"{name}_TEST.ts")
    return train, test


def equal_length(cases: list[np.ndarray], length: int) -> np.ndarray:
    """(n, channels, length): each case linearly resampled to ``length`` (NaN filled by interpolation)."""
    out = np.empty((len(cases), cases[0].shape[0], length))
    grid = np.linspace(0.0, 1.0, length)
    for i, case in enumerate(cases):
        for c, row in enumerate(case):
            known = ~np.isnan(row)
            x = np.linspace(0.0, 1.0, row.size) if row.size > 1 else np.zeros(1)
            out[i, c] = np.interp(grid, x[known], row[known]) if known.any() else 0.0
    return out



def run_method(make, train_X, train_y, test_X, test_y, regression, seeds):
    """Mean score over ``seeds`` and the seconds of the first run."""
    scores, first = [], None
    for seed in seeds:
        start = time.perf_counter()
        pred = make(seed).fit(train_X, train_y).predict(test_X)
        first = time.perf_counter() - start if first is None else first
        if regression:
            scores.append(float(np.sqrt(np.mean((pred.astype(float) - test_y.astype(float)) ** 2))))
        else:
            scores.append(float(np.mean(pred.astype(str) == test_y.astype(str))))
    return float(np.mean(scores)), first


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="model source for TiRex (default: the bundled model)")
    ap.add_argument("--datasets", default=None, help="comma-separated subset (default: all)")
    ap.add_argument("--head", default="extra_trees", help="TiRex head (default: the estimators' default, extra_trees)")
    ap.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--seeds", type=int, default=3, help="seeds per method (default 3)")
    args = ap.parse_args(argv)

    import tempfile

    import torch
    from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor

    from tirex import load_model
    from tirex.classification import TiRexClassifier, TiRexRegressor

    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    wanted = args.datasets.split(",") if args.datasets else CLASSIFICATION + REGRESSION
    try:
        from aeon.classification.convolution_based import MiniRocketClassifier
        from aeon.regression.convolution_based import MiniRocketRegressor

        warm = np.random.default_rng(0).normal(size=(6, 1, 40))  # compile numba once, outside the timings
        MiniRocketClassifier(random_state=0, n_jobs=1).fit(warm, np.array([0, 1] * 3)).predict(warm)
    except ImportError:
        MiniRocketClassifier = MiniRocketRegressor = None
        print("aeon is not importable: MiniRocket is skipped", file=sys.stderr)

    rows = []
    for name in wanted:
        regression = name in REGRESSION
        train, test = load(name)
        length = max(c.shape[1] for c in train.cases + test.cases)
        equal = len({c.shape[1] for c in train.cases + test.cases}) == 1
        eq_train, eq_test = equal_length(train.cases, length), equal_length(test.cases, length)
        y_train = train.labels.astype(float) if regression else train.labels
        y_test = test.labels.astype(float) if regression else test.labels
        cache = tempfile.mkdtemp(prefix="tirex-bench-")  # shared by the seeds of this dataset only
        methods = {
            "tirex": (lambda seed: (TiRexRegressor if regression else TiRexClassifier)(
                model=model, head=args.head, random_state=seed, n_jobs=1, cache_dir=cache), train.cases, test.cases),
            "rf_raw": (lambda seed: (RandomForestRegressor if regression else RandomForestClassifier)(
                n_estimators=500, random_state=seed, n_jobs=1), eq_train.reshape(len(eq_train), -1),
                eq_test.reshape(len(eq_test), -1)),
        }
        if MiniRocketClassifier is not None:
            methods["minirocket"] = (lambda seed: (MiniRocketRegressor if regression else MiniRocketClassifier)(
                random_state=seed, n_jobs=1), eq_train, eq_test)
        row = {"dataset": name, "task": "regression" if regression else "classification",
               "train": len(train.cases), "test": len(test.cases), "channels": train.cases[0].shape[0],
               "length": length if equal else f"{min(c.shape[1] for c in train.cases + test.cases)}-{length}",
               "classes": None if regression else int(len(np.unique(y_train)))}
        for method, (make, X_tr, X_te) in methods.items():
            score, seconds = run_method(make, X_tr, y_train, X_te, y_test, regression, range(args.seeds))
            row[method] = score
            row[f"{method}_s"] = seconds
        shutil.rmtree(cache, ignore_errors=True)
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)

    print(f"\nCPU: {cpu_model()} ({os.cpu_count()} cores, {' '.join(isa_flags())}; torch threads {args.threads}); model: "
          f"{args.model or 'bundled'} ({model.num_parameters / 1e6:.2f}M parameters, context {model.config.context_length}); "
          f"head {args.head}; mean of {args.seeds} seeds; seconds: one fit + predict\n")
    methods = [m for m in ("tirex", "minirocket", "rf_raw") if any(m in r for r in rows)]
    print("| dataset | cases (train/test) | channels | length | classes | "
          + " | ".join(f"{m} | {m} s" for m in methods) + " |")
    print("| --- " * (5 + 2 * len(methods)) + "|")
    for r in rows:
        cells = [f"{r[m]:.3f} | {r[m + '_s']:.1f}" if m in r else "- | -" for m in methods]
        print(f"| {r['dataset']} | {r['train']}/{r['test']} | {r['channels']} | {r['length']} | "
              f"{r['classes'] or 'regression (RMSE)'} | " + " | ".join(cells) + " |")
    cls = [r for r in rows if r["task"] == "classification"]
    for label, subset in (("mean accuracy, all classification", cls),
                          ("mean accuracy, univariate", [r for r in cls if r["dataset"] in UNIVARIATE])):
        if subset:
            means = " | ".join(f"{np.mean([r[m] for r in subset]):.3f} | {sum(r[m + '_s'] for r in subset):.1f}"
                               if all(m in r for r in subset) else "- | -" for m in methods)
            print(f"| {label} ({len(subset)}) | | | | | " + means + " |")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"cpu": cpu_model(), "isa_flags": isa_flags(), "model": args.model or "bundled", "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

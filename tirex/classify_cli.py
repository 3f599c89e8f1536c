"""``tirex classify TRAIN TEST``: fit a TiRex-embedding classifier (or regressor) on TRAIN, predict TEST.

TRAIN and TEST are ``.ts`` files or CSV/Parquet tables (``tirex.tsfile`` describes the layouts). Writes one
row per test case (case id, prediction, the true label if TEST has one, class probabilities) and prints
the accuracy (regression: RMSE and R^2) when TEST is labelled.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HEAD_CHOICES = {"et": "extra_trees", "extra_trees": "extra_trees", "rf": "random_forest",
                "random_forest": "random_forest", "linear": "linear", "gb": "gradient_boosting",
                "gradient_boosting": "gradient_boosting"}


def add_subparser(sub) -> None:
    p = sub.add_parser(
        "classify", help="classify (or regress) whole series with TiRex embeddings (.ts, CSV or Parquet)",
        description="Fit a classifier (or regressor) on frozen TiRex embeddings of the cases in TRAIN and "
                    "predict the cases in TEST. Files: .ts (UCR/UEA format) or CSV/Parquet, long (case id, "
                    "[channel], [time], value, label) or wide (one row per case: label + one column per time point).")
    p.add_argument("train", type=Path, help="labelled training cases (.ts, .csv or .parquet)")
    p.add_argument("test", type=Path, help="cases to predict; if labelled, the score is printed")
    p.add_argument("--task", choices=("auto", "classification", "regression"), default="auto",
                   help="auto: regression if the .ts file says @targetLabel or the labels are non-integer numbers")
    p.add_argument("--head", choices=sorted(HEAD_CHOICES), default="et",
                   help="et = extra trees (default), rf = random forest, linear, gb = gradient boosting")
    p.add_argument("--model", default=None, help="model folder, .ckpt file or Hub repo id (default: the bundled model)")
    p.add_argument("--output", "-o", type=Path, default=None, help="write predictions here (.csv or .parquet)")
    p.add_argument("--label-column", default=None, help="label column of a CSV/Parquet file (default: label/class/y)")
    p.add_argument("--no-diff", action="store_true", help="leave out the first-difference embedding")
    p.add_argument("--no-statistics", action="store_true", help="leave out the per-segment statistics")
    p.add_argument("--resolutions", type=_factors, default=(1, 2, 4),
                   help="time-stretch factors embedded, comma-separated (default 1,2,4; 1 = the paper's recipe, 7x faster)")
    p.add_argument("--trees", type=int, default=500, help="trees of the extra-trees / random-forest head (default 500)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the head (default 0)")
    p.add_argument("--cache-dir", type=Path, default=None, help="cache embeddings in this folder (.npz)")
    p.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda")
    p.set_defaults(func=cmd_classify)


def _factors(text: str) -> tuple[int, ...]:
    try:
        factors = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"--resolutions must be comma-separated positive integers like 1,2,4, got {text!r}")
    if not factors or min(factors) <= 0:
        raise argparse.ArgumentTypeError(f"--resolutions must be comma-separated positive integers like 1,2,4, got {text!r}")
    return factors


def _is_regression(train, task: str) -> bool:
    import numpy as np

    if task != "auto":
        return task == "regression"
    if train.regression is not None:
        return train.regression
    try:
        values = train.labels.astype(np.float64)
    except (TypeError, ValueError):
        return False
    return bool(np.any(values != np.round(values)))


def cmd_classify(args) -> int:
    try:
        import sklearn  # noqa: F401
    except ImportError:
        print("tirex classify: error: needs scikit-learn; install the extra: pip install 'tirex[classification]'",
              file=sys.stderr)
        return 2
    import numpy as np
    import pandas as pd

    from tirex.classification import TiRexClassifier, TiRexRegressor
    from tirex.tsfile import read_collection

    train = read_collection(args.train, args.label_column)
    test = read_collection(args.test, args.label_column)
    if train.labels is None:
        raise ValueError(f"{args.train}: no labels; the training file needs a label for every case")
    regression = _is_regression(train, args.task)
    estimator = (TiRexRegressor if regression else TiRexClassifier)(
        model=args.model, head=HEAD_CHOICES[args.head], diff=not args.no_diff, statistics=not args.no_statistics,
        resolutions=args.resolutions, n_estimators=args.trees, random_state=args.seed, cache_dir=args.cache_dir, device=args.device, progress=sys.stderr.isatty())
    start = time.perf_counter()
    estimator.fit(train.cases, train.labels)
    fitted = time.perf_counter() - start
    out = pd.DataFrame({"case": test.ids})
    if regression:
        out["prediction"] = estimator.predict(test.cases)
    else:
        proba = estimator.predict_proba(test.cases)
        out["prediction"] = estimator.classes_[proba.argmax(axis=1)]
        for j, cls in enumerate(estimator.classes_):
            out[f"proba_{cls}"] = proba[:, j]
    if test.labels is not None:
        out.insert(2, "label", test.labels.astype(np.float64) if regression else test.labels)
    kind = "regressor" if regression else f"classifier, {len(estimator.classes_)} classes"
    print(f"fitted on {len(train.cases)} cases ({kind}, {train.cases[0].shape[0]} channel(s)) in {fitted:.1f} s; "
          f"predicted {len(test.cases)} cases in {time.perf_counter() - start - fitted:.1f} s", file=sys.stderr)
    if args.output:
        from tirex.cli import _write_atomic

        _write_atomic(out, args.output)
        print(f"wrote {len(out)} predictions to {args.output}", file=sys.stderr)
    elif test.labels is None:
        print(out[["case", "prediction"]].to_string(index=False))
    if test.labels is not None:
        if regression:
            err = out["prediction"].to_numpy() - out["label"].to_numpy()
            total = ((out["label"] - out["label"].mean()) ** 2).sum()
            r2 = 1 - (err**2).sum() / total if total > 0 else float("nan")
            print(f"rmse {np.sqrt(np.mean(err**2)):.6g}  r2 {r2:.4f}  ({len(out)} cases)")
        else:
            labels = np.asarray(test.labels).astype(str)
            accuracy = float(np.mean(out["prediction"].to_numpy().astype(str) == labels))
            print(f"accuracy {accuracy:.4f}  ({int(round(accuracy * len(out)))} of {len(out)} cases)")
    return 0

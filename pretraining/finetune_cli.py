"""``tirex finetune FILE --horizon H``: fine-tune a model on the series of a CSV/Parquet file."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_subparser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "finetune", help="fine-tune a model on your own series",
        description="Fine-tune a model on every series in FILE (long or wide CSV/Parquet, as for `tirex forecast`). "
                    "The last HORIZON values of each series are held out for validation and early stopping; the "
                    "result is a model folder that `tirex forecast --model` and load_model() read.",
    )
    p.add_argument("file", type=Path, help="input table (.csv or .parquet)")
    p.add_argument("--horizon", "-H", type=int, required=True, help="forecast horizon (held out for validation)")
    p.add_argument("--model", default=None, help="model to start from (default: the bundled model)")
    p.add_argument("--output-dir", type=Path, required=True,
                   help="run folder: checkpoints, logs, report; the tuned model goes to OUTPUT_DIR/model")
    p.add_argument("--mode", choices=("full", "head"), default="full",
                   help="full: all weights (default); head: the quantile head only (fast)")
    p.add_argument("--max-steps", type=int, default=300, help="training steps at most (default 300)")
    p.add_argument("--learning-rate", type=float, default=None, help="default 1e-4 (full) or 1e-3 (head)")
    p.add_argument("--batch-size", type=int, default=32, help="training windows per step (default 32)")
    p.add_argument("--val-every", type=int, default=25, help="validate every N steps (default 25)")
    p.add_argument("--patience", type=int, default=4, help="stop after N validations without improvement")
    p.add_argument("--resume", action="store_true", help="continue an interrupted fine-tune in OUTPUT_DIR")
    p.add_argument("--layout", choices=("auto", "long", "wide"), default="auto", help="table layout")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--num-threads", type=int, default=None,
                   help="torch CPU threads (default: 1 on machines with up to 4 CPUs, else the CPUs not already busy)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (it goes to stderr)")
    p.add_argument("--id-column", default=None, help="series id column (long layout)")
    p.add_argument("--timestamp-column", default=None, help="timestamp column")
    p.add_argument("--target-column", default=None, help="value column (long layout)")
    p.add_argument("--freq", default=None, help="the series' frequency (pandas alias; default: inferred)")
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    from tirex import load_model
    from tirex.io import read_table, to_long

    from .finetune import finetune

    long = to_long(read_table(args.file), args.file, args.layout, args.id_column, args.timestamp_column,
                   args.target_column, args.freq)
    model = load_model(args.model)
    tuned, report = finetune(
        model, long, args.horizon, mode=args.mode, max_steps=args.max_steps, learning_rate=args.learning_rate,
        batch_size=args.batch_size, val_every_n_steps=args.val_every, patience=args.patience,
        output_dir=args.output_dir, resume=args.resume, seed=args.seed, progress=not args.no_progress,
        num_threads=args.num_threads, id_column="item_id", timestamp_column="timestamp", target_column="target",
        freq=args.freq,
    )
    tuned.save_pretrained(args.output_dir / "model")
    print(report)
    print(f"wrote the model to {args.output_dir / 'model'} and per-series results to {args.output_dir / 'finetune_report.csv'}")
    return 0

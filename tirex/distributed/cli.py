"""``tirex forecast DATA --engine ray --output DIR [--address ADDRESS]``: the CLI face of ``forecast_dataset``."""

from __future__ import annotations

import argparse
import sys


def path_or_uri(text: str):
    """argparse type: a URI (``s3://...``) stays a string (``Path`` would fold its ``//``), anything else a Path."""
    from pathlib import Path

    return text if "://" in text else Path(text)


def _positive_number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def add_engine_options(parser: argparse.ArgumentParser) -> None:
    """The options of ``tirex forecast`` that choose and tune the engine."""
    group = parser.add_argument_group("distributed engine (pip install 'tirex[distributed]')")
    group.add_argument("--engine", choices=("local", "ray"), default="local",
                       help="local: one process (default); ray: FILE is a file or folder (local or s3://, gs://, ...) "
                            "of long-layout partitions, each series within one file, forecast by Ray actors into "
                            "a folder of Parquet partitions (--output)")
    group.add_argument("--address", default=None,
                       help="Ray cluster to join: 'auto' on a cluster node, host:6379, or ray://host:10001 "
                            "(default: RAY_ADDRESS, else a local Ray instance on this machine)")
    group.add_argument("--num-workers", type=int, default=None,
                       help="model replicas (default: the cluster's CPUs / --cpus-per-worker)")
    group.add_argument("--cpus-per-worker", type=_positive_number, default=1,
                       help="CPUs (and torch threads) per replica (default 1)")
    group.add_argument("--partition-by", choices=("file", "folder"), default="file",
                       help="what one partition is: each data file (default), or all data files directly inside "
                            "one folder (hive layouts such as bucket=7/part-*.parquet); every series must lie "
                            "within one partition")
    group.add_argument("--overwrite", action="store_true",
                       help="replace forecasts of another run in --output (default: refuse; a rerun of the same "
                            "run resumes, skipping partitions already written)")


def forecast_command(args) -> int:
    """Run ``tirex forecast ... --engine ray``; returns the exit code (2: bad input or options)."""
    from ..io import InputError
    from .engine import forecast_dataset, require_ray

    usage = None
    if args.output is None:
        usage = "--engine ray needs --output DIR, the folder for the Parquet partitions"
    elif str(args.output).lower().endswith(".csv"):
        usage = f"--engine ray writes a folder of Parquet partitions; --output {args.output} looks like a CSV file"
    elif args.layout == "wide":
        usage = "--engine ray reads long layout (id, timestamp, target rows); wide tables cannot be split by series"
    elif args.plot is not None:
        usage = "--plot is not available with --engine ray (there may be millions of series); plot a subset"
    elif args.num_workers is not None and args.num_workers <= 0:
        usage = f"--num-workers must be positive, got {args.num_workers}"
    if usage:
        print(f"tirex forecast: error: {usage}", file=sys.stderr)
        return 2
    try:
        require_ray()
    except ImportError as err:
        print(f"tirex forecast: error: {err}", file=sys.stderr)
        return 2
    try:
        result = forecast_dataset(
            args.file, args.horizon, args.output, quantile_levels=args.quantiles, model=args.model,
            id_column=args.id_column, timestamp_column=args.timestamp_column, target_column=args.target_column,
            batch_size=args.batch_size, num_workers=args.num_workers, cpus_per_worker=args.cpus_per_worker,
            device=args.device, address=args.address, partition_by=args.partition_by, overwrite=args.overwrite)
    except InputError as err:
        print(f"tirex forecast: error: {err}", file=sys.stderr)
        return 2
    skipped = f" ({result.skipped} already written, skipped)" if result.skipped else ""
    print(f"wrote {result.rows} rows for {result.series} series in {result.partitions} partitions to "
          f"{result.output}{skipped} in {result.seconds:.1f} s", file=sys.stderr)
    return 0

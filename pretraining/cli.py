"""The ``pretrain`` subcommand: ``tirex pretrain --config ...`` or ``python -m tirex_pretraining ...``."""

from __future__ import annotations

import argparse
import json
import sys
from importlib import resources

CONFIG_NAMES = ("tiny_cpu", "small", "tirex_35m", "default_model", "default_model_stage2", "candidate_patch16", "candidate_e256",
                "bundled_v2", "bundled_v2_stage2")


def _config_path(value: str) -> str:
    """A YAML path, or the name of a config in pretraining/configs (see CONFIG_NAMES)."""
    if value in CONFIG_NAMES:
        return str(resources.files("tirex_pretraining") / "configs" / f"{value}.yaml")
    return value


def _devices(value: str):
    return int(value) if value.isdigit() else value


def add_subparser(subparsers) -> argparse.ArgumentParser:
    """Register ``pretrain`` on an ``argparse`` subparsers object; the handler is ``run``."""
    p = subparsers.add_parser(
        "pretrain",
        help="pretrain a TiRex model on pooled real and synthetic corpora (Lightning)",
        description="Pretrain a TiRex model. Any Lightning accelerator/strategy works: "
        "--accelerator gpu --devices 8 --strategy ddp (or fsdp) --num-nodes 2.",
    )
    p.add_argument("--config", default="tiny_cpu", help=f"YAML config path or one of {CONFIG_NAMES} (default tiny_cpu)")
    p.add_argument("--output-dir", default="runs/pretrain", help="run directory: checkpoints, logs, model folders")
    p.add_argument("--max-steps", type=int, help="override trainer.max_steps")
    p.add_argument("--resume", nargs="?", const="auto", default=None,
                   help="resume from a checkpoint path, or (no value) the newest one in --output-dir")
    p.add_argument("--init-from", help="warm start: initial weights from a model folder, .safetensors, our .ckpt or a "
                   "published TiRex model.ckpt (fresh optimizer and schedule; sets trainer.init_from)")
    p.add_argument("--accelerator", help="cpu, gpu, auto, ... (Lightning)")
    p.add_argument("--devices", type=_devices, help="number of devices, a list like 0,1, or auto (Lightning)")
    p.add_argument("--strategy", help="auto, ddp, fsdp, ... (Lightning)")
    p.add_argument("--num-nodes", type=int, help="nodes for multi-node DDP/FSDP (Lightning)")
    p.add_argument("--precision", help="32-true, bf16-mixed or 16-mixed (weights stay float32; default: bf16-mixed on GPU, 32-true on CPU)")
    p.add_argument("--batch-size", type=int, help="override data.batch_size (per device)")
    p.add_argument("--num-workers", type=int, help="override data.num_workers")
    p.add_argument("--num-threads", type=int, help="torch CPU threads (default on CPU: 1 on machines with up to 4 "
                   "CPUs, else the CPUs not already busy; see tirex_pretraining.threads)")
    p.add_argument("--cache-dir", help="where the offline pool cache lives (default ~/.cache/tirex or $TIREX_CACHE)")
    p.add_argument("--seed", type=int, help="override seed")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override any config key (YAML value), e.g. --set optim.lr=3e-4; repeatable")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (log files only)")
    p.add_argument("--export", nargs=2, metavar=("CHECKPOINT", "DIR"),
                   help="write a checkpoint of a run (checkpoints/*.ckpt) as a load_model folder and exit; no training")
    p.set_defaults(func=run)
    return p


def _overrides(args) -> dict:
    import yaml

    out = {}
    pairs = {
        "trainer.accelerator": args.accelerator, "trainer.devices": args.devices, "trainer.strategy": args.strategy,
        "trainer.num_nodes": args.num_nodes, "trainer.precision": args.precision, "data.batch_size": args.batch_size,
        "data.num_workers": args.num_workers, "trainer.num_threads": args.num_threads, "data.cache_dir": args.cache_dir,
        "seed": args.seed, "trainer.init_from": args.init_from,
    }
    out.update({k: v for k, v in pairs.items() if v is not None})
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set expects SECTION.KEY=VALUE, got {item!r}")
        out[key.strip()] = yaml.safe_load(value)
    return out


def run(args) -> int:
    """Run the ``pretrain`` subcommand; returns the process exit code."""
    from .config import ConfigError
    from .datamodule import DataError
    from .train import export_checkpoint, train

    try:
        if args.export:
            folder = export_checkpoint(*args.export)
            print(f"wrote {folder} (load_model({str(folder)!r}))")
            return 0
        summary = train(
            _config_path(args.config), args.output_dir, max_steps=args.max_steps, resume=args.resume,
            overrides=_overrides(args), progress_bar=not args.no_progress,
        )
    except (ConfigError, DataError, FileNotFoundError, ValueError) as exc:
        print(f"tirex pretrain: error: {exc}", file=sys.stderr)
        return 2
    if summary.pop("global_rank", 0) == 0:
        print(json.dumps(summary, indent=2))
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tirex_pretraining")
    sub = parser.add_subparsers(dest="command", required=True)
    add_subparser(sub)
    args = parser.parse_args(argv)
    return args.func(args)

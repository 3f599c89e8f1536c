"""What starting after a batch's shared empty tokens saves: ``predict_patches`` (which starts from the
cached states after the padding, ``TiRexModel.empty_prefix_states``) against the full forward over the
padded window (what it did before, and what tirex-ts does), in one process, alternating, same weights.

Random weights at the published size (E 512, 12 blocks, window 2048 = 64 tokens); one forecasting pass.
Prints one row per (batch, context length): median ms of each and the ratio. The JSON (``--json``) also
holds the CPU model and ISA flags.

Usage:
    python benchmarks/bench_empty_prefix.py [--threads 1] [--reps 5] [--json benchmarks/results/empty_prefix_<tag>.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

from tirex import ModelConfig, TiRexModel
from tirex.scaling import fit_scale, patch_tokens, window


@torch.no_grad()
def full_forward(model: TiRexModel, context: torch.Tensor) -> torch.Tensor:
    cfg = model.config
    x = window(context, cfg.context_length)
    loc, scale = fit_scale(x)
    tokens = patch_tokens((x - loc) / scale, cfg.patch_size)
    return model(tokens, last_tokens=1) * scale.view(-1, 1, 1, 1) + loc.view(-1, 1, 1, 1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    p.add_argument("--lengths", type=int, nargs="+", default=[128, 512, 1024, 2048])
    p.add_argument("--json")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = published_size()
    info = model.backend_info()["cpu"]
    print(f"# {info['model']} ({' '.join(info['flags'])}), level {info['level']}, matmuls {info['matmuls']}, "
          f"threads {torch.get_num_threads()}, torch {torch.__version__}")
    print("| batch | context | full window ms | from the shared empty start ms | speed-up | same bits |")
    print("|---|---|---|---|---|---|")
    rows = []
    for batch in args.batches:
        for length in args.lengths:
            g = torch.Generator().manual_seed(length)
            context = torch.randn(batch, length, generator=g).cumsum(1)
            a, b = model.predict_patches(context), full_forward(model, context)  # warm-up (and the cached states)
            times = {"full": [], "prefix": []}
            for _ in range(args.reps):  # alternating
                for name, fn in (("full", full_forward), ("prefix", lambda m, c: m.predict_patches(c))):
                    start = time.perf_counter()
                    fn(model, context)
                    times[name].append(time.perf_counter() - start)
            full, prefix = statistics.median(times["full"]), statistics.median(times["prefix"])
            rows.append({"batch": batch, "context": length, "full_s": times["full"], "prefix_s": times["prefix"],
                         "same_bits": bool(torch.equal(a, b))})
            print(f"| {batch} | {length} | {full * 1e3:.1f} | {prefix * 1e3:.1f} | {full / prefix:.2f}x | "
                  f"{'yes' if torch.equal(a, b) else 'no'} |")
    if args.json:
        write_json(args.json, info, rows)


def published_size() -> TiRexModel:
    """Random weights at the published size, with a recurrence and biases that matter."""
    torch.manual_seed(1234)
    model = TiRexModel(ModelConfig()).eval()
    with torch.no_grad():
        for block in model.blocks:
            block.slstm.recurrent.normal_(0, 0.05)
            block.slstm.bias.normal_(0, 0.5)
    model.prepare_inference()
    return model


def write_json(path: str, info: dict, rows: list) -> None:
    """The rows with the machine they ran on (``backend_info()["cpu"]``: CPU model, ISA flags, level)."""
    with open(path, "w") as f:
        json.dump({"cpu": info["model"], "flags": info["flags"], "level": info["level"], "matmuls": info["matmuls"],
                   "threads": torch.get_num_threads(), "torch": torch.__version__,
                   "loadavg_1min": os.getloadavg()[0], "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()

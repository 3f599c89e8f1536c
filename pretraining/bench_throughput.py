"""Training throughput on this machine: series/s, tokens/s, and data loading time vs step time.

    python -m tirex_pretraining.bench_throughput --config small --steps 30 --num-threads 2

Data time is measured twice: making batches alone (what one loader process can supply), and the
time the training loop actually waits for the next batch; compare both with the step time to see
whether data loading is the bottleneck.
"""

from __future__ import annotations

import argparse
import time

import torch

from .cli import _config_path
from .config import load_config
from .datamodule import PretrainDataModule
from .module import TiRexPretrainModule
from .sampling import MixtureSampler, StepBatches


def bench(config, steps: int = 30, warmup: int = 3, num_workers: int | None = None) -> dict:
    """Run ``steps`` optimizer steps of the real training step (forward, backward, AdamW) and time them."""
    cfg = load_config(config, {} if num_workers is None else {"data.num_workers": num_workers})
    data = PretrainDataModule(cfg)
    data.prepare_corpora()
    sampler = MixtureSampler(cfg, data.train_sets)

    t0 = time.perf_counter()
    for s in range(steps):
        sampler.batch(s)
    make_batch = (time.perf_counter() - t0) / steps

    module = TiRexPretrainModule(cfg.to_dict())
    optimizer = module.configure_optimizers()["optimizer"]
    loader = torch.utils.data.DataLoader(
        StepBatches(sampler), batch_size=None, num_workers=cfg.data.num_workers,
        prefetch_factor=4 if cfg.data.num_workers else None,
    )
    wait = compute = 0.0
    it = iter(loader)
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        batch = next(it)
        t1 = time.perf_counter()
        loss = module.loss(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), cfg.optim.grad_clip)
        optimizer.step()
        t2 = time.perf_counter()
        if i >= warmup:
            wait += t1 - t0
            compute += t2 - t1
    b, tokens = cfg.data.batch_size, cfg.model.num_tokens
    step_time = (wait + compute) / steps
    return {
        "parameters": module.model.num_parameters,
        "batch_size": b,
        "tokens_per_series": tokens,
        "step_s": step_time,
        "series_per_s": b / step_time,
        "tokens_per_s": b * tokens / step_time,
        "make_batch_s": make_batch,
        "data_wait_s": wait / steps,
        "compute_s": compute / steps,
        "data_wait_share": wait / (wait + compute),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="tiny_cpu")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--num-workers", type=int)
    p.add_argument("--num-threads", type=int)
    args = p.parse_args(argv)
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    r = bench(_config_path(args.config), args.steps, num_workers=args.num_workers)
    print(f"config {args.config}: {r['parameters']:,} parameters, batch {r['batch_size']} x {r['tokens_per_series']} tokens, "
          f"{torch.get_num_threads()} threads")
    print(f"  step {r['step_s'] * 1e3:.1f} ms = compute {r['compute_s'] * 1e3:.1f} ms + waiting for data {r['data_wait_s'] * 1e3:.1f} ms "
          f"({100 * r['data_wait_share']:.1f}% of the step)")
    print(f"  making one batch in-process: {r['make_batch_s'] * 1e3:.1f} ms")
    print(f"  throughput: {r['series_per_s']:.1f} series/s, {r['tokens_per_s']:.0f} tokens/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

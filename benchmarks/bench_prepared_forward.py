"""What the prepared CPU forward (``tirex.cpu_forward``) saves against the layer-by-layer path, in one process,
alternating, same weights: forecasts at the published size (random weights, window 2048) and the bundled
model, and stream updates of one patch (one token through every block).

Prints one row per scenario: median ms of each path, the ratio, and whether the results are the same bits.
The JSON (``--json``) also holds the CPU model and ISA flags and every timing.

Usage:
    python benchmarks/bench_prepared_forward.py [--threads 1] [--reps 15] [--json benchmarks/results/prepared_forward_<tag>.json]
"""

from __future__ import annotations

import argparse
import statistics
import time
from contextlib import contextmanager

import numpy as np
import torch

from bench_empty_prefix import published_size, write_json
from tirex import cpu_forward, load_model


@contextmanager
def layer_by_layer():
    """The forward without the prepared path (what every forward ran before it)."""
    prepared = cpu_forward.compiled_forward
    cpu_forward.compiled_forward = lambda model: None
    try:
        yield
    finally:
        cpu_forward.compiled_forward = prepared


def forecast_job(model, batch: int, length: int, horizon: int):
    context = torch.randn(batch, length, generator=torch.Generator().manual_seed(length)).cumsum(1)
    return lambda: model.forecast(context, prediction_length=horizon)[0]


def stream_job(model, patches: int):
    """``patches`` updates of one patch each on a stream of one series, then a forecast of one patch."""
    p = model.config.patch_size
    rng = np.random.default_rng(0)
    history, new = rng.normal(size=4 * p).cumsum(), rng.normal(size=patches * p)

    def run():
        stream = model.stream(history)
        for i in range(patches):
            stream.update(new[i * p:(i + 1) * p])
        return stream.forecast(p)[0]
    return run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int)
    p.add_argument("--reps", type=int, default=15)
    p.add_argument("--json")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    big, bundled = published_size(), load_model()
    info = big.backend_info()["cpu"]
    print(f"# {info['model']} ({' '.join(info['flags'])}), level {info['level']}, matmuls {info['matmuls']}, "
          f"threads {torch.get_num_threads()}, torch {torch.__version__}")
    scenarios = [
        ("published size, batch 1, context 2048, horizon 32", forecast_job(big, 1, 2048, 32), 1),
        ("published size, batch 1, context 512, horizon 32", forecast_job(big, 1, 512, 32), 1),
        ("published size, batch 32, context 2048, horizon 64", forecast_job(big, 32, 2048, 64), 1 / 5),
        ("bundled model, batch 1, context 2048, horizon 32", forecast_job(bundled, 1, 2048, 32), 1),
        ("bundled model, stream of 1 series: 16 updates of a patch + forecast", stream_job(bundled, 16), 1),
    ]
    print("| scenario | layer by layer ms | prepared ms | speed-up | same bits |")
    print("|---|---|---|---|---|")
    rows = []
    for name, run, share in scenarios:
        reps = max(2, round(args.reps * share))
        ours = run()
        with layer_by_layer():
            theirs = run()
        times = {"layers": [], "prepared": []}
        for _ in range(reps):  # alternating
            for path in ("layers", "prepared"):
                if path == "layers":
                    with layer_by_layer():
                        start = time.perf_counter()
                        run()
                else:
                    start = time.perf_counter()
                    run()
                times[path].append(time.perf_counter() - start)
        layers, prepared = statistics.median(times["layers"]), statistics.median(times["prepared"])
        same = bool(torch.equal(ours, theirs))
        rows.append({"scenario": name, "layers_s": times["layers"], "prepared_s": times["prepared"], "same_bits": same})
        print(f"| {name} | {layers * 1e3:.1f} | {prepared * 1e3:.1f} | {layers / prepared:.2f}x | "
              f"{'yes' if same else 'no'} |")
    if args.json:
        write_json(args.json, info, rows)


if __name__ == "__main__":
    main()

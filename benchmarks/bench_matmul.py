"""The compiled weight matmuls (tirex_gemm) against torch's (MKL / oneDNN) at the published size's shapes.

    python benchmarks/bench_matmul.py                 # torch's default threads
    python benchmarks/bench_matmul.py --threads 1

Times ``C = A @ W.t()`` (the plain store epilogue, which both can do) for the feed-forward shapes of the
published model (embed 512, hidden 1408) at 64 rows (a batch-1 forecast's tokens) and at 2048 rows, with
``--matrices`` distinct weight matrices used in turn so that the weights come from memory as in a
forecast (1: the same matrix every time, so they stay in cache). Median over ``--reps`` passes, both
implementations alternating within each pass, ratio printed side by side, CPU model and ISA flags recorded.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from tirex import cpu_kernel, inference

SHAPES = ((64, 512, 1408), (64, 1408, 512), (2048, 512, 1408), (2048, 1408, 512))  # rows, in, out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=None, help="torch's and the kernels' thread count")
    parser.add_argument("--matrices", type=int, default=12, help="distinct weight matrices used in turn")
    parser.add_argument("--reps", type=int, default=15)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    dispatch = cpu_kernel.active()
    if dispatch.library is None:
        raise SystemExit(f"no compiled kernel here: {'; '.join(dispatch.why)}")
    lib = dispatch.library
    print(f"CPU: {cpu_kernel.cpu_model()} ({' '.join(cpu_kernel.isa_flags())}); kernel level {dispatch.level}; "
          f"threads {threads}; {args.matrices} weight matrices in turn")
    print("| rows | in | out | compiled ms | torch ms | torch / compiled |\n| --- | --- | --- | --- | --- | --- |")
    g = torch.Generator().manual_seed(0)
    for rows, k, n in SHAPES:
        a = torch.randn(rows, k, generator=g)
        weights = [inference.column_major(torch.randn(n, k, generator=g) * 0.02) for _ in range(args.matrices)]
        out = torch.empty(rows, n)
        times = {"compiled": [], "torch": []}
        for _ in range(args.reps):
            start = time.perf_counter()
            for w in weights:
                inference.gemm_(lib, a, w, out, inference.GEMM_STORE)
            times["compiled"].append((time.perf_counter() - start) / len(weights))
            start = time.perf_counter()
            for w in weights:
                torch.mm(a, w.t(), out=out)
            times["torch"].append((time.perf_counter() - start) / len(weights))
        ours, theirs = statistics.median(times["compiled"]), statistics.median(times["torch"])
        print(f"| {rows} | {k} | {n} | {ours * 1e3:.3f} | {theirs * 1e3:.3f} | {theirs / ours:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

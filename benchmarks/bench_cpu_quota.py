"""Forecasts under a container-style CPU quota: the compiled kernels' threads capped at the quota (what
``tirex.inference.kernel_threads`` does, ``tirex.cpus``) against torch's thread count (what they used
before: torch's default counts the host's cores and ignores the quota), in alternating processes.

A real cgroup is made for the run (cgroup v1 ``cpu`` or v2 with the ``cpu`` controller; needs root) with
``--quota`` CPUs per period, and every worker process runs inside it, as in ``docker run --cpus Q``.
``--threads N`` sets torch's thread count in the workers (default: torch's own choice), e.g. the count
torch would pick on a larger host than this one.

Usage:
    sudo python benchmarks/bench_cpu_quota.py [--quota 1] [--threads N] [--procs 3] [--json benchmarks/results/cpu_quota_<tag>.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

SCENARIOS = {"b1_ctx2048_h32": (1, 2048, 32), "b32_ctx2048_h64": (32, 2048, 64)}


@contextmanager
def quota_group(cpus: float, name: str = "tirex_quota"):
    """A fresh cgroup limited to ``cpus`` CPUs per period; yields a function for ``subprocess``'s
    ``preexec_fn`` that moves the child into it. Raises OSError where no writable cpu controller exists
    (not root, no cgroup fs)."""
    period = 100_000
    quota = max(1000, int(cpus * period))
    v1, v2 = Path("/sys/fs/cgroup/cpu"), Path("/sys/fs/cgroup")
    if (v1 / "cpu.cfs_quota_us").exists():
        group, limits = v1 / f"{name}_{os.getpid()}", {"cpu.cfs_period_us": str(period), "cpu.cfs_quota_us": str(quota)}
    elif "cpu" in (v2 / "cgroup.subtree_control").read_text().split():
        group, limits = v2 / f"{name}_{os.getpid()}", {"cpu.max": f"{quota} {period}"}
    else:
        raise OSError("no writable cgroup cpu controller (v1 /sys/fs/cgroup/cpu or v2 with +cpu)")
    group.mkdir()
    try:
        for file, value in limits.items():
            (group / file).write_text(value)
    except OSError:
        group.rmdir()
        raise
    procs = str(group / "cgroup.procs")

    def join() -> None:
        with open(procs, "w") as f:
            f.write(str(os.getpid()))

    try:
        yield join
    finally:
        for _ in range(50):  # the children have exited; the kernel may need a moment to let go
            try:
                group.rmdir()
                break
            except OSError:
                time.sleep(0.1)


def worker(args) -> None:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from tirex import inference
    from tirex.cpus import cpu_budget

    if args.worker == "uncapped":  # the kernels on torch's count, as before tirex.cpus
        inference.capped_threads = lambda threads, processes=1: threads
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_empty_prefix import published_size

    model = published_size()
    batch, length, horizon = SCENARIOS[args.scenario[0]]
    context = torch.randn(batch, length, generator=torch.Generator().manual_seed(0)).cumsum(1)
    model.forecast(context, prediction_length=horizon)
    times = []
    for _ in range(args.reps):
        start = time.perf_counter()
        model.forecast(context, prediction_length=horizon)
        times.append(time.perf_counter() - start)
    print(json.dumps({"median_s": statistics.median(times), "times": times, "torch_threads": torch.get_num_threads(),
                      "kernel_threads": inference.kernel_threads(), "budget": vars(cpu_budget())}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quota", type=float, default=1.0, help="CPUs per period (docker --cpus)")
    p.add_argument("--threads", type=int, default=None, help="torch threads in the workers (default: torch's)")
    p.add_argument("--procs", type=int, default=3, help="processes per variant and scenario")
    p.add_argument("--reps", type=int, default=None, help="timed forecasts per process (default 5 at batch 1, 2 at 32)")
    p.add_argument("--scenario", action="append", choices=sorted(SCENARIOS))
    p.add_argument("--json", default=None)
    p.add_argument("--worker", choices=["capped", "uncapped"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)

    from tirex.cpu_kernel import cpu_model, isa_flags

    results = {}
    with quota_group(args.quota) as join:
        for scenario in args.scenario or list(SCENARIOS):
            reps = args.reps or (5 if SCENARIOS[scenario][0] == 1 else 2)
            runs = {"uncapped": [], "capped": []}
            for _ in range(args.procs):
                for variant in runs:  # alternating, so that the host's drift hits both alike
                    cmd = [sys.executable, __file__, "--worker", variant, "--scenario", scenario, "--reps", str(reps)]
                    if args.threads:
                        cmd += ["--threads", str(args.threads)]
                    out = subprocess.run(cmd, preexec_fn=join, capture_output=True, text=True)
                    if out.returncode:
                        sys.exit(f"worker failed: {' '.join(cmd)}\n{out.stderr}")
                    runs[variant].append(json.loads(out.stdout.strip().splitlines()[-1]))
            med = {v: statistics.median(r["median_s"] for r in rs) for v, rs in runs.items()}
            results[scenario] = {"median_s": med, "speedup": med["uncapped"] / med["capped"], "runs": runs}
            first = runs["capped"][0]
            print(f"{scenario}: quota {args.quota} CPUs, torch threads {first['torch_threads']}: kernels on torch's "
                  f"count {med['uncapped'] * 1e3:.1f} ms, capped at {first['kernel_threads']}: "
                  f"{med['capped'] * 1e3:.1f} ms -> {med['uncapped'] / med['capped']:.2f}x", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"cpu": cpu_model(), "flags": isa_flags(), "cores": os.cpu_count(), "quota_cpus": args.quota,
                       "loadavg_at_end": os.getloadavg(), "results": results}, f, indent=1)


if __name__ == "__main__":
    main()

"""Single process vs Ray on the same cores: series/s, and memory per Ray worker as the dataset grows.

    python benchmarks/bench_distributed.py                       # 200,000 series, then 1,000,000 on Ray
    python benchmarks/bench_distributed.py --series 20000 --large 60000   # a quick look

The dataset: long-layout Parquet partitions of ``--per-partition`` series each (id, daily timestamp, value),
half windows of real series from the offline pool (tirex_pretraining.pool; falls back to synthetic series
without it) and half KernelSynth-style synthetic series, each with a random length in [32, 512], scale, level
and noise. The first ``--series`` series are the first partitions of the ``--large`` set (hard links), so the
two Ray runs read the same files for the same series.

What is timed, on the same data and the same cores (``--cpus``, default 2):
  single  one process, `tirex forecast`'s pipeline on every partition in turn: tirex.io.read_table, to_long,
          model.forecast on the long frame, Parquet write; torch's default thread count (= the cores)
  ray     tirex.distributed.forecast_dataset with ray.init(num_cpus=cpus): one replica per core, one thread each
  model   model.forecast alone on the first partition's series as arrays (no reading, validation or writing),
          as the ceiling for either
  single_1thread / ray_1worker   the same two on ``--overhead-series`` series with one thread / one replica:
          Ray's own overhead per core, apart from how well either uses two cores
Memory: the peak resident set of every Ray worker process (each reports its own ru_maxrss), at ``--series``
and at ``--large``. ``uptime`` load averages are recorded before and after each phase: on a shared machine
the figures move with what else runs. Results go to benchmarks/results/bench_distributed.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

HORIZON = 24
MAX_CONTEXT = 512


def load_avg() -> str:
    return "load average %.2f %.2f %.2f" % os.getloadavg()


def series_bank(seed: int = 0, synthetic: int = 4000) -> tuple[list[np.ndarray], list[np.ndarray], str]:
    """Real pool series and KernelSynth series to cut windows from."""
    rng = np.random.default_rng(seed)
    from tirex_pretraining.synthetic import kernel_synth

    synth = [kernel_synth(rng, MAX_CONTEXT).astype(np.float64) for _ in range(synthetic)]
    try:
        from tirex_pretraining.pool import load_pool

        pool = [v.astype(np.float64) for v in load_pool().values if len(v) >= 32]
        note = f"{len(pool)} pool series + {synthetic} KernelSynth series"
    except Exception as exc:  # the pool's data packages are not installed
        pool = synth
        note = f"synthetic only ({exc.__class__.__name__}: pool unavailable)"
    return pool, synth, note


def write_partition(path: Path, index: int, count: int, pool, synth) -> None:
    """``count`` series of partition ``index`` (deterministic in the index) as long-layout Parquet."""
    rng = np.random.default_rng(1000 + index)
    ids, lengths, values = [], [], []
    for k in range(count):
        bank = pool if k % 2 == 0 else synth
        base = bank[int(rng.integers(len(bank)))]
        length = int(min(rng.integers(32, MAX_CONTEXT + 1), len(base)))
        start = int(rng.integers(0, len(base) - length + 1))
        window = base[start : start + length]
        scale = np.exp(rng.normal(0, 1.5))
        spread = np.nanstd(window) if np.isfinite(window).sum() > 1 else 1.0  # a pool window may be all NaN
        noise = rng.normal(0, 0.02 * (spread + 1e-3), length)
        values.append(scale * (window + noise) + rng.normal(0, 10))
        ids.append(f"p{index:05d}_{k:05d}")
        lengths.append(length)
    lengths = np.asarray(lengths)
    offsets = np.concatenate([np.arange(n) for n in lengths])
    days = pd.date_range("2000-01-01", periods=MAX_CONTEXT, freq="D").to_numpy()
    table = pd.DataFrame({"item_id": np.repeat(np.asarray(ids, dtype=object), lengths),
                          "timestamp": days[offsets], "target": np.concatenate(values)})
    tmp = path.with_suffix(".tmp")
    table.to_parquet(tmp, index=False)
    os.replace(tmp, path)


def linked_subset(full: Path, folder: Path, partitions: int) -> Path:
    """The first ``partitions`` files of ``full`` as hard links in ``folder`` (no copy)."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir()
    for path in sorted(full.glob("*.parquet"))[:partitions]:
        os.link(path, folder / path.name)
    return folder


def build_datasets(workdir: Path, small: int, large: int, per_partition: int) -> tuple[Path, Path, str]:
    full, part = workdir / "data_large", workdir / "data_small"
    full.mkdir(parents=True, exist_ok=True)
    n_large, n_small = -(-large // per_partition), -(-small // per_partition)
    names = [f"part-{i:05d}.parquet" for i in range(max(n_large, n_small))]
    missing = [i for i, name in enumerate(names) if not (full / name).exists()]
    note = "cached"
    if missing:
        pool, synth, note = series_bank()
        from tqdm.auto import tqdm

        for i in tqdm(missing, desc="writing partitions", file=sys.stderr):
            write_partition(full / names[i], i, per_partition, pool, synth)
    return linked_subset(full, part, n_small), full, note


def run_single(source: Path, out: Path, model, threads: int) -> dict:
    """`tirex forecast` per partition, one process with ``threads`` torch threads."""
    import torch

    from tirex.io import read_table, to_long

    torch.set_num_threads(threads)
    out.mkdir(parents=True, exist_ok=True)
    series = 0
    start = time.perf_counter()
    for path in sorted(source.glob("*.parquet")):
        long = to_long(read_table(path), path, "long")
        result = model.forecast(long, prediction_length=HORIZON, id_column="item_id", timestamp_column="timestamp",
                                target_column="target")
        result.to_parquet(out / path.name, index=False)
        series += result["item_id"].nunique()
    seconds = time.perf_counter() - start
    return {"series": series, "seconds": seconds, "series_per_s": series / seconds,
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def run_model_only(source: Path, model) -> dict:
    frame = pd.read_parquet(sorted(source.glob("*.parquet"))[0])
    arrays = [g.to_numpy() for _, g in frame.groupby("item_id", sort=False)["target"]]
    start = time.perf_counter()
    model.forecast(arrays, prediction_length=HORIZON)
    seconds = time.perf_counter() - start
    return {"series": len(arrays), "seconds": seconds, "series_per_s": len(arrays) / seconds}


def run_ray(source: Path, out: Path, workers: int) -> dict:
    from tirex.distributed import forecast_dataset

    peaks: dict[int, int] = {}
    result = forecast_dataset(source, HORIZON, out, num_workers=workers, progress=sys.stderr.isatty(),
                              on_partition=lambda s: peaks.__setitem__(s["pid"], max(peaks.get(s["pid"], 0),
                                                                                      s["peak_rss"])))
    return {"series": result.series, "seconds": result.seconds, "series_per_s": result.series / result.seconds,
            "workers": result.workers, "peak_rss_bytes_per_worker": sorted(peaks.values()),
            "peak_rss_bytes_max": max(peaks.values())}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--series", type=int, default=200_000, help="series in the side-by-side run")
    parser.add_argument("--large", type=int, default=1_000_000, help="series in the second Ray run (0: skip)")
    parser.add_argument("--per-partition", type=int, default=5_000, help="series per Parquet partition")
    parser.add_argument("--cpus", type=int, default=2, help="cores for either engine")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/tirex-bench-distributed"))
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results" / "bench_distributed.json")
    parser.add_argument("--overhead-series", type=int, default=10_000,
                        help="series for the one-thread / one-replica pair (0: skip)")
    parser.add_argument("--phases", default="model_only,single,ray,ray_large,overhead",
                        help="comma-separated subset of model_only,single,ray,ray_large,overhead")
    parser.add_argument("--keep", action="store_true", help="keep the generated data for a rerun")
    args = parser.parse_args(argv)

    import ray
    import torch

    from tirex import cpu_kernel, load_model

    torch.set_num_threads(args.cpus)
    report = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "cpu": cpu_kernel.cpu_model(),
              "isa_flags": cpu_kernel.isa_flags(),
              "cores": os.cpu_count(), "cpus_used": args.cpus, "horizon": HORIZON, "max_context": MAX_CONTEXT,
              "per_partition": args.per_partition, "ray_version": ray.__version__, "torch_version": torch.__version__, "load": {}}
    small, full, report["data"] = build_datasets(args.workdir, args.series, max(args.large, args.series),
                                                 args.per_partition)
    model = load_model()

    def write_report(complete=False):
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps({**report, "complete": complete}, indent=2))

    def phase(name, fn):
        report["load"][f"{name} before"] = load_avg()
        print(f"{name}: {load_avg()}", file=sys.stderr)
        result = fn()
        report["load"][f"{name} after"] = load_avg()
        report[name] = result
        print(f"{name}: {json.dumps(result)}", file=sys.stderr)
        write_report()  # after every phase: a long run that is cut short keeps the phases it finished

    phases = set(args.phases.split(","))
    overhead = linked_subset(full, args.workdir / "data_overhead", -(-args.overhead_series // args.per_partition))
    if "model_only" in phases:
        phase("model_only", lambda: run_model_only(small, model))
    if "single" in phases:
        phase("single", lambda: run_single(small, args.workdir / "out_single", model, args.cpus))
    if "overhead" in phases and args.overhead_series:
        phase("single_1thread", lambda: run_single(overhead, args.workdir / "out_single_1", model, 1))
    ray.init(num_cpus=args.cpus, include_dashboard=False)
    try:
        if "ray" in phases:
            phase("ray", lambda: run_ray(small, args.workdir / "out_ray", args.cpus))
        if "ray_large" in phases and args.large > args.series:
            phase("ray_large", lambda: run_ray(full, args.workdir / "out_ray_large", args.cpus))
        if "overhead" in phases and args.overhead_series:
            phase("ray_1worker", lambda: run_ray(overhead, args.workdir / "out_ray_1", 1))
    finally:
        ray.shutdown()
    if not args.keep:
        shutil.rmtree(args.workdir, ignore_errors=True)

    print(f"\nCPU: {report['cpu']}; {args.cpus} cores; horizon {HORIZON}; context <= {MAX_CONTEXT}; {report['data']}")
    print("| engine | series | seconds | series/s | ratio |\n| --- | --- | --- | --- | --- |")
    for name, base in (("single", "single"), ("ray", "single"), ("ray_large", "single"),
                       ("single_1thread", "single_1thread"), ("ray_1worker", "single_1thread")):
        if name in report and base in report:
            r = report[name]
            print(f"| {name} | {r['series']:,} | {r['seconds']:.0f} | {r['series_per_s']:.1f} | "
                  f"{r['series_per_s'] / report[base]['series_per_s']:.2f}x {base} |")
    if "model_only" in report:
        print(f"model.forecast alone on {report['model_only']['series']:,} arrays: "
              f"{report['model_only']['series_per_s']:.1f} series/s")
    mib = 2**20
    for name in ("ray", "ray_large", "ray_1worker"):
        if name in report:
            print(f"peak memory per Ray worker ({name}, {report[name]['series']:,} series): "
                  + ", ".join(f"{b / mib:.0f} MiB" for b in report[name]["peak_rss_bytes_per_worker"]))
    if "single" in report:
        print(f"single process peak: {report['single']['peak_rss_bytes'] / mib:.0f} MiB")
    for key, value in report["load"].items():
        print(f"  {key}: {value}")
    write_report(complete=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Inference speed of this package against the reference ``tirex-ts``, in alternating processes.

Both implementations load the SAME random weights at the published size (written once in the
published ``model.ckpt`` layout) and forecast the same random series. Each measurement runs in a
fresh subprocess (ours in ``.venv``, tirex-ts in ``.venv-ref``, since both install a module named
``tirex``), alternating ours / reference, so that load drift on a shared machine hits both alike.

Per process it records: the first ``forecast`` call (includes any lazy set-up, e.g. loading the
compiled CPU kernel), the later calls (median over repetitions), and the peak resident memory.

Usage:
    python benchmarks/bench_inference.py                 # full run (CPU)
    python benchmarks/bench_inference.py --quick         # fewer processes / repetitions
    python benchmarks/bench_inference.py --device cuda   # GPU, where present
    python benchmarks/bench_inference.py --ours-fast     # also time our opt-in bfloat16 fast mode
    python benchmarks/bench_inference.py --ours-lite     # also time tirex.lite (numpy + kernels, no torch)
    python benchmarks/bench_inference.py --variant torch_mm=TIREX_CPU_GEMM=0 --variant avx2=TIREX_CPU_ISA=avx2
                                                         # also time ours with other settings (A/B in one run)
    python benchmarks/bench_inference.py --scenario b32_ctx512_h64 --scenario b1_ctx512_h32   # short series

Set up the reference environment once:
    python -m venv .venv-ref && .venv-ref/bin/pip install torch==<ours> && .venv-ref/bin/pip install tirex-ts==1.4.2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = {  # name: (batch, context length, horizon)
    "b32_ctx2048_h64": (32, 2048, 64),
    "b1_ctx2048_h32": (1, 2048, 32),
    # short series (a quarter of the window holds data): opt-in with --scenario
    "b32_ctx512_h64": (32, 512, 64),
    "b1_ctx512_h32": (1, 512, 32),
}
DEFAULT_SCENARIOS = ["b32_ctx2048_h64", "b1_ctx2048_h32"]  # the published size's full window


# -- worker side (runs inside one of the two virtual environments) ------------------------------
def _series(batch: int, length: int, seed: int = 0):
    import torch

    g = torch.Generator().manual_seed(seed)
    t = torch.arange(length, dtype=torch.float32)
    level = torch.randn(batch, 1, generator=g) * 10
    season = torch.sin(2 * torch.pi * t / 24 + torch.rand(batch, 1, generator=g) * 6.28)
    noise = torch.randn(batch, length, generator=g) * 0.3
    return level + 3 * season + noise.cumsum(-1) * 0.1


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def lite_worker(args) -> None:
    """``tirex.lite`` in a process that never imports torch: the same series (from the driver's .npy), the same
    weights (the checkpoint saved in tirex's format)."""
    import numpy as np

    batch, length, horizon = SCENARIOS[args.scenario]
    context = np.load(args.context)
    t0 = time.perf_counter()
    from tirex import cpu_kernel, lite

    model = lite.load_model(args.lite_model, threads=args.threads)
    load_s = time.perf_counter() - t0

    def timed():
        start = time.perf_counter()
        out = model.forecast(context, prediction_length=horizon, batch_size=batch)
        return time.perf_counter() - start, out

    first_s, (q, _) = timed()
    times = [timed()[0] for _ in range(args.reps)]
    np.save(args.out_tensor.with_suffix(".npy"), q.astype(np.float32))
    dispatch = cpu_kernel.active()
    assert "torch" not in sys.modules, "tirex.lite imported torch"
    print(json.dumps({
        "impl": args.worker, "dispatch": {"level": dispatch.level, "matmuls": "compiled", "fast": False},
        "scenario": args.scenario, "load_s": load_s, "first_s": first_s, "times": times, "peak_rss_mb": _peak_rss_mb(),
        "threads": model.threads, "loadavg_1min": os.getloadavg()[0], "cuda_peak_mb": None,
    }))


def worker(args) -> None:
    if args.worker == "ours_lite":
        return lite_worker(args)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    batch, length, horizon = SCENARIOS[args.scenario]
    context = _series(batch, length)
    t0 = time.perf_counter()
    if args.worker == "ref":
        from tirex import load_model

        # tirex-ts accepts a local path only if it reads like "<org>/TiRex": link the checkpoint there
        link_dir = Path(tempfile.mkdtemp())
        (link_dir / "local").mkdir()
        (link_dir / "local" / "TiRex").symlink_to(args.ckpt.resolve())
        os.chdir(link_dir)
        model = load_model("local/TiRex", device=args.device, backend="torch")

        def run():
            return model.forecast(context=context, prediction_length=horizon, batch_size=batch, output_type="torch")
    else:
        from tirex import load_model

        model = load_model(str(args.ckpt), device=args.device)
        if args.worker.endswith("_fast"):
            model.set_fast_mode(True, force=True)  # measured even where it is slow

        def run():
            return model.forecast(context, prediction_length=horizon, batch_size=batch, output_type="torch")

    load_s = time.perf_counter() - t0

    def timed():
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = run()
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - start, out

    first_s, (q, mean) = timed()
    times = [timed()[0] for _ in range(args.reps)]
    torch.save({"quantiles": q.float().cpu(), "mean": mean.float().cpu()}, args.out_tensor)
    info = None
    if args.worker != "ref":
        info = model.backend_info()
        info = {"level": info["cpu"]["level"], "matmuls": info["cpu"]["matmuls"], "fast": info["fast_mode"].get("enabled")}
    print(json.dumps({
        "impl": args.worker, "dispatch": info, "scenario": args.scenario, "load_s": load_s, "first_s": first_s, "times": times,
        "peak_rss_mb": _peak_rss_mb(), "threads": torch.get_num_threads(), "loadavg_1min": os.getloadavg()[0],
        "cuda_peak_mb": torch.cuda.max_memory_allocated() / 2**20 if args.device.startswith("cuda") else None,
    }))


# -- driver side --------------------------------------------------------------------------------
def write_checkpoint(path: Path) -> None:
    """Random weights at the published size; recurrent matrices and biases non-zero so the recurrence matters."""
    code = f"""
import torch
from tirex.config import ModelConfig
from tirex.model import TiRexModel
from tirex.checkpoint import write_reference_checkpoint
torch.manual_seed(1234)
model = TiRexModel(ModelConfig())
with torch.no_grad():
    for block in model.blocks:
        block.slstm.recurrent.normal_(0, 0.05)
        block.slstm.bias.normal_(0, 0.5)
        block.slstm.norm_weight.normal_(0, 0.1)
write_reference_checkpoint(model, {str(path)!r})
"""
    subprocess.run([str(ROOT / ".venv" / "bin" / "python"), "-c", code], check=True, cwd=ROOT)


def write_lite_inputs(ckpt: Path, folder: Path, scenarios: list[str]) -> None:
    """For ``tirex.lite``: the checkpoint in tirex's format (cached beside it) and each scenario's series as .npy."""
    model_dir = ckpt.with_suffix(".lite")
    code = f"""
import numpy as np, sys
sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})
from bench_inference import _series, SCENARIOS
from pathlib import Path
from tirex import load_model
if not Path({str(model_dir)!r}).is_dir():
    load_model({str(ckpt)!r}).save_pretrained({str(model_dir)!r})
for name in {scenarios!r}:
    batch, length, _ = SCENARIOS[name]
    np.save(Path({str(folder)!r}) / f"{{name}}_context.npy", _series(batch, length).numpy())
"""
    subprocess.run([str(ROOT / ".venv" / "bin" / "python"), "-c", code], check=True, cwd=ROOT)


def run_worker(python: Path, impl: str, scenario: str, ckpt: Path, reps: int, device: str, out_tensor: Path,
               threads: int | None, env: dict | None = None) -> dict:
    cmd = [str(python), str(Path(__file__).resolve()), "--worker", impl, "--scenario", scenario, "--ckpt", str(ckpt),
           "--reps", str(reps), "--device", device, "--out-tensor", str(out_tensor)]
    if impl == "ours_lite":
        cmd += ["--lite-model", str(ckpt.with_suffix(".lite")),
                "--context", str(out_tensor.parent / f"{scenario}_context.npy")]
    if threads:
        cmd += ["--threads", str(threads)]
    # run from a neutral folder so the reference venv never imports our source tree
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tempfile.gettempdir(),
                          env={**os.environ, **(env or {})})
    if proc.returncode != 0:
        raise RuntimeError(f"{impl} worker failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def parity(ours: Path, ref: Path, scenario: str) -> tuple[float, float]:
    """max / mean |ours - reference| over the series' std (the spec's measure)."""
    import torch

    import numpy as np

    b = torch.load(ref, weights_only=True)
    npy = ours.with_suffix(".npy")  # tirex.lite's (saved without torch)
    a = {"quantiles": torch.from_numpy(np.load(npy))} if npy.exists() else torch.load(ours, weights_only=True)
    batch, length, _ = SCENARIOS[scenario]
    std = _series(batch, length).double().std(dim=1, unbiased=False).view(-1, 1, 1)
    # ours returns the quantiles sorted along the level (a monotone rearrangement; random weights cross a lot),
    # so the reference's are sorted the same way before comparing
    err = (a["quantiles"].double() - b["quantiles"].double().sort(dim=-1).values).abs() / std
    return err.max().item(), err.mean().item()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--out-tensor", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--scenario", choices=list(SCENARIOS), action="append")
    p.add_argument("--ckpt", type=Path, default=None, help="reference-layout checkpoint (default: a cached random one)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--procs", type=int, default=3, help="processes per implementation and scenario")
    p.add_argument("--reps", type=int, default=5, help="timed calls per process after the first")
    p.add_argument("--quick", action="store_true", help="2 processes x 3 calls")
    p.add_argument("--ours-fast", action="store_true", help="also time our bfloat16 fast mode")
    p.add_argument("--ours-lite", action="store_true", help="also time tirex.lite (no torch in its process)")
    p.add_argument("--lite-model", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--context", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--no-ref", action="store_true", help="skip tirex-ts (no .venv-ref)")
    p.add_argument("--variant", action="append", default=[], metavar="NAME=VAR=VALUE[,VAR=VALUE]",
                   help="also time ours with these environment variables (e.g. torch_mm=TIREX_CPU_GEMM=0)")
    p.add_argument("--json", type=Path, help="also write all raw results here")
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads in both implementations (default: torch's default)")
    args = p.parse_args()
    if args.worker:
        args.scenario = args.scenario[0]
        return worker(args)

    if args.quick:
        args.procs, args.reps = 2, 3
    scenarios = args.scenario or DEFAULT_SCENARIOS
    ckpt = args.ckpt or ROOT / "benchmarks" / ".cache" / "tirex_random_published_size.ckpt"
    if not ckpt.exists():
        ckpt.parent.mkdir(parents=True, exist_ok=True)
        print(f"writing random-weight checkpoint {ckpt}")
        write_checkpoint(ckpt)
    impls = {"ours": ROOT / ".venv" / "bin" / "python"}
    envs: dict[str, dict] = {}
    if args.ours_fast:
        impls["ours_fast"] = impls["ours"]
    if args.ours_lite:
        impls["ours_lite"] = impls["ours"]
    for spec in args.variant:
        name, _, settings = spec.partition("=")
        envs[name] = dict(item.split("=", 1) for item in settings.split(",") if item)
        impls[name] = impls["ours"]
    if not args.no_ref:
        impls["ref"] = ROOT / ".venv-ref" / "bin" / "python"
        if not impls["ref"].exists():
            sys.exit("no .venv-ref: create it (see the module docstring) or pass --no-ref")

    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        if args.ours_lite:
            write_lite_inputs(ckpt, Path(tmp), scenarios)
        for scenario in scenarios:
            runs = {impl: [] for impl in impls}
            for i in range(args.procs):
                order = list(impls) if i % 2 == 0 else list(reversed(impls))
                for impl in order:
                    out = Path(tmp) / f"{scenario}_{impl}.pt"
                    r = run_worker(impls[impl], impl, scenario, ckpt, args.reps, args.device, out, args.threads,
                                   envs.get(impl))
                    r["env"] = envs.get(impl, {})
                    runs[impl].append(r)
                    print(f"  {scenario} {impl:9s} proc {i}: first {r['first_s']:.3f}s  median "
                          f"{statistics.median(r['times']):.3f}s  rss {r['peak_rss_mb']:.0f} MB  load {r['loadavg_1min']:.1f}",
                          flush=True)
            err = {}
            if "ref" in impls:
                for impl in impls:
                    if impl != "ref":
                        err[impl] = parity(Path(tmp) / f"{scenario}_{impl}.pt", Path(tmp) / f"{scenario}_ref.pt", scenario)
            results[scenario] = {"runs": runs, "parity": err}
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "args": sys.argv[1:], "results": results}, indent=1))
    print_table(results, args)


def machine() -> dict:
    """CPU model and the ISA flags that matter here (as lscpu shows them), torch version, load, date."""
    sys.path.insert(0, str(ROOT))
    from tirex import cpu_kernel
    from tirex.cpus import cpu_budget

    import torch

    return {"cpu_model": cpu_kernel.cpu_model(), "isa_flags": cpu_kernel.isa_flags(),
            "cpus": os.cpu_count(), "cpu_budget": vars(cpu_budget()), "torch": torch.__version__, "loadavg_at_end": os.getloadavg(),
            "date": time.strftime("%Y-%m-%d %H:%M")}


def print_table(results: dict, args) -> None:
    loads = [r["loadavg_1min"] for res in results.values() for runs in res["runs"].values() for r in runs]
    print(f"\ndevice {args.device}, threads {args.threads or 'default'}; {args.procs} processes x {args.reps} timed "
          f"calls per implementation (median over all calls; first call = median over processes); 1-min load "
          f"average during the runs {min(loads):.1f}-{max(loads):.1f}")
    header = "| scenario | impl | latency s | series/s | first call s | peak RSS MB | speed-up vs ref | memory vs ref | parity max / mean |"
    print(header)
    print("|" + "---|" * 9)
    for scenario, res in results.items():
        batch = SCENARIOS[scenario][0]
        summary = {}
        for impl, runs in res["runs"].items():
            lat = statistics.median([t for r in runs for t in r["times"]])
            summary[impl] = (lat, statistics.median([r["first_s"] for r in runs]),
                             statistics.median([r["peak_rss_mb"] for r in runs]))
        ref = summary.get("ref")
        for impl, (lat, first, rss) in summary.items():
            ratio = f"{ref[0] / lat:.2f}x" if ref else "-"
            mem = f"{rss / ref[2]:.2f}" if ref else "-"
            par = res["parity"].get(impl)
            par = f"{par[0]:.1e} / {par[1]:.1e}" if par else "-"
            print(f"| {scenario} | {impl} | {lat:.3f} | {batch / lat:.1f} | {first:.3f} | {rss:.0f} | {ratio} | {mem} | {par} |")


if __name__ == "__main__":
    main()

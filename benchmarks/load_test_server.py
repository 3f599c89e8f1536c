"""Load test of `tirex serve`: dynamic batching on against batching off, in one run.

Starts the server twice on 127.0.0.1 (free ports, the same settings but ``--no-batching`` for the
second), and drives each with the same closed-loop load: CLIENTS concurrent clients (async httpx),
each sending single-series requests (context 512, horizon 24) one after another for DURATION seconds
after a short warm-up (asyncio keep-alive connections by default, or httpx). Prints requests/s, p50/p95/p99 latency and the mean batch size (requests per
forward pass, from the server's /metrics) side by side, with the ratios, the CPU model and the
machine's load before and after; writes the raw numbers as JSON.

    python benchmarks/load_test_server.py                       # 64 clients, 30 s per mode
    python benchmarks/load_test_server.py --clients 16 --duration 10 --threads 2

Only 127.0.0.1 is ever contacted; every loop stops by itself (time and request-count bounds).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import httpx
import numpy as np

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def cpu_info() -> dict:
    from tirex import cpu_kernel

    return {"machine": platform.machine(), "cores": os.cpu_count(), "model": cpu_kernel.cpu_model(),
            "isa": cpu_kernel.isa_flags()}


def load_average() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


class ServerProcess:
    def __init__(self, extra: list[str], threads: int, model: str | None, device: str | None = None):
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        cmd = [sys.executable, "-m", "tirex", "serve", "--host", HOST, "--port", str(self.port),
               "--threads", str(threads), "--log-level", "warning", *extra]
        if model:
            cmd += ["--model", model]
        if device:
            cmd += ["--device", device]
        self.proc = subprocess.Popen(cmd, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode}")
            try:
                if httpx.get(self.url + "/ready", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError("the server did not become ready within 180 s")

    def metrics(self) -> dict[str, float]:
        text = httpx.get(self.url + "/metrics", timeout=30).text
        out = {}
        for name in ("tirex_batch_requests_sum", "tirex_batch_requests_count", "tirex_batch_series_sum"):
            match = re.search(rf"^{name}\s+(\S+)$", text, re.M)
            out[name] = float(match.group(1)) if match else 0.0
        return out

    def cpu_seconds(self) -> float:
        """CPU time the server process has used (user + system; Linux), all its threads."""
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            return float("nan")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


async def drive(url: str, bodies: list[bytes], seconds: float, max_requests: int, kind: str):
    """Every client sends its body, waits for the answer, sends again, until ``seconds`` are over.

    Returns the latencies of the successful requests and the number of failed ones.
    """
    latencies: list[float] = []
    errors = 0
    dropped = 0  # connections the server closed without answering (counted in errors too)
    stop_at = time.perf_counter() + seconds

    def more() -> bool:
        return time.perf_counter() < stop_at and len(latencies) + errors < max_requests

    async def raw_client(body: bytes):
        # one keep-alive HTTP/1.1 connection per client; a few microseconds of client CPU per request
        nonlocal errors
        nonlocal dropped
        host, port = url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        request = (f"POST /forecast/mean HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                   f"Content-Length: {len(body)}\r\n\r\n").encode() + body
        try:
            while more():
                started = time.perf_counter()
                try:
                    writer.write(request)
                    await writer.drain()
                    head = await reader.readuntil(b"\r\n\r\n")
                    length = int(re.search(rb"(?i)content-length:\s*(\d+)", head).group(1))
                    await reader.readexactly(length)
                except (asyncio.IncompleteReadError, ConnectionError):
                    # the server closed the connection without an answer: an error, then a new connection
                    errors += 1
                    dropped += 1
                    writer.close()
                    reader, writer = await asyncio.open_connection(host, int(port))
                    continue
                if head.startswith(b"HTTP/1.1 200"):
                    latencies.append(time.perf_counter() - started)
                else:
                    errors += 1
        finally:
            writer.close()

    async def httpx_client(body: bytes):
        nonlocal errors
        async with httpx.AsyncClient(base_url=url, timeout=120) as client:  # one client each: no pool contention
            while more():
                started = time.perf_counter()
                try:
                    response = await client.post("/forecast/mean", content=body,
                                                 headers={"content-type": "application/json"})
                    ok = response.status_code == 200
                except httpx.HTTPError:
                    ok = False
                if ok:
                    latencies.append(time.perf_counter() - started)
                else:
                    errors += 1

    client = raw_client if kind == "raw" else httpx_client
    await asyncio.gather(*(client(b) for b in bodies))
    if dropped:
        print(f"  {dropped} connection(s) closed by the server without an answer (counted as errors)", flush=True)
    return latencies, errors


def run_mode(name: str, extra: list[str], args, bodies: list[bytes]) -> dict:
    print(f"[{name}] starting the server ...", flush=True)
    server = ServerProcess(extra, args.threads, args.model, args.device)
    try:
        asyncio.run(drive(server.url, bodies, args.warmup, args.max_requests, args.client))  # warm-up, not counted
        before = server.metrics()
        cpu_before = server.cpu_seconds()
        load_before = load_average()
        started = time.perf_counter()
        latencies, errors = asyncio.run(drive(server.url, bodies, args.duration, args.max_requests, args.client))
        elapsed = time.perf_counter() - started
        cpu_used = server.cpu_seconds() - cpu_before
        after = server.metrics()
        load_after = load_average()
    finally:
        server.stop()
    forwards = after["tirex_batch_requests_count"] - before["tirex_batch_requests_count"]
    lat = np.array(latencies) * 1000
    result = {
        "mode": name,
        "requests": len(latencies),
        "errors": errors,
        "seconds": round(elapsed, 2),
        "requests_per_s": round(len(latencies) / elapsed, 1),
        "p50_ms": round(float(np.percentile(lat, 50)), 1) if len(lat) else None,
        "p95_ms": round(float(np.percentile(lat, 95)), 1) if len(lat) else None,
        "p99_ms": round(float(np.percentile(lat, 99)), 1) if len(lat) else None,
        "forward_passes": int(forwards),
        # CPU time per answered request: what the server spends, whatever share of the CPU it gets
        "server_cpu_ms_per_request": round(cpu_used * 1000 / len(latencies), 2) if latencies else None,
        "server_cores_used": round(cpu_used / elapsed, 2),  # the CPU share the server got (on a busy machine < 2)
        "mean_batch_requests": round((after["tirex_batch_requests_sum"] - before["tirex_batch_requests_sum"])
                                     / forwards, 2) if forwards else None,
        "load_before": load_before,
        "load_after": load_after,
    }
    print(f"[{name}] {result['requests_per_s']} requests/s, p99 {result['p99_ms']} ms, "
          f"mean batch {result['mean_batch_requests']} requests, {errors} errors", flush=True)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=64, help="concurrent clients (default 64)")
    parser.add_argument("--duration", type=float, default=30.0, help="measured seconds per mode (default 30)")
    parser.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds first (default 3)")
    parser.add_argument("--context-length", type=int, default=512)
    parser.add_argument("--horizon", type=int, default=24)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the server (default 1)")
    parser.add_argument("--model", default=None, help="model source (default: the bundled model)")
    parser.add_argument("--device", default=None, help="the server's torch device, e.g. cuda (default cpu)")
    parser.add_argument("--batch-window-ms", type=float, default=5.0)
    parser.add_argument("--client", choices=("raw", "httpx"), default="raw",
                        help="raw: asyncio keep-alive connections (default; the client costs almost no CPU); "
                             "httpx: httpx.AsyncClient (about 2 ms of client CPU per request, which on a small "
                             "machine takes CPU from the server)")
    parser.add_argument("--max-requests", type=int, default=1_000_000, help="stop a mode after this many requests")
    parser.add_argument("--output", type=Path, default=None,
                        help="JSON results (default benchmarks/results/server_load_<date>.json)")
    args = parser.parse_args()
    if args.clients <= 0 or args.duration <= 0:
        parser.error("--clients and --duration must be positive")

    rng = np.random.default_rng(0)
    bodies = []
    for _ in range(args.clients):  # every client its own series: a random walk with a daily-like cycle
        t = np.arange(args.context_length)
        values = 100 + 10 * np.sin(2 * np.pi * t / 24) + rng.normal(size=args.context_length).cumsum()
        bodies.append(json.dumps({"context": [np.round(values, 3).tolist()],
                                  "prediction_length": args.horizon}).encode())

    cpu = cpu_info()
    if args.device and args.device.startswith("cuda"):
        import torch

        cpu["gpu"] = torch.cuda.get_device_name(torch.device(args.device))
    print(f"CPU: {cpu['model']} ({cpu['cores']} cores; {', '.join(cpu.get('isa', []))}); "
          f"load before: {load_average()}", flush=True)
    batched = run_mode("batching", ["--batch-window-ms", str(args.batch_window_ms)], args, bodies)
    single = run_mode("batching off", ["--no-batching"], args, bodies)

    speedup = batched["requests_per_s"] / single["requests_per_s"] if single["requests_per_s"] else float("nan")
    p99_ratio = batched["p99_ms"] / single["p99_ms"] if single["p99_ms"] else float("nan")
    print()
    print(f"{args.clients} clients, single-series requests (context {args.context_length}, horizon {args.horizon}), "
          f"{args.duration:g} s per mode, server threads {args.threads}, {args.client} client")
    print("| mode | requests/s | p50 ms | p95 ms | p99 ms | mean batch (requests per forward) | server CPU ms per request "
          "| server cores used | errors | load (1/5/15 min) before / after |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in (batched, single):
        print(f"| {r['mode']} | {r['requests_per_s']} | {r['p50_ms']} | {r['p95_ms']} | {r['p99_ms']} | "
              f"{r['mean_batch_requests']} | {r['server_cpu_ms_per_request']} | {r['server_cores_used']} | {r['errors']} | "
              f"{' / '.join(map(str, r['load_before']))} -> {' / '.join(map(str, r['load_after']))} |")
    cpu_ratio = single["server_cpu_ms_per_request"] / batched["server_cpu_ms_per_request"]
    print(f"\nthroughput batching / off: {speedup:.2f}x (goal >= 5x); p99 batching / off: {p99_ratio:.2f} (goal <= 1); "
          f"server CPU per request off / batching: {cpu_ratio:.2f}x")

    output = args.output or Path(__file__).parent / "results" / f"server_load_{datetime.now():%Y%m%d_%H%M}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps({
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu,
        "settings": {k: v for k, v in vars(args).items() if k != "output"},
        "results": [batched, single],
        "throughput_ratio": round(speedup, 2),
        "p99_ratio": round(p99_ratio, 3),
        "cpu_per_request_ratio": round(cpu_ratio, 2),
    }, indent=2))
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

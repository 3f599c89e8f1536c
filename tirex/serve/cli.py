"""``tirex serve``: run the forecast server with uvicorn."""

from __future__ import annotations

import argparse
import importlib.util
import os

from .settings import API_KEY_ENV, ServerSettings


def add_subparser(subparsers) -> argparse.ArgumentParser:
    for module in ("fastapi", "uvicorn", "mcp", "prometheus_client"):
        if importlib.util.find_spec(module) is None:  # `tirex serve` then says which extra to install
            raise ImportError(f"No module named {module!r}", name=module)
    d = ServerSettings()
    p = subparsers.add_parser(
        "serve", help="run the forecast server (HTTP + MCP, dynamic batching)",
        description="Serve forecasts over HTTP (POST /forecast/mean, /forecast/quantiles; the reference server's "
                    "body and a timestamped form), MCP (/mcp, tool `forecast`), /health, /ready, /model, /metrics "
                    "and the OpenAPI docs at /docs. Concurrent requests are batched into shared forward passes.",
    )
    p.add_argument("--model", default=None, help="model folder, .ckpt file or Hub repo id (default: the bundled model)")
    p.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda (default cpu)")
    p.add_argument("--host", default=d.host, help=f"address to listen on (default {d.host}; 0.0.0.0 for all)")
    p.add_argument("--port", type=int, default=d.port, help=f"port (default {d.port})")
    p.add_argument("--workers", type=int, default=d.workers,
                   help="server processes, each with its own model and batcher (default 1)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads per process (default: torch's choice, at most the CPUs this process may use, "
                        "a container's quota included, divided by --workers; 1 on a busy shared machine)")
    p.add_argument("--api-key", default=None,
                   help=f"require this key (X-API-Key or Authorization: Bearer) on every route but /health; "
                        f"default: ${API_KEY_ENV} if set, else no key")
    p.add_argument("--no-batching", dest="batching", action="store_false",
                   help="one forward pass per request (as the reference server)")
    p.add_argument("--batch-window-ms", type=float, default=d.batch_window_ms,
                   help=f"how long a request waits for others to share its forward pass (default {d.batch_window_ms:g})")
    p.add_argument("--max-batch-series", type=int, default=d.max_batch_series,
                   help=f"series per forward pass at most (default {d.max_batch_series})")
    p.add_argument("--max-queue-series", type=int, default=d.max_queue_series,
                   help=f"queued series at most before answering 503 (default {d.max_queue_series})")
    p.add_argument("--max-series", type=int, default=d.max_series,
                   help=f"series per request at most (default {d.max_series})")
    p.add_argument("--max-context-length", type=int, default=d.max_context_length,
                   help=f"values per series at most (default {d.max_context_length})")
    p.add_argument("--max-horizon", type=int, default=d.max_horizon,
                   help=f"prediction_length at most (default {d.max_horizon})")
    p.add_argument("--max-quantile-levels", type=int, default=d.max_quantile_levels,
                   help=f"quantile levels per request at most (default {d.max_quantile_levels})")
    p.add_argument("--max-body-bytes", type=int, default=d.max_body_bytes,
                   help=f"request body size at most (default {d.max_body_bytes})")
    p.add_argument("--request-timeout", type=float, default=d.request_timeout_s,
                   help=f"seconds a forecast may take, queueing included, before a 504 (default {d.request_timeout_s:g})")
    p.add_argument("--graceful-timeout", type=float, default=d.graceful_timeout_s,
                   help=f"on shutdown, seconds in-flight requests get to finish (default {d.graceful_timeout_s:g})")
    p.add_argument("--access-log", action="store_true", help="log every request (off by default; see /metrics)")
    p.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    import uvicorn

    settings = ServerSettings(
        model=args.model, device=args.device, host=args.host, port=args.port, workers=args.workers,
        threads=args.threads, api_key=args.api_key or os.environ.get(API_KEY_ENV) or None,
        batching=args.batching, batch_window_ms=args.batch_window_ms, max_batch_series=args.max_batch_series,
        max_queue_series=args.max_queue_series, max_series=args.max_series,
        max_context_length=args.max_context_length, max_horizon=args.max_horizon,
        max_quantile_levels=args.max_quantile_levels,
        max_body_bytes=args.max_body_bytes, request_timeout_s=args.request_timeout,
        graceful_timeout_s=args.graceful_timeout, access_log=args.access_log,
    ).validate()
    settings.to_env()  # uvicorn's worker processes build their app from it (tirex.serve.app.app_from_env)
    uvicorn.run("tirex.serve.app:app_from_env", factory=True, host=settings.host, port=settings.port,
                workers=settings.workers, access_log=settings.access_log, log_level=args.log_level,
                timeout_graceful_shutdown=settings.graceful_timeout_s,
                timeout_worker_healthcheck=600)  # a worker loads its model (maybe from the Hub) before it answers
    return 0

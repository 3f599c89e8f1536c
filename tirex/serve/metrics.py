"""Prometheus metrics (text format at /metrics): requests, latency, batch sizes, queue depth."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from .batching import BatchStats

SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    """One registry per app (several apps in one process do not share counters)."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, queued_series=lambda: 0):
        disable_created_metrics()  # no *_created series: they double the output and nobody graphs them
        r = self.registry = CollectorRegistry()
        self.requests = Counter("tirex_http_requests", "HTTP requests by route and status code",
                                ["route", "status"], registry=r)
        self.latency = Histogram("tirex_http_request_duration_seconds", "time from request to response, by route",
                                 ["route"], buckets=LATENCY_BUCKETS, registry=r)
        self.in_flight = Gauge("tirex_http_requests_in_flight", "requests being handled", registry=r)
        self.batch_series = Histogram("tirex_batch_series", "series per forward pass", buckets=SIZE_BUCKETS, registry=r)
        self.batch_requests = Histogram("tirex_batch_requests", "requests per forward pass", buckets=SIZE_BUCKETS,
                                        registry=r)
        self.forward_seconds = Histogram("tirex_forward_duration_seconds", "time of one batched forecast",
                                         buckets=LATENCY_BUCKETS, registry=r)
        self.series = Counter("tirex_forecast_series", "series forecast", registry=r)
        queued = Gauge("tirex_queue_series", "series waiting for a forward pass", registry=r)
        queued.set_function(queued_series)

    def observe_batch(self, stats: BatchStats) -> None:
        self.batch_series.observe(stats.rows)
        self.batch_requests.observe(stats.requests)
        self.forward_seconds.observe(stats.seconds)
        self.series.inc(stats.rows)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Counts every HTTP request by route (the known paths; anything else is "other") and status."""

    def __init__(self, app, metrics: Metrics, routes: set[str]):
        self.app = app
        self.metrics = metrics
        self.routes = routes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"].rstrip("/") or "/"
        route = path if path in self.routes else "other"
        status = {"code": 500}
        started = time.perf_counter()

        async def send_status(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_status)
        finally:
            self.metrics.in_flight.dec()
            self.metrics.latency.labels(route).observe(time.perf_counter() - started)
            self.metrics.requests.labels(route, str(status["code"])).inc()

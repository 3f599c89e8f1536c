"""Dynamic batching: requests that arrive close together share one forward pass.

Requests wait in a queue. When the oldest has waited ``window_s`` (or the queue holds ``max_rows``
series), the batcher takes requests in arrival order up to ``max_rows`` series, groups those that
can share a rollout (same number of patches, rollout steps and quantile levels) and runs each group
as one ``forecast_tensors`` call on a worker thread, so the event loop keeps answering (health
checks, new requests) while the model computes. While a forward runs, new requests queue up and go
into the next one: under load the batches grow by themselves.

Each caller gets the rows of its own series, and a series' forecast does not depend on the other
series in its batch: ``forecast_tensors`` scales each series on its own and left-pads every series
with NaN to the model's window whatever the batch, and the matmuls give each row the same result
whatever the row count (README, "Speed"). ``tests/test_server.py`` checks the answers against
``model.forecast`` of each request alone.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

import torch

from ..forecast import forecast_tensors


class Overloaded(Exception):
    """The queue is full: the caller should retry later (HTTP 503)."""


class _GaveUp(Exception):
    """Every caller of a batch has gone (timed out): its remaining chunks are not computed."""


class NotFinite(ValueError):
    """The model's forecast of some series is not finite (e.g. values beyond float32's range)."""


@dataclass(eq=False)
class Job:
    """One request's series and options; ``future`` receives (quantiles, mean) for its rows only."""

    series: list[torch.Tensor]
    prediction_length: int
    quantile_levels: tuple[float, ...]
    rollout_steps: int
    future: asyncio.Future
    arrived: float = field(default_factory=time.monotonic)

    @property
    def rows(self) -> int:
        return len(self.series)


@dataclass
class BatchStats:
    """What one forward did, for the metrics."""

    rows: int
    requests: int
    seconds: float


class Batcher:
    """Queue forecast jobs and run them in batches on one worker thread.

    Args:
        model: the loaded ``TiRexModel``.
        enabled: False runs every request as its own forward (the reference server's behaviour).
        window_s: how long the oldest queued request may wait for others to join its batch.
        max_rows: series per forward at most (a larger single request is split into several forwards).
        max_queue_rows: series waiting at most; beyond it ``submit`` raises ``Overloaded``.
        on_batch: called with ``BatchStats`` after each forward (metrics).
    """

    def __init__(self, model, enabled: bool = True, window_s: float = 0.005, max_rows: int = 256,
                 max_queue_rows: int = 8192, on_batch: Callable[[BatchStats], None] | None = None):
        self.model = model
        self.enabled = enabled
        self.window_s = window_s
        self.max_rows = max_rows
        self.max_queue_rows = max_queue_rows
        self.on_batch = on_batch
        self._pending: deque[Job] = deque()
        self._pending_rows = 0
        self._wakeup = asyncio.Event()
        self._closing = False
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tirex-forecast")
        self._task: asyncio.Task | None = None

    @property
    def queued_rows(self) -> int:
        return self._pending_rows

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="tirex-batcher")

    async def stop(self) -> None:
        """Finish every queued job, then stop the worker thread."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            await self._task
        self._executor.shutdown(wait=True)

    async def run_on_worker(self, fn, *args):
        """Run ``fn`` on the forecasting thread (e.g. a warm-up forecast) and return its result."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def submit(self, series: list[torch.Tensor], prediction_length: int, quantile_levels,
                     rollout_steps: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Queue one request's series; returns its (quantiles (n, H, levels), mean (n, H))."""
        if self._closing:
            raise Overloaded("the server is shutting down")
        self._drop_cancelled()
        if self._pending_rows + len(series) > self.max_queue_rows and self._pending:
            raise Overloaded(f"{self._pending_rows} series are already queued (limit {self.max_queue_rows})")
        job = Job(series, prediction_length, tuple(quantile_levels), rollout_steps,
                  asyncio.get_running_loop().create_future())
        self._pending.append(job)
        self._pending_rows += job.rows
        self._wakeup.set()
        return await job.future

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._drop_cancelled()
            if not self._pending:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            wait = self._pending[0].arrived + self.window_s - time.monotonic()
            if self.enabled and wait > 0 and self._pending_rows < self.max_rows and not self._closing:
                self._wakeup.clear()  # a new request re-checks the row limit; otherwise the window ends
                try:
                    await asyncio.wait_for(self._wakeup.wait(), wait)
                except asyncio.TimeoutError:
                    pass
                continue
            jobs = self._take()
            try:
                results = await loop.run_in_executor(self._executor, self._run, jobs)
            except BaseException as exc:  # never lose the loop: the callers get the error
                results = [exc] * len(jobs)
                if isinstance(exc, asyncio.CancelledError):
                    raise
            for job, result in zip(jobs, results):
                if job.future.done():  # the caller gave up (timeout, disconnect)
                    continue
                if isinstance(result, BaseException):
                    job.future.set_exception(result)
                else:
                    job.future.set_result(result)

    def _drop_cancelled(self) -> None:
        for job in [j for j in self._pending if j.future.done()]:
            self._pending.remove(job)
            self._pending_rows -= job.rows

    def _take(self) -> list[Job]:
        """The next batch: jobs in arrival order up to ``max_rows`` series (at least one job)."""
        jobs, rows = [], 0
        while self._pending:
            job = self._pending[0]
            if jobs and (not self.enabled or rows + job.rows > self.max_rows):
                break
            self._pending.popleft()
            self._pending_rows -= job.rows
            if not job.future.done():
                jobs.append(job)
                rows += job.rows
        return jobs

    def _run(self, jobs: list[Job]) -> list:
        """On the worker thread: the jobs grouped by rollout, each group forecast in chunks of ``max_rows``."""
        patch = self.model.config.patch_size
        groups: dict[tuple, list[int]] = {}
        for i, job in enumerate(jobs):
            key = (math.ceil(job.prediction_length / patch), job.rollout_steps, job.quantile_levels)
            groups.setdefault(key, []).append(i)
        results: list = [None] * len(jobs)
        for (_, rollout_steps, levels), members in groups.items():
            started = time.perf_counter()
            group = [jobs[i] for i in members]
            series = [s for job in group for s in job.series]
            # the same number of patches means the same rollout: compute the longest horizon, slice the others
            horizon = max(job.prediction_length for job in group)
            computed = 0
            try:
                quantiles, means = [], []
                # chunk by chunk, as forecast_tensors would, so callers who gave up (timeout) stop the work
                for first in range(0, len(series), self.max_rows):
                    if all(job.future.done() for job in group):
                        raise _GaveUp()
                    chunk = series[first : first + self.max_rows]
                    q, mean = forecast_tensors(self.model, chunk, horizon, levels, batch_size=self.max_rows,
                                               rollout_steps=rollout_steps)
                    quantiles.append(q)
                    means.append(mean)
                    computed += len(chunk)
                q, mean = torch.cat(quantiles), torch.cat(means)
                start = 0
                for i, job in zip(members, group):
                    rows = slice(start, start + job.rows)
                    start += job.rows
                    results[i] = _finite(q[rows, : job.prediction_length], mean[rows, : job.prediction_length])
            except Exception as exc:
                for i in members:
                    results[i] = exc
            if self.on_batch is not None and computed:
                self.on_batch(BatchStats(computed, len(members), time.perf_counter() - started))
        return results


def _finite(q: torch.Tensor, mean: torch.Tensor):
    bad = ~(torch.isfinite(q).flatten(1).all(1) & torch.isfinite(mean).all(1))
    if bad.any():
        rows = bad.nonzero().flatten().tolist()
        return NotFinite(
            f"the forecast of series {rows} is not finite; values beyond float32's range "
            f"(about 3.4e38) cannot be forecast"
        )
    return q, mean

"""The driver side: plan the partitions, start the actor pool through Ray Data, follow it, finish the output."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import signal
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from ..cpus import cpu_budget
from ..inputs import check_prediction_length, to_series_list
from ..io import InputError
from ..loading import model_digest
from ..quantiles import check_levels
from . import partitions as parts
from .worker import PartitionForecaster, SeriesForecaster, id_hashes

INSTALL_HINT = "pip install 'tirex[distributed]'"
FORMAT_VERSION = 1


def require_ray():
    """Import Ray and Ray Data, or raise ImportError saying how to install them."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise ImportError(f"the Ray engine needs Ray Data ({exc.name or 'ray'} is not installed); "
                          f"install the extra: {INSTALL_HINT}") from None
    return ray


def connect(address: str | None = None) -> bool:
    """Start or join Ray unless this process already has; returns True when this call did it.

    ``address=None`` joins the cluster in ``RAY_ADDRESS`` if set (or one started with ``ray start`` on this
    machine), else starts a local instance with the CPUs this process may use (``tirex.cpus``: Ray counts
    every core of the machine, also under ``taskset``, a Slurm CPU set or a cgroup quota, and would start a
    replica, each with its own model, per core); ``"auto"`` joins the cluster this node belongs to;
    ``"ray://head:10001"`` uses Ray Client.
    """
    ray = require_ray()
    if ray.is_initialized():
        return False
    options = dict(logging_level=logging.WARNING, include_dashboard=False)
    cpus = cpu_budget().cpus
    if address is None and not os.environ.get("RAY_ADDRESS") and cpus < (os.cpu_count() or cpus):
        try:
            ray.init(num_cpus=cpus, **options)
            return True
        except ValueError:  # Ray found a cluster of this machine to join: joining takes no CPU count
            pass
    ray.init(address=address, **options)
    return True


def local_raylets() -> set[int]:
    """PIDs of the raylets this process started (``ray.init`` of a local instance; Linux only, else empty)."""
    found = set()
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == os.getpid() and b"raylet" in (entry / "cmdline").read_bytes().split(b"\0", 1)[0]:
                found.add(int(entry.name))
        except (OSError, ValueError, IndexError):
            continue
    return found


def stop_leftover_workers(raylets: set[int], wait: float = 2.0) -> int:
    """After ``ray.shutdown()``: end the worker processes of ``raylets`` that are still alive, and return
    how many there were. A replica that was busy when its cluster stopped can outlive its raylet (seen once
    in the tests: a Ray Data actor, half a gigabyte of memory, asleep with no parent); they are asked to stop
    (SIGTERM), then killed. Workers are recognised by ``RAY_RAYLET_PID`` in their environment (Linux)."""
    if not raylets:
        return 0
    marks = {f"RAY_RAYLET_PID={pid}".encode() for pid in raylets}

    def alive() -> list[int]:
        pids = []
        for entry in Path("/proc").glob("[0-9]*"):
            try:
                if marks & set((entry / "environ").read_bytes().split(b"\0")):
                    pids.append(int(entry.name))
            except (OSError, ValueError):
                continue
        return pids

    deadline = time.monotonic() + wait  # most exit on their own once the raylet has gone
    while (left := alive()) and time.monotonic() < deadline:
        time.sleep(0.1)
    stopped = len(left)
    for sig, grace in ((signal.SIGTERM, 1.0), (signal.SIGKILL, 1.0)):
        for pid in left:
            with contextlib.suppress(OSError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while (left := alive()) and time.monotonic() < deadline:
            time.sleep(0.05)
        if not left:
            break
    return stopped


def _quiet_ray_data(ray) -> None:
    # our own progress bar replaces Ray Data's per-operator bars and its execution log lines
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    context.enable_auto_log_stats = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)  # "progress bars disabled"


@dataclass(frozen=True)
class ShippedModel:
    """A model's weights in Ray's object store (``ref`` wraps the ObjectRef so Ray passes it unresolved)."""

    ref: tuple
    digest: str
    quantile_levels: tuple[float, ...]


def ship_model(model=None) -> ShippedModel:
    """Load ``model`` (a ``load_model`` source or a loaded model) on the driver once and put its
    ``config.json`` + ``model.safetensors`` into Ray's object store, where every replica reads them."""
    if isinstance(model, ShippedModel):
        return model
    ray = require_ray()
    from .. import load_model

    loaded = model if hasattr(model, "save_pretrained") else load_model(model)
    with tempfile.TemporaryDirectory(prefix="tirex-ship-") as folder:
        loaded.save_pretrained(folder)
        files = {p.name: p.read_bytes() for p in sorted(Path(folder).iterdir()) if p.is_file()}
    return ShippedModel((ray.put(files),), model_digest(loaded), tuple(loaded.config.quantile_levels))


def _pool(ray, size: int, cpus: float, device: str | None) -> dict:
    return dict(compute=ray.data.ActorPoolStrategy(size=size), num_cpus=cpus,
                num_gpus=1 if device and str(device).startswith("cuda") else 0)


def _workers(ray, num_workers: int | None, cpus_per_worker: float, tasks: int) -> int:
    if num_workers is None:
        num_workers = max(1, int(ray.cluster_resources().get("CPU", 1) // cpus_per_worker))
    return max(1, min(int(num_workers), tasks))


@dataclass
class DatasetResult:
    """What ``forecast_dataset`` did. ``peak_worker_rss_bytes``: the largest peak resident memory of any
    replica process in this run (0 when every partition was already done)."""

    output: str
    partitions: int
    written: int
    skipped: int
    series: int
    rows: int
    seconds: float
    workers: int
    peak_worker_rss_bytes: int


def _check_separate(source, output) -> None:
    """The output must not lie inside an input folder (a rerun would read it) nor hold the input."""
    src_fs, src, _ = parts.resolve(source)
    out_fs, out, _ = parts.resolve(output)
    if type(src_fs) is not type(out_fs):
        return
    inside = lambda a, b: a == b or a.startswith(b.rstrip("/") + "/")  # noqa: E731
    if (src_fs.get_file_info(src).type == pafs.FileType.Directory and inside(out, src)) or inside(src, out):
        raise InputError(f"the output folder {output} and the input {source} overlap; write the forecasts elsewhere")


def _prepare_output(fs, root: str, manifest: dict, plan: list, overwrite: bool) -> None:
    """Check that the output folder holds nothing but earlier results of this same run (or clear it)."""
    existing = parts.output_files(fs, root)
    ours = [i for i in existing if i.extension == "parquet" and parts.read_stamp(fs, i.path) is not None]
    if overwrite:
        for info in ours + [i for i in existing if parts.is_temporary(i)
                            or i.base_name in (parts.MANIFEST_NAME, parts.SUCCESS_NAME)]:
            parts.delete_quietly(fs, info.path)
        existing = []
    previous = parts.read_json(fs, f"{root}/{parts.MANIFEST_NAME}")
    if previous is not None and previous != manifest:
        changed = sorted(k for k in set(previous) | set(manifest) if previous.get(k) != manifest.get(k))
        raise InputError(f"{root} holds forecasts of another run (different {', '.join(changed)}); "
                         "use another output folder, or overwrite=True (--overwrite) to replace them")
    planned = {f"{root}/{p.output}" for p in plan}
    stale = [i.path for i in ours if i.path not in planned]
    if stale:
        raise InputError(f"{root} holds forecasts for input files that are not in this run ({stale[:3]}); "
                         "use another output folder, or overwrite=True (--overwrite) to replace them")
    for info in existing:
        if parts.is_temporary(info) or info.base_name.startswith("_tirex_abort."):  # left by a killed run
            parts.delete_quietly(fs, info.path)
    parts.write_json(fs, f"{root}/{parts.MANIFEST_NAME}", manifest)


def _ids_of(fs, path: str) -> np.ndarray:
    with fs.open_input_file(path) as handle:
        ids = pq.read_table(handle, columns=["item_id"]).column("item_id").unique().to_pylist()
    return id_hashes(ids)


def _check_one_partition_per_series(fs, root: str, plan: list, hashes: dict[int, np.ndarray]) -> None:
    """A series split over two files would get two forecasts from partial histories: refuse that."""
    all_hashes = np.concatenate([hashes[i] for i in range(len(plan))])
    owner = np.repeat(np.arange(len(plan)), [len(hashes[i]) for i in range(len(plan))])
    order = np.argsort(all_hashes, kind="stable")
    repeated = np.flatnonzero(all_hashes[order][1:] == all_hashes[order][:-1])
    if repeated.size == 0:
        return
    first, second = plan[owner[order][repeated[0]]], plan[owner[order][repeated[0] + 1]]
    target = all_hashes[order][repeated[0]]
    with fs.open_input_file(f"{root}/{first.output}") as handle:
        ids = pq.read_table(handle, columns=["item_id"]).column("item_id").unique().to_pylist()
    name = next((i for i in ids if id_hashes([i])[0] == target), "?")
    raise InputError(f"series {name!r} (column 'item_id') appears in two partitions, {first.location} and "
                     f"{second.location}; every series must lie within one partition: partition the data by id, or pass "
                     "partition_by='folder' (--partition-by folder) when each folder holds whole series")


def forecast_dataset(
    source,
    horizon: int,
    output,
    *,
    quantile_levels: Sequence[float] | None = None,
    model=None,
    id_column: str | None = None,
    timestamp_column: str | None = None,
    target_column: str | None = None,
    batch_size: int = 256,
    num_workers: int | None = None,
    cpus_per_worker: float = 1,
    device: str | None = None,
    address: str | None = None,
    partition_by: str = "file",
    overwrite: bool = False,
    progress: bool | None = None,
    on_partition: Callable[[dict], None] | None = None,
    ray_remote_args: dict | None = None,
) -> DatasetResult:
    """Forecast every series of a partitioned long-layout dataset on Ray; write partitioned Parquet.

    ``source``: a .parquet / .csv file, or a folder (local path or URI such as ``s3://bucket/sales/``) whose
    data files are the partitions (``partition_by="folder"``: the files directly inside each folder together,
    as in a hive layout ``bucket=7/part-*.parquet``). Rows are (id, timestamp, target), columns detected or
    named as in ``tirex forecast``; every series must lie within one partition (write the data partitioned by
    id, e.g. by ``hash(id) % N``). Each partition is validated exactly as ``tirex forecast`` validates a file.

    ``output``: a folder; partition ``DIR/a/b.csv`` of ``source=DIR`` goes to ``output/a/b.parquet`` (folder
    ``DIR/a/`` to ``output/a/forecast.parquet``) with the columns of ``tirex forecast``'s output (``item_id``,
    ``timestamp``, ``mean``, one per level). A rerun skips partitions already written with the same settings;
    ``_SUCCESS`` appears when all are done.

    Replicas: ``num_workers`` actors (default: the cluster's CPUs / ``cpus_per_worker``), each loading the
    model once and using ``cpus_per_worker`` threads. Ray is joined at ``address`` (or ``RAY_ADDRESS``), or
    started locally, unless the process already called ``ray.init``.

    Bad data in any partition raises ``InputError`` (a ``ValueError``) naming the partition and column, and
    removes what this run wrote. ``on_partition(summary)`` is called on the driver after each partition.

    Example:
        >>> result = forecast_dataset("sales/", horizon=28, output="forecasts/")
        >>> pd.read_parquet("forecasts/")          # every partition, one long table
    """
    horizon = check_prediction_length(horizon)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if cpus_per_worker <= 0 or (num_workers is not None and num_workers <= 0):
        raise ValueError("num_workers and cpus_per_worker must be positive")
    ray = require_ray()
    started = time.perf_counter()
    plan = parts.list_partitions(source, partition_by)
    out_fs, out_root, out_prefix = parts.resolve(output)
    _check_separate(source, output)
    created = connect(address)
    raylets = local_raylets() if created else set()
    try:
        shipped = ship_model(model)
        levels = check_levels(quantile_levels if quantile_levels is not None else shipped.quantile_levels)
        columns = dict(id_column=id_column, timestamp_column=timestamp_column, target_column=target_column)
        manifest = {"format": FORMAT_VERSION, "horizon": horizon, "quantile_levels": list(levels),
                    "model_sha256": shipped.digest, "columns": columns}
        run_digest = hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()[:16]
        _prepare_output(out_fs, out_root, manifest, plan, overwrite)
        parts.delete_quietly(out_fs, f"{out_root}/{parts.SUCCESS_NAME}")
        done = [parts.read_stamp(out_fs, f"{out_root}/{p.output}") == p.stamp(run_digest) for p in plan]
        todo = [i for i, d in enumerate(done) if not d]
        run = dict(prediction_length=horizon, quantile_levels=list(levels), batch_size=batch_size)
        summaries, workers = _run_partitions(
            ray, plan, todo, shipped, run, columns, out_prefix + out_root, run_digest, num_workers, cpus_per_worker,
            device, ray_remote_args, sys.stderr.isatty() if progress is None else progress, on_partition, out_fs)
        for info in parts.output_files(out_fs, out_root):  # every task has finished: a temporary file left now
            if parts.is_temporary(info):                    # is from a replica that died and was retried
                parts.delete_quietly(out_fs, info.path)
        hashes = {i: np.frombuffer(s["ids"], dtype=np.uint64) for i, s in summaries.items()}
        hashes.update({i: _ids_of(out_fs, f"{out_root}/{plan[i].output}") for i, d in enumerate(done) if d})
        try:
            _check_one_partition_per_series(out_fs, out_root, plan, hashes)
        except InputError:
            _remove_outputs(out_fs, out_root, [plan[i] for i in todo])
            raise
        series = int(sum(len(h) for h in hashes.values()))
        rows = series * horizon
        parts.write_json(out_fs, f"{out_root}/{parts.SUCCESS_NAME}", {"partitions": len(plan), "series": series,
                                                                       "rows": rows})
        return DatasetResult(out_prefix + out_root, len(plan), len(todo), len(plan) - len(todo), series, rows,
                             time.perf_counter() - started, workers,
                             max((int(s["peak_rss"]) for s in summaries.values()), default=0))
    finally:
        if created:
            ray.shutdown()
            stop_leftover_workers(raylets)


def _remove_outputs(fs, root: str, plan: list) -> None:
    for p in plan:
        parts.delete_quietly(fs, f"{root}/{p.output}")
    for info in parts.output_files(fs, root):
        if parts.is_temporary(info):
            parts.delete_quietly(fs, info.path)


def _run_partitions(ray, plan, todo, shipped, run, columns, output, run_digest, num_workers, cpus_per_worker,
                    device, ray_remote_args, progress, on_partition, out_fs):
    """Stream the partitions in ``todo`` through the actor pool; returns {index: summary}, pool size."""
    from tqdm.auto import tqdm

    summaries: dict[int, dict] = {}
    if not todo:
        return summaries, 0
    _quiet_ray_data(ray)
    workers = _workers(ray, num_workers, cpus_per_worker, len(todo))
    root = parts.resolve(output)[1]
    abort_marker = f"{root}/_tirex_abort.{uuid.uuid4().hex}"
    items = [{"index": i, **parts.as_row(plan[i])} for i in todo]
    dataset = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
        PartitionForecaster, batch_size=1, batch_format="numpy",
        fn_constructor_kwargs=dict(model_ref=shipped.ref, device=device, threads=max(1, int(cpus_per_worker)),
                                   run=run, columns=columns, output=output, run_digest=run_digest,
                                   abort_marker=abort_marker),
        **_pool(ray, workers, cpus_per_worker, device), **(ray_remote_args or {}))
    bar = tqdm(total=len(plan), initial=len(plan) - len(todo), unit="partition", desc="forecast",
               disable=not progress, file=sys.stderr)
    rows = iter(dataset.iter_rows())
    series, errors = 0, []
    try:
        for row in rows:
            summary = {k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()}
            if summary["error"] and not errors:
                # stop writing: every replica checks this marker before each partition and before each rename;
                # the rest of the stream then drains quickly, so no writer outlives the cleanup below
                parts.write_json(out_fs, abort_marker, {"error": summary["error"]})
            if summary["error"]:
                errors.append(summary["error"])
            if errors or summary["aborted"]:
                continue
            summaries[summary["index"]] = summary
            series += summary["series"]
            bar.update(1)
            bar.set_postfix(series=series, refresh=False)
            if on_partition is not None:
                on_partition(summary)
    except BaseException:  # interrupted (Ctrl-C) or Ray failed: finished partitions stay, to be resumed
        _stop(rows)
        for info in parts.output_files(out_fs, root):
            if parts.is_temporary(info):
                parts.delete_quietly(out_fs, info.path)
        raise
    finally:
        bar.close()
    if errors:
        _remove_outputs(out_fs, root, [plan[i] for i in todo])
        parts.delete_quietly(out_fs, abort_marker)
        more = f" (and {len(errors) - 1} more partition(s) with errors)" if len(errors) > 1 else ""
        raise InputError(errors[0] + more)
    return summaries, workers


def _stop(rows) -> None:
    """Shut the streaming execution down (its actors are killed), so no writer outlives the cleanup."""
    with contextlib.suppress(Exception):
        rows.close()


def forecast_series(
    series,
    horizon: int,
    quantile_levels: Sequence[float] | None = None,
    model=None,
    *,
    batch_size: int = 256,
    chunk_size: int = 2048,
    num_workers: int | None = None,
    cpus_per_worker: float = 1,
    device: str | None = None,
    address: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``model.forecast(series, horizon, quantile_levels)`` for in-memory series, computed by Ray replicas.

    The series (anything ``model.forecast`` takes as arrays: a 2-D array or a list of 1-D series) are checked
    here by the same input functions, sent in chunks of ``chunk_size`` through Ray Data to an actor pool, and
    returned in order as numpy ``(quantiles (n, horizon, levels), mean (n, horizon))``. ``model`` may be a
    ``ShippedModel`` (``ship_model(...)``) to reuse weights already in the object store across calls. Joins
    or starts Ray like ``forecast_dataset`` and leaves it running.
    """
    horizon = check_prediction_length(horizon)
    cleaned = [s.numpy() for s in to_series_list(series)]
    ray = require_ray()
    connect(address)
    shipped = ship_model(model)
    levels = check_levels(quantile_levels if quantile_levels is not None else shipped.quantile_levels)
    _quiet_ray_data(ray)
    chunks = [cleaned[i : i + chunk_size] for i in range(0, len(cleaned), chunk_size)]
    items = [{"chunk": k, "values": np.concatenate(c), "ends": np.cumsum([len(s) for s in c])}
             for k, c in enumerate(chunks)]
    workers = _workers(ray, num_workers, cpus_per_worker, len(items))
    run = dict(prediction_length=horizon, quantile_levels=list(levels), batch_size=batch_size)
    dataset = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
        SeriesForecaster, batch_size=1, batch_format="numpy",
        fn_constructor_kwargs=dict(model_ref=shipped.ref, device=device, threads=max(1, int(cpus_per_worker)),
                                   run=run),
        **_pool(ray, workers, cpus_per_worker, device))
    quantiles, means = [None] * len(items), [None] * len(items)
    for row in dataset.iter_rows():
        k, n = int(row["chunk"]), len(chunks[int(row["chunk"])])
        quantiles[k] = np.asarray(row["quantiles"], dtype=np.float32).reshape(n, horizon, len(levels))
        means[k] = np.asarray(row["mean"], dtype=np.float32).reshape(n, horizon)
    return np.concatenate(quantiles), np.concatenate(means)

"""What runs inside the Ray actors: one model replica each, loaded once, then partition after partition.

Ray Data's actor pool calls a replica with a batch of rows (here one row per partition, or one chunk of
in-memory series) and gets a batch of summary rows back; only summaries travel back to the driver, so the
driver's memory does not grow with the forecasts.
"""

from __future__ import annotations

import os
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs

from .partitions import Partition, read_partition, resolve, write_table

# Testing only: when set to a folder, a replica kills its own process once per partition, after writing the
# temporary file and before renaming it, to check that Ray's retry neither loses nor duplicates rows.
CRASH_ONCE_ENV = "TIREX_TEST_CRASH_ONCE_DIR"


def peak_rss_bytes() -> int:
    """Peak resident memory of this process so far (Linux reports kilobytes)."""
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def id_hashes(ids) -> np.ndarray:
    """64-bit hashes of series ids (stable across processes), for the one-partition-per-series check."""
    return pd.util.hash_array(np.asarray(ids, dtype=object)).astype(np.uint64)


class _Replica:
    """Loads the model from the weights the driver put in Ray's object store (safetensors, no pickle)."""

    def __init__(self, model_ref, device: str | None, threads: int):
        import ray
        import torch

        from .. import load_model

        torch.set_num_threads(max(1, int(threads)))
        files = ray.get(model_ref[0])
        with tempfile.TemporaryDirectory(prefix="tirex-replica-") as folder:
            for name, data in files.items():
                Path(folder, name).write_bytes(data)
            self.model = load_model(folder, device=device)
        self.pid = os.getpid()


class PartitionForecaster(_Replica):
    """Reads a partition, validates it as ``tirex forecast`` does, forecasts it, writes its Parquet file."""

    def __init__(self, model_ref, device, threads, run: dict, columns: dict, output: str, run_digest: str,
                 abort_marker: str):
        super().__init__(model_ref, device, threads)
        self.run, self.columns, self.run_digest = run, columns, run_digest
        self.output_fs, self.output_root, _ = resolve(output)
        self.abort_marker = abort_marker
        self.input_fs = None

    def _aborted(self) -> bool:
        """The driver found bad data elsewhere: this run writes nothing more (its outputs are being removed)."""
        return self.output_fs.get_file_info(self.abort_marker).type != pafs.FileType.NotFound

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        fields = ("location", "path", "size", "mtime_ns", "output")
        rows = [self._one(int(batch["index"][k]), Partition(*(_plain(batch[f][k]) for f in fields)))
                for k in range(len(batch["index"]))]
        return {key: np.array([row[key] for row in rows], dtype=object) for key in rows[0]}

    def _one(self, index: int, partition: Partition) -> dict:
        from ..io import to_long

        started = time.perf_counter()
        row = {"index": index, "error": "", "aborted": False, "series": 0, "rows": 0, "ids": b"", "pid": self.pid}
        if self.input_fs is None:
            self.input_fs = resolve(partition.location)[0]
        if self._aborted():
            row.update(aborted=True, seconds=0.0, peak_rss=peak_rss_bytes())
            return row
        try:
            frame = read_partition(self.input_fs, partition)
            long = to_long(frame, partition.location, "long", **self.columns)
            del frame
            result = self.model.forecast(long, id_column="item_id", timestamp_column="timestamp",
                                         target_column="target", **self.run)
        except (ValueError, TypeError) as err:  # the input checks of tirex.io and model.forecast: bad data
            message = str(err)
            row["error"] = message if partition.location in message else f"{partition.location}: {message}"
        else:
            table = pa.Table.from_pandas(result, preserve_index=False)
            path = f"{self.output_root}/{partition.output}"
            try:
                write_table(self.output_fs, path, table, partition.stamp(self.run_digest), self._before_rename(partition))
            except _Aborted:
                row["aborted"] = True
            else:
                ids = result["item_id"].unique()
                row.update(series=len(ids), rows=len(result), ids=id_hashes(ids).tobytes())
        row.update(seconds=time.perf_counter() - started, peak_rss=peak_rss_bytes())
        return row

    def _before_rename(self, partition: Partition):
        def check():
            if self._aborted():
                raise _Aborted  # the temporary file is deleted, the final name never appears
            folder = os.environ.get(CRASH_ONCE_ENV)
            if folder:
                marker = Path(folder, partition.output.replace("/", "_") + ".crashed")
                if not marker.exists():
                    marker.touch()
                    os._exit(1)

        return check


class _Aborted(Exception):
    pass


class SeriesForecaster(_Replica):
    """Forecasts chunks of in-memory series (each row: the series concatenated, and their end offsets)."""

    def __init__(self, model_ref, device, threads, run: dict):
        super().__init__(model_ref, device, threads)
        self.run = run

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        quantiles, means = [], []
        for values, ends in zip(batch["values"], batch["ends"]):
            series = np.split(np.array(values, dtype=np.float64), np.asarray(ends)[:-1])  # a writable copy
            q, mean = self.model.forecast(series, output_type="numpy", **self.run)
            quantiles.append(q.reshape(-1))
            means.append(mean.reshape(-1))
        return {"chunk": batch["chunk"], "quantiles": _ragged(quantiles), "mean": _ragged(means),
                "peak_rss": np.full(len(means), peak_rss_bytes()), "pid": np.full(len(means), self.pid)}


def _plain(value):
    return value.item() if isinstance(value, np.generic) else value


def _ragged(arrays: list[np.ndarray]) -> np.ndarray:
    out = np.empty(len(arrays), dtype=object)
    out[:] = arrays
    return out

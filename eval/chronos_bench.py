"""Chronos Benchmark II (27 zero-shot tasks) through ``fev``, on Hub or local data.

Data sources, in order: ``data_dir`` (``DATA_DIR/<task name>/*.parquet`` or ``*.arrow``, e.g. the offline
suite's folder), else fev's own rules: ``FEV_DATASETS_PREFIX=DIR`` loads ``DIR/<config>/*.parquet``, otherwise the
Hugging Face Hub (``autogluon/chronos_datasets``). Each task's fev summary is written to
``OUTPUT_DIR/tasks/<model>/<task>.json`` as soon as it finishes (atomically); a rerun skips finished tasks.
"""

from __future__ import annotations

import json
import time
from importlib import resources
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import yaml
from tqdm.auto import tqdm

from .forecasters import Forecaster, forecaster_identity, make_forecaster, validate_forecast
from .io_utils import atomic_write_csv, atomic_write_json, load_cached, safe_name


def _data_file(name: str) -> Path:
    return Path(str(resources.files(__package__) / "data" / name))


TASKS_YAML = _data_file("chronos_bench_ii/tasks.yaml")


def load_task_configs(path: str | Path | None = None) -> list[dict]:
    """The task definitions of Chronos Benchmark II (fev YAML format), each with ``task_name`` filled in."""
    with open(path or TASKS_YAML) as handle:
        configs = yaml.safe_load(handle)["tasks"]
    for config in configs:
        config.setdefault("task_name", config.get("dataset_config"))
    return configs


def select_tasks(configs: list[dict], names: Sequence[str] | None) -> list[dict]:
    """Keep the named tasks (in the given order); unknown names raise with the list of valid ones."""
    if not names:
        return configs
    by_name = {c["task_name"]: c for c in configs}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise KeyError(f"unknown task(s) {unknown}; valid tasks: {', '.join(by_name)}")
    return [by_name[n] for n in names]


def make_task(config: dict, data_dir: str | Path | None = None):
    """A ``fev.Task`` for one config; with ``data_dir`` the data come from ``data_dir/<task name>/``."""
    import fev

    config = dict(config)
    if data_dir is not None:
        folder = Path(data_dir) / config["task_name"]
        files = sorted(folder.glob("*.parquet")) or sorted(folder.glob("*.arrow"))
        if not files:
            raise FileNotFoundError(f"no parquet or arrow files for task {config['task_name']!r} in {folder}; "
                                    "expected the Chronos-datasets layout (id, timestamp list, target list)")
        config["dataset_path"] = str(folder / f"*{files[0].suffix}")
        config["dataset_config"] = None
    return fev.Task(**config)


def _window_predictions(forecaster: Forecaster, window, task) -> list[dict]:
    past, _ = window.get_input_data()
    series = [np.asarray(y, dtype=np.float64) for y in past[task.target]]
    levels = list(task.quantile_levels)
    quantiles, mean = forecaster.predict_quantiles(series, task.horizon, levels, season_length=task.seasonality)
    quantiles, mean = validate_forecast(quantiles, mean, len(series), task.horizon, levels, name=forecaster.name)
    # the point forecast scored by MASE is the median when it is among the levels (as for the published models)
    point = quantiles[:, :, levels.index(0.5)] if 0.5 in levels else mean
    predictions = {"predictions": point}
    predictions.update({str(q): quantiles[:, :, i] for i, q in enumerate(levels)})
    return [{key: value[i] for key, value in predictions.items()} for i in range(len(series))]


def run_chronos_benchmark(
    model,
    output_dir: str | Path,
    data_dir: str | Path | None = None,
    tasks: Sequence[str] | None = None,
    model_name: str | None = None,
    task_configs: list[dict] | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Evaluate ``model`` (anything ``make_forecaster`` accepts) on the Chronos Benchmark II tasks.

    Returns one row per finished task (fev summary columns incl. ``MASE`` and ``WQL``) and writes
    ``OUTPUT_DIR/results.csv``. Results are kept per model and task (``OUTPUT_DIR/tasks/<model>/<task>.json``,
    with the forecaster's identity, ``forecaster_identity``): finished tasks of the same model are loaded,
    not rerun; those of another model are never served for this one.
    """
    forecaster = make_forecaster(model, name=model_name)
    name = model_name or forecaster.name
    identity = forecaster_identity(forecaster)
    configs = select_tasks(task_configs or load_task_configs(), tasks)
    task_dir = Path(output_dir) / "tasks" / safe_name(name)  # keyed by model and task
    summaries = []
    for config in tqdm(configs, desc=f"{name}: tasks", disable=not progress):
        path = task_dir / f"{safe_name(config['task_name'])}.json"
        cached = load_cached(path, identity)
        if cached is not None:
            summaries.append(cached)
            continue
        task = make_task(config, data_dir)
        start = time.monotonic()
        predictions = [_window_predictions(forecaster, window, task) for window in task.iter_windows()]
        elapsed = time.monotonic() - start
        summary = task.evaluation_summary(predictions, model_name=name, inference_time_s=elapsed)
        summary["task_name"] = config["task_name"]
        summary["model_identity"] = identity
        atomic_write_json(path, summary)
        summaries.append(json.loads(path.read_text()))
        atomic_write_csv(Path(output_dir) / "results.csv", pd.DataFrame(summaries))
    results = pd.DataFrame(summaries)
    if len(results):
        atomic_write_csv(Path(output_dir) / "results.csv", results)
    return results

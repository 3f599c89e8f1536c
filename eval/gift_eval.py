"""GIFT-Eval: 97 configurations read from local dataset folders, scored with the leaderboard's metrics.

Layout expected under ``data_dir`` (what ``huggingface-cli download Salesforce/GiftEval --repo-type=dataset
--local-dir DIR`` produces): ``DIR/<storage_dir>/`` holding ``data-*.arrow`` (Arrow IPC stream),
``dataset_info.json`` and ``state.json``; columns ``item_id``, ``start``, ``freq``, ``target`` (1-D, or
[dim, T] for multivariate, NaN = missing).

Results: ``OUTPUT_DIR/configs/<config>.json`` per finished configuration (atomic), ``OUTPUT_DIR/all_results.csv``
(the leaderboard's 15 columns, rewritten after every configuration) and ``OUTPUT_DIR/config.json``.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
from tqdm.auto import tqdm

from .forecasters import QUANTILE_LEVELS, forecaster_identity, make_forecaster, validate_forecast
from .io_utils import atomic_write_csv, atomic_write_json, load_cached, safe_name
from .metrics import GIFT_METRICS, gift_eval_metrics, seasonal_error

CONFIGS_CSV = Path(str(resources.files(__package__) / "data" / "gift_eval_configs.csv"))
RESULT_COLUMNS = ["dataset", "model", *[f"eval_metrics/{m}" for m in GIFT_METRICS], "domain", "num_variates"]
TEST_SPLIT = 0.1
MAX_WINDOWS = 20


@dataclass(frozen=True)
class GiftConfig:
    """One GIFT-Eval configuration, ``dataset/freq/term`` (e.g. ``m4_hourly/H/short``)."""

    name: str
    storage_dir: str
    freq: str
    term: str
    prediction_length: int
    seasonality: int
    domain: str
    num_variates: int

    @property
    def single_window(self) -> bool:
        """M4 configurations are evaluated on one window."""
        return self.storage_dir.lower().startswith("m4_")


def load_configs(path: str | Path | None = None) -> dict[str, GiftConfig]:
    """All 97 configurations, keyed by name, in the order of the shipped table."""
    table = pd.read_csv(path or CONFIGS_CSV)
    return {
        row["dataset"]: GiftConfig(
            name=row["dataset"], storage_dir=row["storage_dir (Dataset name=)"], freq=row["freq"], term=row["term"],
            prediction_length=int(row["prediction_length"]),
            seasonality=int(row["mase_seasonality(gluonts get_seasonality)"]), domain=row["domain"],
            num_variates=int(row["num_variates"]),
        )
        for _, row in table.iterrows()
    }


def select_configs(names: Sequence[str] | None = None, path=None) -> list[GiftConfig]:
    """The named configurations (all when ``names`` is empty); an unknown name raises, suggesting close ones."""
    configs = load_configs(path)
    if not names:
        return list(configs.values())
    selected = []
    for name in names:
        if name in configs:
            selected.append(configs[name])
            continue
        matches = [c for c in configs if c.startswith(name.rstrip("/") + "/")]
        if not matches:
            close = [c for c in configs if name.split("/")[0].lower() in c.lower()][:6]
            hint = f"; did you mean one of {close}?" if close else "; names look like 'm4_hourly/H/short'"
            raise KeyError(f"unknown GIFT-Eval configuration {name!r}{hint}")
        selected.extend(configs[m] for m in matches)
    return selected


def read_dataset_folder(folder: str | Path) -> pa.Table:
    """Read a Hugging Face ``save_to_disk`` folder (Arrow IPC stream shards ``data-*.arrow``) into one table."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"GIFT-Eval dataset folder {folder} does not exist; download the data with "
                                "`huggingface-cli download Salesforce/GiftEval --repo-type=dataset --local-dir DIR` "
                                "and pass --data-dir DIR")
    shards = sorted(folder.glob("data-*.arrow")) or sorted(folder.glob("*.arrow"))
    if not shards:
        raise FileNotFoundError(f"no data-*.arrow files in {folder}; expected a Hugging Face save_to_disk folder")
    tables = []
    for shard in shards:
        try:
            with pa.ipc.open_stream(pa.memory_map(str(shard))) as reader:
                tables.append(reader.read_all())
        except pa.ArrowInvalid as err:
            raise ValueError(f"{shard} is not an Arrow IPC stream file ({err}); is the download complete?") from err
    table = pa.concat_tables(tables)
    missing = {"item_id", "target"} - set(table.column_names)
    if missing:
        raise ValueError(f"{folder} lacks the column(s) {sorted(missing)}; found {table.column_names}")
    return table


def univariate_series(table: pa.Table) -> list[tuple[str, np.ndarray]]:
    """(item id, 1-D float64 series) per variate; multivariate targets become ``{id}_dim{k}`` series."""
    series = []
    for item_id, target in zip(table.column("item_id").to_pylist(), table.column("target").to_pylist()):
        values = np.asarray(target, dtype=np.float64)  # None -> NaN
        if values.ndim == 1:
            series.append((str(item_id), values))
        elif values.ndim == 2:
            series.extend((f"{item_id}_dim{k}", row) for k, row in enumerate(values))
        else:
            raise ValueError(f"item {item_id!r}: target has {values.ndim} dimensions; expected 1 or 2")
    return series


def num_windows(config: GiftConfig, min_length: int) -> int:
    """Test windows: 1 for M4, else ``min(max(1, ceil(0.1 * shortest / prediction_length)), 20)``."""
    if config.single_window:
        return 1
    return min(max(1, math.ceil(TEST_SPLIT * min_length / config.prediction_length)), MAX_WINDOWS)


def split_windows(series: list[tuple[str, np.ndarray]], config: GiftConfig):
    """Yield (window index, histories, labels, ids): non-overlapping windows counted back from each end."""
    length = config.prediction_length
    windows = num_windows(config, min(len(s) for _, s in series))
    for w in range(windows):
        offset = (windows - w) * length  # steps from the end to the first forecast step
        ids, histories, labels = [], [], []
        for item_id, values in series:
            cut = len(values) - offset
            if cut < 1:
                continue  # gluonts would pass an empty history; skip instead of forecasting from nothing
            ids.append(item_id)
            histories.append(values[:cut])
            labels.append(values[cut:cut + length])
        yield w, histories, np.stack(labels) if labels else np.zeros((0, length)), ids


def evaluate_config(forecaster, config: GiftConfig, data_dir: str | Path, levels=QUANTILE_LEVELS) -> dict:
    """Forecast every window of one configuration and compute its metrics (one all_results.csv row)."""
    series = univariate_series(read_dataset_folder(Path(data_dir) / config.storage_dir))
    if not series:
        raise ValueError(f"{config.name}: the dataset folder holds no series")
    all_labels, all_quantiles, all_means, scales = [], [], [], []
    for _, histories, labels, _ in split_windows(series, config):
        if not histories:
            continue
        quantiles, mean = forecaster.predict_quantiles(histories, config.prediction_length, list(levels),
                                                       season_length=config.seasonality)
        quantiles, mean = validate_forecast(quantiles, mean, len(histories), config.prediction_length, levels,
                                            name=getattr(forecaster, "name", "model"))
        all_labels.append(labels)
        all_quantiles.append(quantiles)
        all_means.append(mean)
        scales.extend(seasonal_error(h, config.seasonality) for h in histories)
    metrics = gift_eval_metrics(np.concatenate(all_labels), np.concatenate(all_quantiles),
                                np.concatenate(all_means), np.asarray(scales), levels)
    row = {"dataset": config.name, "model": None}
    row.update({f"eval_metrics/{k}": v for k, v in metrics.items()})
    row.update({"domain": config.domain, "num_variates": config.num_variates})
    return row


def model_config_json(model_name: str, **overrides) -> dict:
    """The leaderboard's ``config.json`` for a submission (defaults describe a zero-shot float32 TiRex)."""
    config = {
        "model": model_name, "model_type": "zero-shot", "model_dtype": "float32",
        "model_link": "https://huggingface.co/NX-AI/TiRex", "code_link": "https://github.com/NX-AI/tirex",
        "org": "", "testdata_leakage": "No", "replication_code_available": "Yes",
    }
    config.update(overrides)
    return config


def collect_results(output_dir: str | Path, order: Sequence[str] | None = None, model_name: str | None = None,
                    identity: str | None = None) -> pd.DataFrame:
    """Finished configuration rows under ``output_dir/configs/<model>`` (all models without ``model_name``)
    as an all_results.csv frame; with ``identity``, only rows that this forecaster made."""
    folder = Path(output_dir) / "configs"
    paths = sorted((folder / safe_name(model_name)).glob("*.json") if model_name else folder.glob("*/*.json"))
    rows = [json.loads(p.read_text()) for p in paths]
    rows = [r for r in rows if identity is None or r.get("model_identity") == identity]
    frame = pd.DataFrame(rows, columns=RESULT_COLUMNS)
    if order is not None:
        rank = {name: i for i, name in enumerate(order)}
        frame = frame.sort_values("dataset", key=lambda s: s.map(rank)).reset_index(drop=True)
    return frame


def run_gift_eval(
    model,
    data_dir: str | Path,
    output_dir: str | Path,
    configs: Sequence[str] | None = None,
    model_name: str | None = None,
    config_json: dict | None = None,
    progress: bool = True,
    configs_csv: str | Path | None = None,
) -> pd.DataFrame:
    """Evaluate ``model`` (anything ``make_forecaster`` accepts) on GIFT-Eval configurations.

    Finished configurations of the same model (``OUTPUT_DIR/configs/<model>/*.json``, checked against
    ``forecaster_identity``) are skipped; every finished one is written at once
    and all_results.csv is rewritten, so an interrupted run loses at most the configuration in progress.
    Returns the all_results.csv frame.
    """
    forecaster = make_forecaster(model, name=model_name)
    name = model_name or forecaster.name
    identity = forecaster_identity(forecaster)
    selected = select_configs(configs, configs_csv)
    output_dir = Path(output_dir)
    if not Path(data_dir).is_dir():
        raise FileNotFoundError(f"GIFT-Eval data directory {data_dir} does not exist")
    atomic_write_json(output_dir / "config.json", model_config_json(name, **(config_json or {})))
    order = [c.name for c in load_configs(configs_csv).values()]
    for config in tqdm(selected, desc=f"{name}: GIFT-Eval", disable=not progress):
        path = output_dir / "configs" / safe_name(name) / f"{safe_name(config.name)}.json"  # keyed by model and config
        if load_cached(path, identity) is not None:
            continue
        row = evaluate_config(forecaster, config, data_dir)
        row["model"] = name
        atomic_write_json(path, {**row, "model_identity": identity})
        atomic_write_csv(output_dir / "all_results.csv", collect_results(output_dir, order, name, identity))
    results = collect_results(output_dir, order, name, identity)
    if len(results) < len(selected):
        warnings.warn(f"{len(selected) - len(results)} configurations have no results in {output_dir}")
    atomic_write_csv(output_dir / "all_results.csv", results)
    return results

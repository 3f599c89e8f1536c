"""Output adapters for pandas and GluonTS inputs."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch

from .forecast import forecast_tensors
from .inputs import to_series_list
from .io import ID_CANDIDATES, TARGET_CANDIDATES, TIME_CANDIDATES, parse_timestamps


def level_name(q: float) -> str:
    """Column name of a quantile level, as GluonTS and fev write it: 0.1 -> "0.1"."""
    return f"{q:g}"


def _future_index(index: pd.Index, horizon: int, what: str) -> pd.Index:
    if isinstance(index, pd.DatetimeIndex):
        freq = index.freq or (pd.infer_freq(index) if len(index) >= 3 else None)
        if freq is None:
            raise ValueError(
                f"{what}: cannot infer a frequency from the timestamps (irregular or fewer than 3); "
                "resample to a regular frequency first"
            )
        return pd.date_range(index[-1], periods=horizon + 1, freq=freq)[1:]
    if isinstance(index, pd.PeriodIndex):
        return pd.period_range(index[-1] + 1, periods=horizon, freq=index.freq)
    if isinstance(index, pd.RangeIndex) or pd.api.types.is_integer_dtype(index):
        step = index[1] - index[0] if len(index) > 1 else 1
        return pd.Index(index[-1] + step * np.arange(1, horizon + 1))
    raise ValueError(f"{what}: index of type {type(index).__name__} has no defined future; use a DatetimeIndex")


def forecast_pandas_series(model, series: pd.Series, run: dict) -> pd.DataFrame:
    """A pandas Series -> DataFrame indexed by the future timestamps, columns ``mean`` and one per level."""
    values = to_series_list([series.to_numpy()])
    q, mean = forecast_tensors(model, values, **run)
    index = _future_index(series.index, run["prediction_length"], "series")
    cols = {"mean": mean[0].numpy()}
    cols.update({level_name(lv): q[0, :, j].numpy() for j, lv in enumerate(run["quantile_levels"])})
    return pd.DataFrame(cols, index=index)


def _pick(df: pd.DataFrame, given: str | None, candidates: tuple[str, ...], what: str) -> str:
    if given is not None:
        if given not in df.columns:
            raise ValueError(f"column {given!r} ({what}) not in the DataFrame; columns are {list(df.columns)}")
        return given
    for name in candidates:
        if name in df.columns:
            return name
    raise ValueError(f"no {what} column found (looked for {list(candidates)}); pass {what}_column=...")


def forecast_dataframe(
    model,
    df: pd.DataFrame,
    run: dict,
    id_column: str | None = None,
    timestamp_column: str | None = None,
    target_column: str | None = None,
) -> pd.DataFrame:
    """Long DataFrame (id, timestamp, target) -> long DataFrame of forecasts.

    Output columns: the id column, the timestamp column (future timestamps, at each series' own
    inferred frequency), ``mean`` and one column per quantile level ("0.1", ...).
    """
    id_col = _pick(df, id_column, ID_CANDIDATES, "id")
    ts_col = _pick(df, timestamp_column, TIME_CANDIDATES, "timestamp")
    target_col = _pick(df, target_column, TARGET_CANDIDATES, "target")
    if df.empty:
        raise ValueError("the DataFrame is empty")
    if not pd.api.types.is_numeric_dtype(df[target_col]):
        raise TypeError(f"target column {target_col!r} is not numeric (dtype {df[target_col].dtype})")
    timestamps = parse_timestamps(df[ts_col])
    if timestamps.isna().any():
        raise ValueError(f"timestamp column {ts_col!r} has values that are not timestamps")
    frame = df.assign(**{ts_col: timestamps}).sort_values([id_col, ts_col], kind="stable")
    if frame.duplicated([id_col, ts_col]).any():
        raise ValueError(f"duplicate timestamps within a series in column {ts_col!r}; aggregate them first")
    ids, contexts, futures = [], [], []
    for item, group in frame.groupby(id_col, sort=False):
        index = pd.DatetimeIndex(group[ts_col])
        futures.append(_future_index(index, run["prediction_length"], f"series {item!r}"))
        ids.append(item)
        contexts.append(group[target_col].to_numpy(dtype=np.float64))
    q, mean = forecast_tensors(model, to_series_list(contexts), **run)
    h = run["prediction_length"]
    out = {
        id_col: np.repeat(np.asarray(ids, dtype=object), h),
        ts_col: np.concatenate([f.to_numpy() for f in futures]),
        "mean": mean.reshape(-1).numpy(),
    }
    for j, lv in enumerate(run["quantile_levels"]):
        out[level_name(lv)] = q[:, :, j].reshape(-1).numpy()
    return pd.DataFrame(out)


def forecast_gluonts(model, dataset: Any, run: dict) -> list:
    """A GluonTS dataset (entries with ``target`` and ``start``) -> list of ``QuantileForecast``."""
    from gluonts.model.forecast import QuantileForecast

    entries = list(dataset)
    targets = []
    for i, entry in enumerate(entries):
        target = np.asarray(entry["target"], dtype=np.float64)
        if target.ndim != 1:
            raise ValueError(
                f"dataset entry {i} has a {target.ndim}-D target; convert multivariate data to univariate first"
            )
        targets.append(target)
    q, mean = forecast_tensors(model, to_series_list(targets), **run)
    keys = [level_name(lv) for lv in run["quantile_levels"]] + ["mean"]
    forecasts = []
    for i, entry in enumerate(entries):
        arrays = torch.cat([q[i].T, mean[i].unsqueeze(0)]).numpy()
        start = entry.get("start")
        start = pd.Period(start, freq=entry.get("freq")) if start is not None and not isinstance(start, pd.Period) else start
        forecasts.append(
            QuantileForecast(
                arrays,
                start_date=start + len(targets[i]) if start is not None else pd.Period("2000-01-01", "D"),
                forecast_keys=keys,
                item_id=entry.get("item_id"),
            )
        )
    return forecasts

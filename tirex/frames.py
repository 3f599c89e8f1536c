"""Output adapters for pandas and GluonTS inputs."""

from __future__ import annotations

from dataclasses import dataclass
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


def _future_index(index: pd.Index, horizon: int, what: str, freq=None) -> pd.Index:
    if isinstance(index, pd.DatetimeIndex):
        if freq is None:
            freq = index.freq or (pd.infer_freq(index) if len(index) >= 3 else None)
        if freq is None:
            raise ValueError(
                f"{what}: cannot infer a frequency from the timestamps (irregular or fewer than 3); "
                "resample to a regular frequency first, or pass freq="
            )
        step = pd.tseries.frequencies.to_offset(freq)
        return pd.date_range(index[-1] + step, periods=horizon, freq=step)  # the first step after the data
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


@dataclass
class LongSeries:
    """The series of a long DataFrame, validated: ``ids[i]`` owns ``series[i]`` and ``futures[i]``
    (its next ``prediction_length`` timestamps)."""

    id_column: str
    timestamp_column: str
    ids: list
    series: list[torch.Tensor]
    futures: list[pd.Index]


def long_series(
    df: pd.DataFrame,
    prediction_length: int,
    id_column: str | None = None,
    timestamp_column: str | None = None,
    target_column: str | None = None,
    freq=None,
) -> LongSeries:
    """Split a long DataFrame (id, timestamp, target) into validated series and their future timestamps.

    ``freq`` (a pandas frequency such as "D" or "15min") sets the step of the future timestamps;
    by default each series' own frequency is inferred from its timestamps.
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
        futures.append(_future_index(index, prediction_length, f"series {item!r}", freq))
        ids.append(item)
        contexts.append(group[target_col].to_numpy(dtype=np.float64))
    return LongSeries(id_col, ts_col, ids, to_series_list(contexts), futures)


def long_forecast_frame(data: LongSeries, quantiles: torch.Tensor, mean: torch.Tensor, levels) -> pd.DataFrame:
    """Forecasts of ``data``'s series (quantiles (n, H, levels), mean (n, H)) as a long DataFrame:
    the id column, the timestamp column (future timestamps), ``mean`` and one column per level."""
    h = mean.shape[1]
    out = {
        data.id_column: np.repeat(np.asarray(data.ids, dtype=object), h),
        data.timestamp_column: np.concatenate([f.to_numpy() for f in data.futures]),
        "mean": mean.reshape(-1).numpy(),
    }
    for j, lv in enumerate(levels):
        out[level_name(lv)] = quantiles[:, :, j].reshape(-1).numpy()
    return pd.DataFrame(out)


def forecast_dataframe(
    model,
    df: pd.DataFrame,
    run: dict,
    id_column: str | None = None,
    timestamp_column: str | None = None,
    target_column: str | None = None,
    freq=None,
) -> pd.DataFrame:
    """Long DataFrame (id, timestamp, target) -> long DataFrame of forecasts.

    Output columns: the id column, the timestamp column (future timestamps, at each series' own
    inferred frequency, or ``freq``), ``mean`` and one column per quantile level ("0.1", ...).
    """
    data = long_series(df, run["prediction_length"], id_column, timestamp_column, target_column, freq)
    q, mean = forecast_tensors(model, data.series, **run)
    return long_forecast_frame(data, q, mean, run["quantile_levels"])


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

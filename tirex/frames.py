"""Output adapters for pandas and GluonTS inputs; their data are validated by ``tirex.io`` / ``tirex.validation``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from .forecast import forecast_tensors
from .io import InputError, future_timestamps, validate_table
from .validation import as_float_array, to_series_list


def level_name(q: float) -> str:
    """Column name of a quantile level, as GluonTS and fev write it: 0.1 -> "0.1"."""
    return f"{q:g}"


def _columns(q: torch.Tensor, mean: torch.Tensor, levels) -> dict[str, np.ndarray]:
    cols = {"mean": mean.reshape(-1).numpy()}
    cols.update({level_name(lv): q[:, :, j].reshape(-1).numpy() for j, lv in enumerate(levels)})
    return cols


def forecast_pandas_series(model, series: pd.Series, run: dict, freq: Any = None) -> pd.DataFrame:
    """A pandas Series -> DataFrame indexed by the future timestamps, columns ``mean`` and one per level.

    The index is the time axis, validated like a table's timestamp column (``tirex.io``): a
    DatetimeIndex (gaps become NaN), a PeriodIndex, dates as text, or integer steps (a RangeIndex).
    """
    index = series.index
    periods = isinstance(index, pd.PeriodIndex)
    origin = int(index.asi8.min()) if periods and len(index) else 0
    axis = pd.Index(index.asi8 - origin) if periods else index  # periods: ordinals from 0, an integer axis
    frame = pd.DataFrame({"timestamp": axis, "target": as_float_array(series.to_numpy(), "series")})
    table = validate_table(frame, "series", "long", None, "timestamp", "target", freq=freq)
    future = table.future(run["prediction_length"])[0]
    q, mean = forecast_tensors(model, to_series_list([table.frame["target"].to_numpy()]), **run)
    if periods:
        future = pd.PeriodIndex.from_ordinals(future.to_numpy() + origin, freq=index.freq)
    return pd.DataFrame(_columns(q, mean, run["quantile_levels"]), index=future)


@dataclass
class LongSeries:
    """The series of a long (or wide) DataFrame, validated: ``ids[i]`` owns ``series[i]`` and ``futures[i]``
    (its next ``prediction_length`` timestamps). ``id_column`` is None for a table without ids."""

    id_column: Any
    timestamp_column: Any
    ids: list
    series: list[torch.Tensor]
    futures: list[pd.Index]


def long_series(
    df: pd.DataFrame,
    prediction_length: int,
    id_column: str | None = None,
    timestamp_column: str | None = None,
    target_column: str | None = None,
    layout: str = "auto",
    freq: Any = None,
    what: str = "DataFrame",
) -> LongSeries:
    """Validate a table with ``tirex.io.validate_table`` (exactly as the command line does with a file:
    columns and layout detected or given, gaps filled with NaN, rows without an id or with duplicate
    timestamps refused) and split it into series and their future timestamps. Every entry point that
    takes tables (``model.forecast``, the server's timestamped form) goes through here."""
    table = validate_table(df, what, layout, id_column, timestamp_column, target_column, freq)
    futures = table.future(prediction_length)  # before the model runs: a bad horizon fails fast
    groups = table.frame.groupby("item_id", sort=False)
    series = to_series_list([g["target"].to_numpy() for _, g in groups])
    return LongSeries(table.id_column, table.timestamp_column, list(groups.groups), series, futures)


def long_forecast_frame(data: LongSeries, quantiles: torch.Tensor, mean: torch.Tensor, levels) -> pd.DataFrame:
    """Forecasts of ``data``'s series (quantiles (n, H, levels), mean (n, H)) as a long DataFrame: the id
    column (``item_id`` without one), the timestamp column (future timestamps), ``mean`` and one column
    per quantile level ("0.1", ...)."""
    h = mean.shape[1]
    out = {
        data.id_column if data.id_column is not None else "item_id": np.repeat(np.asarray(data.ids, dtype=object), h),
        data.timestamp_column: np.concatenate([f.to_numpy() for f in data.futures]),
    }
    out.update(_columns(quantiles, mean, levels))
    return pd.DataFrame(out)


def forecast_dataframe(
    model,
    df: pd.DataFrame,
    run: dict,
    id_column: str | None = None,
    timestamp_column: str | None = None,
    target_column: str | None = None,
    layout: str = "auto",
    freq: Any = None,
) -> pd.DataFrame:
    """A long (or wide) DataFrame -> long DataFrame of forecasts (see ``long_series`` and ``long_forecast_frame``)."""
    data = long_series(df, run["prediction_length"], id_column, timestamp_column, target_column, layout, freq)
    q, mean = forecast_tensors(model, data.series, **run)
    return long_forecast_frame(data, q, mean, run["quantile_levels"])


def forecast_gluonts(model, dataset: Any, run: dict) -> list:
    """A GluonTS dataset (entries with ``target`` and ``start``) -> list of ``QuantileForecast``."""
    from gluonts.model.forecast import QuantileForecast

    entries = list(dataset)
    targets = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or "target" not in entry:
            raise InputError(f"dataset entry {i} is not a dict with a 'target'")
        target = as_float_array(entry["target"], f"dataset entry {i}")
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


__all__ = ["LongSeries", "forecast_dataframe", "long_forecast_frame", "long_series", "forecast_gluonts", "forecast_pandas_series", "future_timestamps", "level_name"]

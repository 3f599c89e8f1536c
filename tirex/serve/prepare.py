"""From a parsed request body to validated series (through the package's input layer) and back to JSON.

Every value check here is the package's own: ``tirex.inputs.to_series_list`` for the reference form,
``tirex.frames.long_series`` for the rich form (the path ``model.forecast`` takes for a long
DataFrame), ``tirex.validation.check_run`` for the options. This module only adds the server's limits
and says which field of the request an error belongs to.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from ..validation import check_run
from ..frames import LongSeries, level_name, long_series
from ..inputs import check_prediction_length, to_series_list
from .schemas import ForecastRequest
from .settings import ServerSettings


class RequestError(Exception):
    """A problem with the request, answered with ``status`` and a message naming the field at ``loc``."""

    def __init__(self, loc: Sequence, message: str, status: int = 422, kind: str = "value_error"):
        super().__init__(message)
        self.loc = ["body", *loc] if loc and loc[0] != "body" else list(loc)
        self.message = message
        self.status = status
        self.kind = kind


@contextmanager
def field(*loc):
    """Report the package's ValueError / TypeError as an error of the request field ``loc``."""
    try:
        yield
    except (ValueError, TypeError) as exc:
        raise RequestError(loc, str(exc), kind="type_error" if isinstance(exc, TypeError) else "value_error") from exc


@dataclass
class Prepared:
    """A validated request: the series to forecast and how to answer."""

    series: list[torch.Tensor]
    prediction_length: int
    quantile_levels: tuple[float, ...]
    rollout_steps: int
    frame: LongSeries | None = None  # rich form only
    order: list[int] | None = None  # rich form: request position -> row of ``frame``
    item_ids: list | None = None

    def reference_answer(self, quantiles: torch.Tensor, mean: torch.Tensor, with_quantiles: bool):
        """The reference server's answer: (series, steps) means or (series, steps, levels) quantiles."""
        return quantiles.tolist() if with_quantiles else mean.tolist()

    def rich_answer(self, quantiles: torch.Tensor, mean: torch.Tensor, with_quantiles: bool) -> dict:
        forecasts = []
        for item_id, row in zip(self.item_ids, self.order):
            entry = {
                "item_id": item_id,
                "timestamps": [t.isoformat() for t in self.frame.futures[row]],
                "mean": mean[row].tolist(),
            }
            if with_quantiles:
                entry["quantiles"] = {level_name(lv): quantiles[row, :, j].tolist()
                                      for j, lv in enumerate(self.quantile_levels)}
            forecasts.append(entry)
        return {"prediction_length": self.prediction_length, "quantile_levels": list(self.quantile_levels),
                "forecasts": forecasts}

    def answer(self, quantiles: torch.Tensor, mean: torch.Tensor, with_quantiles: bool):
        if self.frame is None:
            return self.reference_answer(quantiles, mean, with_quantiles)
        return self.rich_answer(quantiles, mean, with_quantiles)


def prepare(body: ForecastRequest, model, settings: ServerSettings) -> Prepared:
    """Check ``body`` against the server's limits and the package's input layer."""
    with field("prediction_length"):
        horizon = check_prediction_length(body.prediction_length)
    if horizon > settings.max_horizon:
        raise RequestError(["prediction_length"], f"prediction_length is {horizon}; this server forecasts at most "
                                                  f"{settings.max_horizon} steps per request")
    if body.quantile_levels is not None and len(body.quantile_levels) > settings.max_quantile_levels:
        raise RequestError(["quantile_levels"], f"{len(body.quantile_levels)} quantile levels; at most "
                                                f"{settings.max_quantile_levels} per request")
    with field("quantile_levels"):
        run = check_run(model, horizon, body.quantile_levels)
    with field("rollout_steps"):
        run = check_run(model, horizon, run["quantile_levels"], rollout_steps=body.rollout_steps)
    rows = body.context if body.context is not None else [item.values for item in body.series]
    name = "context" if body.context is not None else "series"
    if len(rows) > settings.max_series:
        raise RequestError([name], f"{len(rows)} series; this server takes at most {settings.max_series} per "
                                   "request (split the request)")
    for i, values in enumerate(rows):
        if len(values) > settings.max_context_length:
            loc = [name, i] if body.context is not None else [name, i, "values"]
            raise RequestError(loc, f"series {i} has {len(values)} values; this server takes at most "
                                    f"{settings.max_context_length} per series (only the last "
                                    f"{model.config.context_length} are read)")
    options = dict(prediction_length=horizon, quantile_levels=run["quantile_levels"],
                   rollout_steps=run["rollout_steps"])
    if body.context is not None:
        with field("context"):
            series = to_series_list([np.array(row, dtype=np.float64) for row in body.context])
        return Prepared(series, **options)
    return _prepare_rich(body, horizon, options)


def _prepare_rich(body: ForecastRequest, horizon: int, options: dict) -> Prepared:
    """The rich form as a long DataFrame, validated by ``tirex.frames.long_series``."""
    keys = [str(item.item_id) for item in body.series]
    seen: dict[str, int] = {}
    for j, key in enumerate(keys):
        if key in seen:
            raise RequestError(["series", j, "item_id"], f"item_id {key!r} is also the id of series {seen[key]}; "
                                                         "ids must be unique")
        seen[key] = j
    if body.freq is not None:
        try:
            pd.tseries.frequencies.to_offset(body.freq)
        except ValueError:
            raise RequestError(["freq"], f"unknown frequency {body.freq!r}; use a pandas frequency such as "
                                         "'D', 'h', '15min', 'W', 'MS'") from None
    stamps = []
    for j, item in enumerate(body.series):
        if item.start is None:
            stamps.append(np.asarray(item.timestamps, dtype=object))
            continue
        if body.freq is None:
            raise RequestError(["series", j, "start"], "a series given by `start` needs `freq` (e.g. 'D', 'h')")
        with field("series", j, "start"):
            stamps.append(pd.date_range(item.start, periods=len(item.values), freq=body.freq).astype(object))
    frame = pd.DataFrame({
        "item_id": np.repeat(np.asarray(keys, dtype=object), [len(item.values) for item in body.series]),
        "timestamp": np.concatenate(stamps),
        "target": np.concatenate([np.array(item.values, dtype=np.float64) for item in body.series]),
    })
    with field("series"):
        data = long_series(frame, horizon, "item_id", "timestamp", "target", layout="long", freq=body.freq)
    row_of = {key: row for row, key in enumerate(data.ids)}
    return Prepared(data.series, **options, frame=data, order=[row_of[key] for key in keys],
                    item_ids=[item.item_id for item in body.series])

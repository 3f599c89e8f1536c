"""fracast-0 (PyPI ``fracast``, bundled weights) as a harness model, for side-by-side comparisons."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .forecasters import StatsForecaster


class FracastForecaster:
    """Runs ``fracast.FracastModel`` (85k parameters, FP32 weights by default) on batches of histories.

    Histories are left-padded with NaN to a common length (fracast masks non-finite values). A series
    with too few observations for fracast falls back to Seasonal Naive, as the baselines do.
    """

    def __init__(self, weights: str = "fp32", batch_size: int = 256, name: str = "fracast_0") -> None:
        try:
            from fracast import FracastModel
            from fracast.inference import _MIN_FINITE
        except ImportError as exc:
            raise ImportError("the fracast baseline needs the package: pip install fracast") from exc
        self.model = FracastModel.from_pretrained(weights=weights)
        self.min_finite = int(_MIN_FINITE)
        self.batch_size = batch_size
        self.name = name

    def predict_quantiles(self, series: Sequence[np.ndarray], horizon: int, levels: Sequence[float], season_length: int = 1):
        if [round(q, 6) for q in levels] != [round(q, 6) for q in self.model.quantiles]:
            raise ValueError(f"fracast predicts levels {self.model.quantiles}; the task asks for {list(levels)}")
        n = len(series)
        quantiles = np.empty((n, horizon, len(levels)), dtype=np.float64)
        ok = [i for i, s in enumerate(series) if np.isfinite(np.asarray(s, float)).sum() >= self.min_finite]
        for start in range(0, len(ok), self.batch_size):
            idx = ok[start:start + self.batch_size]
            rows = [np.asarray(series[i], np.float32)[-self.model.context_length:] for i in idx]
            width = max(len(r) for r in rows)
            batch = np.full((len(rows), width), np.nan, np.float32)
            for j, r in enumerate(rows):
                batch[j, width - len(r):] = r
            quantiles[idx] = self.model.forecast_batch(batch, horizon=horizon)
        rest = [i for i in range(n) if i not in set(ok)]
        if rest:
            q, _ = StatsForecaster("seasonal_naive").predict_quantiles([series[i] for i in rest], horizon, levels, season_length)
            quantiles[rest] = q
        quantiles = np.sort(quantiles, axis=-1)
        median = quantiles[..., int(np.argmin(np.abs(np.asarray(levels) - 0.5)))]
        return quantiles, median

"""From the model's quantiles to what a forecast returns, for every entry point (``forecast``, streams, the
torch-free ``tirex.lite``): sorted along the level, other levels interpolated, kept on the side of 0 of the
history where asked, the power-of-two factor multiplied back in float64, checked finite, float32 where every
value fits. numpy only; the guarantees are listed in ``tirex.forecast``'s docstring.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from .inputs import as_numpy
from .quantiles import interpolate_quantiles

_F32 = np.finfo(np.float32)


def sign_bounds(series: Any) -> tuple[float, float]:
    """(lower, upper) bounds that keep forecasts on the side of 0 where the observed history lies."""
    values = as_numpy(series)
    observed = values[~np.isnan(values)]
    if observed.size == 0:
        return -math.inf, math.inf
    return (0.0 if bool((observed >= 0).all()) else -math.inf), (0.0 if bool((observed <= 0).all()) else math.inf)


def finish_batch(q: np.ndarray, model_levels: Sequence[float], levels: Sequence[float], median_index: int,
                 factors: np.ndarray, keep_sign_of: list | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(quantiles (n, H, len(levels)), median (n, H)), float64 in data units, from one batch's float32 model
    quantiles ``q`` (n, H, model levels) of series divided by ``factors`` (n,). ``keep_sign_of``: the batch's
    series, whose forecasts are clipped at 0 where the history lies on one side of it."""
    q = np.sort(q, axis=-1)  # monotone rearrangement (tirex.forecast's docstring)
    mean = q[..., median_index]
    q = interpolate_quantiles(q, model_levels, levels)
    if keep_sign_of is not None:
        bounds = np.array([sign_bounds(s) for s in keep_sign_of], dtype=q.dtype).reshape(-1, 1, 2)
        q = np.maximum(np.minimum(q, bounds[..., 1:]), bounds[..., :1])
        mean = np.maximum(np.minimum(mean, bounds[:, :, 1]), bounds[:, :, 0])
    factors = np.asarray(factors, dtype=np.float64).reshape(-1, 1)
    with np.errstate(over="ignore"):  # a series near float64's limit: check_finite names it
        return q.astype(np.float64) * factors[..., None], mean.astype(np.float64) * factors


def check_finite(quantiles: np.ndarray, series: list) -> None:
    """Raise where a series' forecast is not finite, saying why (its magnitude, or the model's weights)."""
    bad = ~np.isfinite(quantiles.reshape(quantiles.shape[0], -1)).all(axis=1)
    if not bad.any():
        return
    i = int(np.flatnonzero(bad)[0])
    values = as_numpy(series[i])
    finite = values[np.isfinite(values)]
    peak = float(np.abs(finite).max()) if finite.size else 0.0
    if peak > 1e300:
        raise ValueError(f"the forecast of series {i} overflows float64: its values (up to {peak:.3g}) are too close to "
                         "float64's limit; divide the series by a large constant and multiply the forecast back")
    raise RuntimeError(f"the model produced a non-finite forecast for series {i}; its weights may hold NaN/inf "
                       "(check them with torch.isfinite(p).all() for p in model.parameters())")


def fits_float32(*arrays: np.ndarray) -> bool:
    """Whether every value fits float32's normal range (or is 0)."""
    for values in arrays:
        magnitude = np.abs(values)
        if bool((magnitude > _F32.max).any() or ((magnitude < _F32.tiny) & (magnitude > 0)).any()):
            return False
    return True


def finish(quantiles: list[np.ndarray], means: list[np.ndarray], order: list[int],
           series: list) -> tuple[np.ndarray, np.ndarray]:
    """The batches' ``finish_batch`` results, in the order of ``order`` (series index per row), back in the
    input's order; checked finite; float32 where every value fits, else float64."""
    q, mean = np.concatenate(quantiles), np.concatenate(means)
    if order != list(range(len(order))):
        inverse = np.empty(len(order), dtype=np.int64)
        inverse[np.asarray(order)] = np.arange(len(order))
        q, mean = q[inverse], mean[inverse]
    check_finite(q, series)
    if fits_float32(q, mean):
        return q.astype(np.float32), mean.astype(np.float32)
    return q, mean

"""Quantile levels other than the model's own: interpolation inside, normal-tail extrapolation outside (numpy)."""

from __future__ import annotations

import bisect
from statistics import NormalDist
from typing import Sequence

import numpy as np

from .validation import check_quantile_levels

_NORMAL = NormalDist()


def check_levels(levels: Sequence[float]) -> tuple[float, ...]:
    """Validate user-requested quantile levels (``tirex.validation.check_quantile_levels``)."""
    return check_quantile_levels(levels)


def interpolate_quantiles(
    values: np.ndarray, model_levels: Sequence[float], levels: Sequence[float]
) -> np.ndarray:
    """Quantiles at ``levels`` from quantiles at ``model_levels``.

    The model's quantiles are sorted first (``forecast`` has already done so; sorting never makes
    the quantile loss worse), so the result is monotone in the level. Levels inside the model's
    range are interpolated linearly in the level; levels outside are extrapolated along a normal
    tail: ``x(q) = x(q_edge) + (z(q) - z(q_edge)) * slope``, where the slope (value per unit of normal
    z-score) is taken from the two outermost model levels.

    Args:
        values: (..., len(model_levels)).
    Returns:
        (..., len(levels)).
    """
    model_levels = list(model_levels)
    srt = np.sort(values, axis=-1)
    if list(levels) == model_levels:
        return srt
    outs = []
    for q in levels:
        if q in model_levels:
            outs.append(srt[..., model_levels.index(q)])
            continue
        if q < model_levels[0] or q > model_levels[-1]:
            lo, hi = (0, 1) if q < model_levels[0] else (-2, -1)
            z = [_NORMAL.inv_cdf(model_levels[i]) for i in (lo, hi)]
            slope = (srt[..., hi] - srt[..., lo]) / (z[1] - z[0])
            edge = lo if q < model_levels[0] else hi
            z_edge = _NORMAL.inv_cdf(model_levels[edge])
            outs.append(srt[..., edge] + (_NORMAL.inv_cdf(q) - z_edge) * slope)
            continue
        j = bisect.bisect_left(model_levels, q)
        w = (q - model_levels[j - 1]) / (model_levels[j] - model_levels[j - 1])
        outs.append(srt[..., j - 1] + w * (srt[..., j] - srt[..., j - 1]))
    out = np.stack(outs, axis=-1)
    # rounding can put an interpolated value a unit in the last place past its neighbour (e.g. between two
    # equal quantiles): sorting in the order of the levels keeps the result monotone in the level
    order = sorted(range(len(levels)), key=lambda i: levels[i])
    out[..., order] = np.sort(out[..., order], axis=-1)
    return out

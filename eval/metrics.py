"""GIFT-Eval metrics, computed over all points of all windows of one configuration at once.

Same definitions as GluonTS's ``evaluate_forecasts`` with ``axis=None`` (cross-checked in
``tests/test_eval_metrics.py``): NaN labels are masked out of every mean and sum; each forecast's MASE and
MSIS are scaled by the seasonal error of its own history. Like GluonTS's masked arrays, a ratio whose
denominator is zero or undefined (zero label in MAPE, constant or too short history in MASE / MSIS) is left
out of that metric's mean instead of becoming infinite.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

GIFT_METRICS = (
    "MSE[mean]", "MSE[0.5]", "MAE[0.5]", "MASE[0.5]", "MAPE[0.5]", "sMAPE[0.5]", "MSIS", "RMSE[mean]",
    "NRMSE[mean]", "ND[0.5]", "mean_weighted_sum_quantile_loss",
)
TAIL_TOL = 1e-8  # the tolerance GluonTS's exponential tail uses inside its logarithms


def _mean_ratio(numerator: np.ndarray, denominator: np.ndarray) -> float:
    """Mean of numerator / denominator over the points whose denominator is finite and non-zero."""
    valid = np.isfinite(denominator) & (denominator != 0)
    return float(np.mean(numerator[valid] / denominator[valid])) if valid.any() else float("nan")


def seasonal_error(history: np.ndarray, season_length: int) -> float:
    """Mean |y_t - y_{t-m}| over a history (NaN pairs ignored); m -> 1 if the history is shorter than m.

    >>> seasonal_error(np.array([1.0, 2.0, 4.0]), 1)
    1.5
    """
    history = np.asarray(history, dtype=np.float64)
    m = season_length if season_length <= len(history) else 1
    diffs = np.abs(history[m:] - history[:-m])
    diffs = diffs[np.isfinite(diffs)]
    return float(diffs.mean()) if diffs.size else float("nan")


def quantile_at(quantiles: np.ndarray, levels: Sequence[float], level: float) -> np.ndarray:
    """Quantile ``level`` from forecasts at ``levels`` (last axis), as GluonTS's ``QuantileForecast`` reads it.

    Inside the outermost levels: linear interpolation. Beyond them: exponential tails fitted through the two
    outermost levels on each side, i.e. q(a) = q_1 + (q_1 - q_0) * log(a / l_1) / log(l_1 / l_0) on the left
    (mirrored in 1 - a on the right).
    """
    levels = list(levels)
    if level in levels:
        return quantiles[..., levels.index(level)]
    left_edge = max(levels[0], min(levels[1], 0.1))
    right_edge = min(levels[-1], max(levels[-2], 0.9))
    tol = TAIL_TOL
    if level <= left_edge:
        slope = (quantiles[..., 1] - quantiles[..., 0]) / np.log((levels[1] + tol) / (levels[0] + tol) + tol)
        return slope * np.log((level + tol) / (levels[1] + tol) + tol) + quantiles[..., 1]
    if level >= right_edge:
        slope = (quantiles[..., -1] - quantiles[..., -2]) / np.log((1 - levels[-2] + tol) / (1 - levels[-1] + tol)
                                                                   + tol)
        return slope * np.log((1 - levels[-2] + tol) / (1 - level + tol) + tol) + quantiles[..., -2]
    upper = next(i for i, lv in enumerate(levels) if level <= lv)
    weight = (level - levels[upper - 1]) / (levels[upper] - levels[upper - 1])
    return quantiles[..., upper - 1] + weight * (quantiles[..., upper] - quantiles[..., upper - 1])


def gift_eval_metrics(
    labels: np.ndarray,
    quantiles: np.ndarray,
    mean: np.ndarray,
    seasonal_errors: np.ndarray,
    levels: Sequence[float],
    msis_alpha: float = 0.05,
) -> dict[str, float]:
    """All GIFT-Eval metrics for one configuration.

    Args:
        labels: (n_forecasts, horizon) true values, NaN = missing (masked).
        quantiles: (n_forecasts, horizon, n_levels) forecasts at ``levels`` (must include 0.5).
        mean: (n_forecasts, horizon) mean forecasts.
        seasonal_errors: (n_forecasts,) seasonal error of each forecast's history.
    Returns:
        {metric name: value} with the names of ``GIFT_METRICS``.
    """
    levels = list(levels)
    if 0.5 not in levels:
        raise ValueError("GIFT-Eval metrics need the 0.5 quantile among the levels")
    labels = np.asarray(labels, dtype=np.float64)
    observed = np.isfinite(labels)
    if not observed.any():
        raise ValueError("all labels are missing; nothing to score")
    y = labels[observed]
    median = quantiles[..., levels.index(0.5)][observed]
    point_mean = np.asarray(mean, dtype=np.float64)[observed]
    scale = np.broadcast_to(np.asarray(seasonal_errors, dtype=np.float64)[:, None], labels.shape)[observed]
    abs_error = np.abs(y - median)
    abs_y = np.abs(y)

    lower = quantile_at(quantiles, levels, msis_alpha / 2)[observed]
    upper = quantile_at(quantiles, levels, 1 - msis_alpha / 2)[observed]
    interval_score = (upper - lower + 2 / msis_alpha * (lower - y) * (y < lower)
                      + 2 / msis_alpha * (y - upper) * (y > upper))

    quantile_losses = []
    for i, q in enumerate(levels):
        forecast = quantiles[..., i][observed]
        loss = 2 * np.abs((y - forecast) * ((forecast >= y) - q))
        quantile_losses.append(loss.sum() / abs_y.sum())

    with np.errstate(divide="ignore", invalid="ignore"):
        mse_mean = float(np.mean((y - point_mean) ** 2))
        return {
            "MSE[mean]": mse_mean,
            "MSE[0.5]": float(np.mean(abs_error ** 2)),
            "MAE[0.5]": float(np.mean(abs_error)),
            "MASE[0.5]": _mean_ratio(abs_error, scale),
            "MAPE[0.5]": _mean_ratio(abs_error, abs_y),
            "sMAPE[0.5]": _mean_ratio(2 * abs_error, abs_y + np.abs(median)),
            "MSIS": _mean_ratio(interval_score, scale),
            "RMSE[mean]": float(np.sqrt(mse_mean)),
            "NRMSE[mean]": float(np.sqrt(mse_mean) / np.mean(abs_y)),
            "ND[0.5]": float(abs_error.sum() / abs_y.sum()),
            "mean_weighted_sum_quantile_loss": float(np.mean(quantile_losses)),
        }

"""``forecast``: validation -> batched multi-patch rollout -> monotone quantiles -> output adapters.

Guarantees of every output (arrays, frames, GluonTS, streams):

- quantiles never decrease with the level. The model's quantiles are sorted along the level axis
  (a monotone rearrangement): for every outcome y the summed pinball loss of sorted quantiles is at
  most that of the unsorted ones (swapping a crossed pair q_i > q_j at levels a < b lowers it by
  (q_i - q_j)(b - a)), so the weighted quantile loss can only improve. ``mean`` is the median of the
  sorted quantiles;
- finite values: a forecast that is not finite raises instead of being returned;
- values of any magnitude: each series is divided by a power of two (exact) before the model sees it
  and multiplied back in float64; results are float32, or float64 when a value does not fit float32;
- ``keep_sign=True``: a series whose observed history is all >= 0 (or all <= 0) gets forecasts
  clipped at 0, so they stay on that side (counts, prices, irradiance). Clipping moves a quantile
  towards any outcome of that sign, so for such outcomes it never worsens the loss either.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch

from .rollout import forecast_batches
from .validation import check_output_type, check_run, to_series_list

if TYPE_CHECKING:
    from .model import TiRexModel


def _is_dataframe(obj) -> bool:
    return type(obj).__name__ == "DataFrame" and hasattr(obj, "groupby")


def _is_pandas_series(obj) -> bool:
    return type(obj).__name__ == "Series" and hasattr(obj, "index") and hasattr(obj, "to_numpy")


def _is_gluonts_dataset(obj) -> bool:
    if isinstance(obj, (list, tuple)) and obj and all(isinstance(e, dict) and "target" in e for e in obj):
        return True
    module = type(obj).__module__ or ""
    return module.startswith("gluonts") and hasattr(obj, "__iter__")


def forecast_tensors(
    model: "TiRexModel",
    series: list[torch.Tensor],
    prediction_length: int,
    quantile_levels: Sequence[float],
    batch_size: int = 256,
    rollout_steps: int = 1,
    max_masked_fraction: float | None = 0.5,
    progress: bool | None = False,
    keep_sign: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The core loop on validated series (``to_series_list``'s output).

    Returns quantiles (n, H, levels), monotone in the level, and the median (n, H); float32, or float64
    when a value does not fit float32 (see the module docstring).
    """
    device = next(model.parameters()).device

    def rollout_batch(context, *args):
        return model.rollout(torch.from_numpy(context).to(device), *args).cpu().numpy()

    quantiles, means = forecast_batches(series, model.config, rollout_batch, prediction_length, quantile_levels,
                                        batch_size, rollout_steps, max_masked_fraction, progress, keep_sign,
                                        early_cuts=device.type == "cpu")
    return torch.from_numpy(quantiles), torch.from_numpy(means)


def forecast(
    model: "TiRexModel",
    context: Any,
    prediction_length: int,
    quantile_levels: Sequence[float] | None = None,
    batch_size: int = 256,
    rollout_steps: int = 1,
    max_masked_fraction: float | None = 0.5,
    output_type: str | None = None,
    progress: bool | None = None,
    keep_sign: bool = False,
    **table_options,
):
    """Forecast ``prediction_length`` steps after each series in ``context``.

    See ``TiRexModel.forecast`` for the accepted inputs and outputs. Every setting and the data are
    validated (``tirex.validation``, ``tirex.io``) before any model work.
    """
    run = check_run(model, prediction_length, quantile_levels, batch_size, rollout_steps, max_masked_fraction,
                    progress, keep_sign)
    output_type = check_output_type(output_type)
    if _is_dataframe(context):
        from .frames import forecast_dataframe

        return forecast_dataframe(model, context, run, **table_options)
    if _is_pandas_series(context):
        from .frames import forecast_pandas_series

        return forecast_pandas_series(model, context, run, **table_options)
    if table_options:
        raise TypeError(f"unexpected keyword arguments {sorted(table_options)} (only for pandas inputs)")
    if _is_gluonts_dataset(context):
        from .frames import forecast_gluonts

        return forecast_gluonts(model, context, run)
    quantiles, mean = forecast_tensors(model, to_series_list(context), **run)
    if output_type is None:
        output_type = "numpy" if isinstance(context, np.ndarray) else "torch"
    if output_type == "numpy":
        return quantiles.numpy(), mean.numpy()
    return quantiles, mean

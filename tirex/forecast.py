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

from .inputs import long_run_progress, pad_batch, plan_batches, power_of_two_scale
from .outputs import finish, finish_batch
from .validation import (
    check_max_masked_fraction,
    check_output_type,
    check_positive_int,
    check_prediction_length,
    check_quantile_levels,
    to_series_list,
)

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
    cfg = model.config
    device = next(model.parameters()).device
    order, bounds = plan_batches(series, cfg.context_length, cfg.patch_size, batch_size,
                                 early_cuts=device.type == "cpu")
    bar = long_run_progress(prediction_length, cfg.patch_size, cfg.context_length, rollout_steps, len(bounds), progress)
    # series of similar length go together: a batch's shared empty (padded) start is skipped
    ordered = [series[i] for i in order]
    quantiles, means = [], []
    try:
        for start, end in bounds:
            chunk = ordered[start:end]
            factors = [power_of_two_scale(s) for s in chunk]
            # only the last window matters; longer history is dropped before padding (saves memory)
            ctx = pad_batch([s[-cfg.context_length :] / f for s, f in zip(chunk, factors)]).to(device)
            q = model.rollout(ctx, prediction_length, rollout_steps, max_masked_fraction,
                              on_patches=bar.update if bar is not None else None)
            q, mean = finish_batch(q.cpu().numpy(), cfg.quantile_levels, quantile_levels, cfg.median_index,
                                   np.array(factors), chunk if keep_sign else None)
            quantiles.append(q)
            means.append(mean)
    finally:
        if bar is not None:
            bar.close()
    quantiles, means = finish(quantiles, means, order, series)
    return torch.from_numpy(quantiles), torch.from_numpy(means)


def check_run(
    model: "TiRexModel",
    prediction_length: Any,
    quantile_levels: Any = None,
    batch_size: Any = 256,
    rollout_steps: Any = 1,
    max_masked_fraction: Any = 0.5,
    progress: bool | None = None,
    keep_sign: bool = False,
) -> dict:
    """Validate the settings of a forecast; returns the keyword arguments of ``forecast_tensors``."""
    levels = quantile_levels if quantile_levels is not None else model.config.quantile_levels
    return dict(
        prediction_length=check_prediction_length(prediction_length),
        quantile_levels=check_quantile_levels(levels),
        batch_size=check_positive_int(batch_size, "batch_size"),
        rollout_steps=check_positive_int(rollout_steps, "rollout_steps"),
        max_masked_fraction=check_max_masked_fraction(max_masked_fraction),
        progress=None if progress is None else bool(progress),
        keep_sign=bool(keep_sign),
    )


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

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

import math
import sys
import warnings
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch

from .inputs import as_numpy, pad_batch, power_of_two_scale
from .model import FIXED_COST_WINDOWS
from .quantiles import interpolate_quantiles
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

LONG_ROLLOUT_PASSES = 1000  # per batch of series: warn before, and show a progress bar (auto) for, longer rollouts
_F32 = torch.finfo(torch.float32)


def _is_dataframe(obj) -> bool:
    return type(obj).__name__ == "DataFrame" and hasattr(obj, "groupby")


def _is_pandas_series(obj) -> bool:
    return type(obj).__name__ == "Series" and hasattr(obj, "index") and hasattr(obj, "to_numpy")


def _is_gluonts_dataset(obj) -> bool:
    if isinstance(obj, (list, tuple)) and obj and all(isinstance(e, dict) and "target" in e for e in obj):
        return True
    module = type(obj).__module__ or ""
    return module.startswith("gluonts") and hasattr(obj, "__iter__")


def sign_bounds(series: torch.Tensor) -> tuple[float, float]:
    """(lower, upper) bounds that keep forecasts on the side of 0 where the observed history lies."""
    values = as_numpy(series)
    observed = values[~np.isnan(values)]
    if observed.size == 0:
        return -math.inf, math.inf
    return (0.0 if bool((observed >= 0).all()) else -math.inf), (0.0 if bool((observed <= 0).all()) else math.inf)


def _progress_bar(progress: bool | None, total: int):
    show = progress if progress is not None else (total > LONG_ROLLOUT_PASSES and sys.stderr.isatty())
    if not show:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="forecast", unit="patch", file=sys.stderr)


def _to_output_dtype(values: torch.Tensor) -> torch.Tensor:
    """float32 when every value fits float32's normal range (or is 0), else float64."""
    magnitude = values.abs()
    if bool((magnitude > _F32.max).any() or ((magnitude < _F32.tiny) & (magnitude > 0)).any()):
        return values
    return values.float()


def _check_finite(quantiles: torch.Tensor, series: list[torch.Tensor]) -> None:
    bad = ~torch.isfinite(quantiles).flatten(1).all(dim=1)
    if not bad.any():
        return
    i = int(torch.nonzero(bad)[0])
    finite = series[i][torch.isfinite(series[i])]
    peak = float(finite.abs().max()) if finite.numel() else 0.0
    if peak > 1e300:
        raise ValueError(f"the forecast of series {i} overflows float64: its values (up to {peak:.3g}) are too close to "
                         "float64's limit; divide the series by a large constant and multiply the forecast back")
    raise RuntimeError(f"the model produced a non-finite forecast for series {i}; its weights may hold NaN/inf "
                       "(check them with torch.isfinite(p).all() for p in model.parameters())")


MIN_EARLY_CUT = 16  # series in a batch before plan_batches may end it early


def plan_batches(series: list[torch.Tensor], context_length: int, patch_size: int, batch_size: int,
                 early_cuts: bool = True) -> tuple[list[int], list[tuple[int, int]]]:
    """The forward batches of ``forecast_tensors``: an order of ``series`` and ``(start, end)`` bounds in it.

    A batch's leading tokens that are empty in every series are skipped (``TiRexModel.empty_prefix_states``),
    so a batch costs its rows times the tokens of its longest series. Series are ordered by the tokens of the
    window that hold data (from the first observed value to the end), most first, ties in input order, and
    cut into batches of at most ``batch_size``; a batch of at least ``MIN_EARLY_CUT`` series also ends early
    where the next series need so many fewer tokens that running them on their own saves more token rows
    than a forward's fixed cost, taken as four full windows (``4 * context_length / patch_size`` token rows;
    small batches run the recurrence and the matmuls less efficiently). Measured on 256 series of random
    lengths, bundled model, two Zen 3 cores: lengths 16-1000 1.06 -> 0.82 s, 16-4000 1.81 -> 1.64 s against
    one batch in input order (1 or 8 token rows of fixed cost, or no minimum, were slower). ``early_cuts``
    False keeps full batches: on a GPU a batch's time grows with its tokens far more than with its rows, so
    a second forward costs more than the shorter series save. Results do not depend on the batches.
    """
    n = len(series)
    tokens = []
    for s in series:
        observed = ~np.isnan(as_numpy(s[-context_length:]))
        first = int(observed.argmax()) if observed.size else 0  # the first observed value (0 where none is)
        span = observed.size - first if observed.size and observed[first] else 0
        tokens.append(math.ceil(span / patch_size))
    order = sorted(range(n), key=lambda i: -tokens[i])
    fixed = FIXED_COST_WINDOWS * context_length // patch_size
    bounds, start = [], 0
    for j in range(1, n):
        saving = (tokens[order[start]] - tokens[order[j]]) * min(n - j, batch_size)
        if j - start >= batch_size or (early_cuts and j - start >= MIN_EARLY_CUT and saving > fixed):
            bounds.append((start, j))
            start = j
    if n:
        bounds.append((start, n))
    return order, bounds


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
    patches = math.ceil(prediction_length / cfg.patch_size)
    order, bounds = plan_batches(series, cfg.context_length, cfg.patch_size, batch_size,
                                 early_cuts=device.type == "cpu")
    n_batches = len(bounds)
    passes = math.ceil(patches / rollout_steps)
    if passes > LONG_ROLLOUT_PASSES:
        warnings.warn(
            f"prediction_length {prediction_length:,} takes {passes:,} rollout passes per batch of series "
            f"({n_batches} batch(es)); this can take minutes. Beyond the context ({cfg.context_length} steps) the "
            "forecast is rolled out from the model's own predictions", UserWarning, stacklevel=3,
        )
    bar = _progress_bar(progress, n_batches * patches)
    # series of similar length go together: a batch's shared empty (padded) start is skipped
    ordered = [series[i] for i in order]
    quantiles, means = [], []
    try:
        for start, end in bounds:
            chunk = ordered[start:end]
            factors = torch.tensor([power_of_two_scale(s) for s in chunk], dtype=torch.float64).view(-1, 1, 1)
            # only the last window matters; longer history is dropped before padding (saves memory)
            scaled = [s[-cfg.context_length :] / float(f) for s, f in zip(chunk, factors.view(-1))]
            ctx = pad_batch(scaled).to(device)
            q = model.rollout(ctx, prediction_length, rollout_steps, max_masked_fraction,
                              on_patches=bar.update if bar is not None else None).cpu()
            q = q.sort(dim=-1).values  # monotone rearrangement (module docstring)
            mean = q[..., cfg.median_index]
            q = interpolate_quantiles(q, cfg.quantile_levels, quantile_levels)
            if keep_sign:
                bounds = torch.tensor([sign_bounds(s) for s in chunk], dtype=q.dtype).view(-1, 1, 2)
                q = torch.maximum(torch.minimum(q, bounds[..., 1:]), bounds[..., :1])
                mean = torch.maximum(torch.minimum(mean, bounds[:, :, 1]), bounds[:, :, 0])
            quantiles.append(q.double() * factors)
            means.append(mean.double() * factors[..., 0])
    finally:
        if bar is not None:
            bar.close()
    quantiles, means = torch.cat(quantiles), torch.cat(means)
    if order != list(range(len(order))):  # back to the input's order
        inverse = torch.empty(len(order), dtype=torch.long)
        inverse[torch.tensor(order)] = torch.arange(len(order))
        quantiles, means = quantiles[inverse], means[inverse]
    _check_finite(quantiles, series)
    if _to_output_dtype(torch.cat([quantiles.flatten(), means.flatten()])).dtype == torch.float32:
        return quantiles.float(), means.float()
    return quantiles, means


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

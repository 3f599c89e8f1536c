"""``forecast``: input adapters -> batched multi-patch rollout -> quantile levels -> output adapters."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch

from .inputs import check_prediction_length, pad_batch, power_of_two_scale, to_series_list
from .quantiles import check_levels, interpolate_quantiles

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
    progress: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Core loop on already-cleaned series: returns quantiles (n, H, levels) and mean (n, H), float32."""
    cfg = model.config
    device = next(model.parameters()).device
    quantiles, means = [], []
    starts = range(0, len(series), batch_size)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="forecast", unit="batch")
    for start in starts:
        chunk = series[start : start + batch_size]
        factors = torch.tensor([power_of_two_scale(s) for s in chunk], dtype=torch.float64)
        # only the last window matters; longer history is dropped before padding (saves memory)
        chunk = [(s[-cfg.context_length :] / f) for s, f in zip(chunk, factors)]
        ctx = pad_batch(chunk).to(device)
        q = model.rollout(ctx, prediction_length, rollout_steps, max_masked_fraction).cpu()
        mean = q[..., cfg.median_index]
        q = interpolate_quantiles(q, cfg.quantile_levels, quantile_levels)
        f = factors.float().view(-1, 1)
        quantiles.append(q * f.unsqueeze(-1))
        means.append(mean * f)
    return torch.cat(quantiles), torch.cat(means)


def check_run(
    model: "TiRexModel",
    prediction_length: int,
    quantile_levels: Sequence[float] | None = None,
    batch_size: int = 256,
    rollout_steps: int = 1,
    max_masked_fraction: float | None = 0.5,
    progress: bool = False,
) -> dict:
    """Validate the options of a forecast; returns them as keyword arguments of ``forecast_tensors``.

    Every entry point (``forecast``, the CLI, the server) checks its options here, so each gets the
    same errors: ``TypeError`` / ``ValueError`` naming the option.

    Example:
        >>> run = check_run(model, 24, [0.1, 0.5, 0.9])
        >>> quantiles, mean = forecast_tensors(model, to_series_list(context), **run)
    """
    prediction_length = check_prediction_length(prediction_length)
    levels = check_levels(quantile_levels if quantile_levels is not None else model.config.quantile_levels)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if isinstance(rollout_steps, bool) or not isinstance(rollout_steps, int) or rollout_steps <= 0:
        raise ValueError(f"rollout_steps must be a positive integer, got {rollout_steps!r}")
    if max_masked_fraction is not None and not (0.0 < max_masked_fraction <= 1.0):
        raise ValueError(f"max_masked_fraction must be in (0, 1] or None, got {max_masked_fraction!r}")
    return dict(
        prediction_length=prediction_length,
        quantile_levels=levels,
        batch_size=batch_size,
        rollout_steps=rollout_steps,
        max_masked_fraction=max_masked_fraction,
        progress=progress,
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
    progress: bool = False,
    **frame_kwargs,
):
    """Forecast ``prediction_length`` steps after each series in ``context``.

    See ``TiRexModel.forecast`` for the accepted inputs and outputs.
    """
    run = check_run(model, prediction_length, quantile_levels, batch_size, rollout_steps, max_masked_fraction, progress)
    if _is_dataframe(context):
        from .frames import forecast_dataframe

        return forecast_dataframe(model, context, run, **frame_kwargs)
    if frame_kwargs:
        raise TypeError(f"unexpected keyword arguments {sorted(frame_kwargs)}")
    if _is_pandas_series(context):
        from .frames import forecast_pandas_series

        return forecast_pandas_series(model, context, run)
    if _is_gluonts_dataset(context):
        from .frames import forecast_gluonts

        return forecast_gluonts(model, context, run)
    if isinstance(context, (str, bytes, dict)):
        raise TypeError(f"context of type {type(context).__name__} is not supported; see TiRexModel.forecast")
    quantiles, mean = forecast_tensors(model, to_series_list(context), **run)
    if output_type is None:
        output_type = "numpy" if isinstance(context, np.ndarray) else "torch"
    if output_type == "numpy":
        return quantiles.numpy(), mean.numpy()
    if output_type == "torch":
        return quantiles, mean
    raise ValueError(f"output_type must be 'torch' or 'numpy', got {output_type!r}")

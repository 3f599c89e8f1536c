"""Input adapters: every accepted context type becomes a list of 1-D float32 tensors."""

from __future__ import annotations

import math
import numbers
import warnings
from typing import Any

import numpy as np
import torch


def check_prediction_length(prediction_length: Any) -> int:
    if isinstance(prediction_length, bool) or not isinstance(prediction_length, numbers.Integral):
        raise TypeError(f"prediction_length must be a positive integer, got {prediction_length!r}")
    if prediction_length <= 0:
        raise ValueError(f"prediction_length must be a positive integer, got {prediction_length}")
    return int(prediction_length)


def _as_float_array(values: Any, what: str) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        if values.is_complex():
            raise TypeError(f"{what} is complex; forecasting needs real numbers")
        return values.detach().cpu().to(torch.float64 if values.dtype == torch.float64 else torch.float32).numpy()
    arr = np.asarray(values)
    if arr.dtype.kind == "c":
        raise TypeError(f"{what} is complex; forecasting needs real numbers")
    if arr.dtype.kind not in "biuf":
        try:
            arr = arr.astype(np.float64)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"{what} holds non-numeric values (dtype {arr.dtype}); pass numbers, with NaN for missing") from exc
    return arr


def to_series_list(context: Any) -> list[torch.Tensor]:
    """Split a context into 1-D float32 series.

    Accepts a 1-D or 2-D tensor/array (rows are series), or a list/tuple of 1-D series of any lengths.
    Integer and boolean inputs are cast to float. ``inf`` is treated as missing (with a warning).
    """
    if isinstance(context, (list, tuple)):
        if len(context) == 0:
            raise ValueError("context is an empty list; pass at least one series")
        if all(isinstance(v, numbers.Number) for v in context):
            items = [context]
        else:
            items = list(context)
    else:
        arr = _as_float_array(context, "context")
        if arr.ndim == 1:
            items = [arr]
        elif arr.ndim == 2:
            items = list(arr)
        else:
            raise ValueError(
                f"context must be 1-D (one series) or 2-D (batch, time), got {arr.ndim}-D with shape {arr.shape}; "
                "for multivariate data pass each variate as its own series"
            )
    series = []
    for i, item in enumerate(items):
        arr = _as_float_array(item, f"series {i}")
        if arr.ndim != 1:
            raise ValueError(f"series {i} must be 1-D, got shape {arr.shape}")
        if arr.size == 0:
            raise ValueError(f"series {i} is empty; every series needs at least one value (NaN counts)")
        series.append(_clean(arr, i))
    return series


def _clean(arr: np.ndarray, index: int) -> torch.Tensor:
    arr = np.asarray(arr, dtype=np.float64)
    if np.isinf(arr).any():
        warnings.warn(f"series {index} contains inf; treating those values as missing", stacklevel=4)
        arr = np.where(np.isinf(arr), np.nan, arr)
    return torch.from_numpy(arr)


def power_of_two_scale(series: torch.Tensor) -> float:
    """A power of two that brings a series with extreme magnitudes into float32's comfortable range.

    Multiplying by a power of two is exact, so ordinary series (1 returned) are untouched, while
    values like 1e30 no longer overflow when squared inside the scaler.
    """
    finite = series[~torch.isnan(series)]
    if finite.numel() == 0:
        return 1.0
    peak = float(finite.abs().max())
    if peak == 0.0 or 2.0**-40 <= peak <= 2.0**40:
        return 1.0
    return 2.0 ** math.floor(math.log2(peak))


def pad_batch(series: list[torch.Tensor]) -> torch.Tensor:
    """Left-pad 1-D series with NaN into (batch, max_len) float32."""
    length = max(s.numel() for s in series)
    out = torch.full((len(series), length), float("nan"), dtype=torch.float32)
    for i, s in enumerate(series):
        out[i, length - s.numel() :] = s.float()
    return out

"""The core's view of validated series: left-padding into a batch and exact power-of-two rescaling.

Validation itself lives in ``tirex.validation`` (arrays, lists, settings) and ``tirex.io`` (tables);
``to_series_list`` and ``check_prediction_length`` are re-exported here for code that imports them
from this module.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .validation import check_prediction_length, to_series_list

__all__ = ["check_prediction_length", "pad_batch", "power_of_two_scale", "to_series_list"]


def power_of_two_scale(series: torch.Tensor) -> float:
    """A power of two that brings a series with extreme magnitudes into float32's comfortable range.

    Multiplying by a power of two is exact, so ordinary series (1 returned) are untouched, while
    values like 1e30, or 1e300 in float64, no longer overflow when squared inside the scaler or when
    cast to float32 for the model.
    """
    values = as_numpy(series)  # numpy: a few microseconds per series where torch's small ops take tens
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return 1.0
    peak = float(np.abs(finite).max())
    if peak == 0.0 or 2.0**-40 <= peak <= 2.0**40:
        return 1.0
    _, exponent = math.frexp(peak)  # peak = m * 2**exponent, 0.5 <= m < 1 (exact, unlike log2 near 2**1024)
    return math.ldexp(1.0, exponent - 1)


def as_numpy(series: torch.Tensor) -> np.ndarray:
    """A 1-D series' values as a numpy array (no copy for a float32 / float64 CPU tensor)."""
    series = series.detach().cpu()
    if series.dtype not in (torch.float32, torch.float64):
        series = series.double()
    return series.numpy()


def pad_batch(series: list[torch.Tensor]) -> torch.Tensor:
    """Left-pad 1-D series with NaN into (batch, max_len) float32."""
    length = max(s.numel() for s in series)
    out = torch.full((len(series), length), float("nan"), dtype=torch.float32)
    for i, s in enumerate(series):
        out[i, length - s.numel() :] = s.float()
    return out

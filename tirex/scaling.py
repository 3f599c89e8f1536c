"""Windowing, per-series scaling and patch tokens: the model's view of a raw context."""

from __future__ import annotations

from typing import NamedTuple

import torch


class Scale(NamedTuple):
    """Per-series location and scale, each (batch, 1)."""

    loc: torch.Tensor
    scale: torch.Tensor


def window(context: torch.Tensor, length: int) -> torch.Tensor:
    """Last ``length`` values of each row, left-padded with NaN when shorter.

    Args:
        context: (batch, time) float32.
    Returns:
        (batch, length) float32.
    """
    batch, time = context.shape
    if time >= length:
        return context[:, time - length :]
    pad = torch.full((batch, length - time), float("nan"), dtype=context.dtype, device=context.device)
    return torch.cat([pad, context], dim=1)


def fit_scale(x: torch.Tensor) -> Scale:
    """NaN-aware mean and population standard deviation of each row, float32.

    All-NaN rows get loc 0 and scale 1; constant rows get scale ``|loc| + 1e-5`` so that
    dividing never produces inf or NaN. The sums, the mean and the square root are float64, rounded to float32
    once: the result does not depend on the order of summation (torch's or numpy's, any vector width) nor on
    how a library rounds a float32 square root (torch's vectorised one can be an ulp off numpy's correctly
    rounded one), so ``tirex.lite``'s numpy scaling gives the same bits, and a long series loses no precision
    to a float32 sum.
    """
    device = x.device
    if device.type == "mps":  # no float64 on Apple's GPUs: the statistics on the CPU (a (batch, window) array)
        x = x.cpu()
    observed = ~torch.isnan(x)
    count = observed.sum(dim=1, keepdim=True, dtype=torch.float64)
    zeros = torch.zeros_like(x)
    loc = (torch.where(observed, x, zeros).sum(dim=1, keepdim=True, dtype=torch.float64) / count).float()
    loc = torch.nan_to_num(loc, nan=0.0)
    sq = torch.where(observed, (x - loc) ** 2, zeros).sum(dim=1, keepdim=True, dtype=torch.float64) / count
    scale = torch.nan_to_num(torch.sqrt(sq).float(), nan=1.0)
    scale = torch.where(scale == 0, loc.abs() + 1e-5, scale)
    return Scale(loc.to(device), scale.to(device))


def patch_tokens(x: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Split scaled values into patches and attach the observed-mask.

    Args:
        x: (batch, time) scaled values, NaN = missing; time a multiple of ``patch_size``.
    Returns:
        (batch, time // patch_size, 2 * patch_size): values (NaN -> 0) then mask (1 = observed).
    """
    batch, time = x.shape
    observed = ~torch.isnan(x)
    values = torch.where(observed, x, torch.zeros_like(x))
    tokens = torch.cat(
        [values.view(batch, -1, patch_size), observed.to(x.dtype).view(batch, -1, patch_size)], dim=-1
    )
    return tokens

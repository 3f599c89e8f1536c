"""The forecast loop shared by the torch package (``TiRexModel.rollout``, ``tirex.forecast``) and the torch-free
``tirex.lite``: batches of validated series, the multi-patch rollout of each batch, the output rules. One piece
of code on either array library, so the two give the same bits by construction. No torch here: the rollout
takes the array library's three operations it needs (``ArrayOps``) and the model's forecasting pass.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import numpy as np

from . import inputs
from .inputs import long_run_progress, pad_rows, plan_batches, power_of_two_scale
from .outputs import finish, finish_batch


class ArrayOps(NamedTuple):
    """What ``rollout`` needs of an array library (torch or numpy)."""

    cat: Callable[[list, int], Any]  # (arrays, axis) -> their concatenation
    nans: Callable[[int, int], Any]  # (rows, columns) -> float32 NaN, where the history lives (its device)
    window: Callable[[Any, int], Any]  # (batch, time) -> the last ``length`` values, NaN-padded on the left


def empty_prefix_length(tokens) -> int:
    """How many leading tokens of (batch, tokens, 2 * patch) are empty (all zero: no data) in every series
    (a tensor or an array)."""
    has_data = (tokens != 0).any(2).any(0)  # (tokens,)
    if not bool(has_data.any()):
        return tokens.shape[1]
    return int((has_data * 1).argmax())


def shared_empty_lead(tokens, keep: int) -> int:
    """The leading tokens empty in every series that a forward can skip, keeping at least the last ``keep``."""
    return min(empty_prefix_length(tokens), tokens.shape[1] - keep)


def independent_passes(done: int, k: int, total: int, rollout_steps: int, keep_masked: int | None,
                       batch: int) -> list[int]:
    """Starts of the rollout passes that can run as one stacked batch, beginning at ``done``.

    A pass reads no earlier prediction while it fills none in (start <= keep_masked): its input is the history
    plus NaN. Such passes with the same patch count are stacked along the batch (one forward instead of several;
    up to ``inputs.STACKED_ROWS`` rows), which changes no result.
    """
    starts = [done]
    while True:
        nxt = starts[-1] + k
        if nxt >= total or min(total - nxt, rollout_steps) != k:
            break
        if keep_masked is not None and nxt > keep_masked:
            break
        if (len(starts) + 1) * batch > max(batch, inputs.STACKED_ROWS):
            break
        starts.append(nxt)
    return starts


def rollout(history, prediction_length: int, rollout_steps: int, max_masked_fraction: float | None, config,
            predict: Callable[[Any, int], Any], ops: ArrayOps, on_patches=None):
    """``TiRexModel.rollout`` (see its docstring) on (batch, time) float32 ``history`` of either library:
    ``predict(context, k)`` is the forecasting pass, (rows, k, Q, P) in data units. Returns (batch,
    prediction_length, Q)."""
    p = config.patch_size
    total = math.ceil(prediction_length / p)
    keep_masked = None if max_masked_fraction is None else max(1, int(config.num_tokens * max_masked_fraction))
    history = history[:, -config.context_length:]  # a pass never reads further back than its window
    batch = history.shape[0]
    medians = []  # (batch, patch_size) per predicted patch
    pieces = []
    done = 0
    while done < total:
        k = min(total - done, rollout_steps)
        starts = independent_passes(done, k, total, rollout_steps, keep_masked, batch)
        filled = 0 if keep_masked is None else max(0, done - keep_masked)
        knowns = []
        for start in starts:  # only the first pass can fill in predictions (filled > 0)
            nan_future = ops.nans(batch, (start - filled) * p)
            # the window's worth of filled-in medians at most: the pass's cost does not grow with the horizon
            recent = medians[max(0, filled - config.num_tokens):filled]
            known = ops.cat([history, *recent, nan_future], 1)
            knowns.append(ops.window(known, config.context_length) if len(starts) > 1 else known)
        out = predict(ops.cat(knowns, 0), k)  # (passes * batch, k, Q, P)
        for j in range(len(starts)):
            part = out[j * batch:(j + 1) * batch]
            pieces.append(part)
            medians.extend(part[:, i, config.median_index] for i in range(k))
        done = starts[-1] + k
        if on_patches is not None:
            on_patches(k * len(starts))
    quantiles = ops.cat(pieces, 1).swapaxes(2, 3)  # (batch, total, P, Q)
    return quantiles.reshape(batch, total * p, -1)[:, :prediction_length]


def forecast_batches(series: list, config, rollout_batch: Callable, prediction_length: int, quantile_levels,
                     batch_size: int = 256, rollout_steps: int = 1, max_masked_fraction: float | None = 0.5,
                     progress: bool | None = False, keep_sign: bool = False,
                     early_cuts: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """The core loop on validated series (numpy arrays or tensors): ``rollout_batch(context, prediction_length,
    rollout_steps, max_masked_fraction, on_patches)`` forecasts a (batch, time) float32 numpy context and returns
    (batch, H, model levels) float32 numpy quantiles. Returns numpy quantiles (n, H, levels), monotone in the
    level, and the median (n, H); float32, or float64 when a value does not fit float32."""
    order, bounds = plan_batches(series, config.context_length, config.patch_size, batch_size, early_cuts=early_cuts)
    bar = long_run_progress(prediction_length, config.patch_size, config.context_length, rollout_steps, len(bounds),
                            progress)
    # series of similar length go together: a batch's shared empty (padded) start is skipped
    ordered = [series[i] for i in order]
    quantiles, means = [], []
    try:
        for start, end in bounds:
            chunk = ordered[start:end]
            factors = [power_of_two_scale(s) for s in chunk]
            # only the last window matters; longer history is dropped before padding (saves memory)
            context = pad_rows([s[-config.context_length:] / f for s, f in zip(chunk, factors)])
            q = rollout_batch(context, prediction_length, rollout_steps, max_masked_fraction,
                              bar.update if bar is not None else None)
            q, mean = finish_batch(q, config.quantile_levels, quantile_levels, config.median_index, np.array(factors),
                                   chunk if keep_sign else None)
            quantiles.append(q)
            means.append(mean)
    finally:
        if bar is not None:
            bar.close()
    return finish(quantiles, means, order, series)

"""Streaming updates with constant memory: carry the sLSTM state forward instead of re-reading a window.

A ``Stream`` reads an initial context once (exactly like one forecasting pass), then takes new
observations as they arrive. Every completed patch costs one token through the network, whatever
the length of the history; memory holds only the per-block recurrent states, the scaling, and the
values of the current unfinished patch.

Right after ``model.stream(context)`` the first patch of the forecast equals the first patch of
``model.forecast(context, ...)``. Later patches, and forecasts after updates, approximate a fresh
forecast: the scaling stays the one fitted on the initial context, the future is fed in as masked
tokens without re-windowing, and the state summarises all history rather than the last
``context_length`` values.
"""

from __future__ import annotations

import torch

from .outputs import check_finite, fits_float32
from .inputs import pad_batch, power_of_two_scale
from .scaling import fit_scale, patch_tokens, window
from .slstm import SLSTMState
from .validation import check_prediction_length, check_update, to_series_list


class Stream:
    """Incremental forecaster over a batch of series (see the module docstring).

    Example:
        >>> stream = model.stream(history)              # (batch, time) or a list of series
        >>> stream.update(new_values)                   # (batch, n) new observations, NaN = missing
        >>> quantiles, mean = stream.forecast(24)
    """

    def __init__(self, model, context) -> None:
        series = to_series_list(context)
        cfg = model.config
        self.model = model
        self.patch_size = p = cfg.patch_size
        # exact power-of-two rescaling, as in forecast: values beyond float32's range stay finite
        self.factors = torch.tensor([power_of_two_scale(s) for s in series], dtype=torch.float64).view(-1, 1)
        ctx = pad_batch([s / float(f) for s, f in zip(series, self.factors.view(-1))])
        # the largest magnitude of each series, for the message of a non-finite forecast (check_finite)
        self._peaks = [s[torch.isfinite(s)].abs().amax(dim=0, keepdim=True) if torch.isfinite(s).any() else s[:0]
                       for s in series]
        # tokens are aligned to the end of the context, as in a forecasting pass
        x = window(ctx, cfg.context_length)
        self.loc, self.scale = fit_scale(x)
        tokens = patch_tokens((x - self.loc) / self.scale, p)
        # as in a forecasting pass, start after the leading tokens that are empty in every series
        tokens, states = model.skip_empty_start(tokens)
        self.states: list[SLSTMState] | None = states
        self._last_output = self._advance(tokens)
        self.partial = ctx.new_zeros((ctx.shape[0], 0))
        self.steps_seen = ctx.shape[1]

    @torch.no_grad()
    def _advance(self, tokens: torch.Tensor) -> torch.Tensor:
        out, self.states = self.model(tokens, self.states, return_states=True)
        return out[:, -1]  # (batch, quantiles, patch): prediction for the next patch

    @torch.no_grad()
    def update(self, values) -> None:
        """Append new observations, (batch, n) or (n,) for a single series; NaN marks missing values."""
        values = check_update(values, self.loc.shape[0]) / self.factors
        if bool((values.abs() > torch.finfo(torch.float32).max).any()):
            raise ValueError("update values are far beyond the magnitude of the stream's initial context (they overflow "
                             "the scaling fitted on it); start a new stream with a context that includes such values")
        values = values.float()
        buf = torch.cat([self.partial, values], dim=1)
        full = buf.shape[1] // self.patch_size * self.patch_size
        if full:
            scaled = (buf[:, :full] - self.loc) / self.scale
            self._last_output = self._advance(patch_tokens(scaled, self.patch_size))
        self.partial = buf[:, full:]
        self.steps_seen += values.shape[1]

    @torch.no_grad()
    def forecast(self, prediction_length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Quantiles (batch, H, levels), sorted along the level, and the median (batch, H) from the current
        state; the state is not changed. float32, or float64 when a value does not fit float32."""
        h = check_prediction_length(prediction_length)
        p, r = self.patch_size, self.partial.shape[1]
        cfg = self.model.config
        states, out = self.states, self._last_output
        pieces = [out[..., r:]]  # the current patch's first r values are already observed
        have = p - r
        pending = None
        if r:
            pending = torch.cat([self.partial, self.partial.new_full((self.partial.shape[0], p - r), float("nan"))], dim=1)
        while have < h:
            token_values = pending if pending is not None else self.partial.new_full((self.partial.shape[0], p), float("nan"))
            pending = None
            token = patch_tokens((token_values - self.loc) / self.scale, p)
            out_seq, states = self.model(token, states, return_states=True)
            pieces.append(out_seq[:, -1])
            have += p
        q = torch.cat(pieces, dim=-1)[..., :h] * self.scale.unsqueeze(-1) + self.loc.unsqueeze(-1)
        q = q.transpose(1, 2).sort(dim=-1).values  # (batch, H, quantiles), monotone in the level
        q = q.double() * self.factors.unsqueeze(-1)
        check_finite(q.numpy(), self._peaks)
        q = q if not fits_float32(q.numpy()) else q.float()
        return q, q[..., cfg.median_index]

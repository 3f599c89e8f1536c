"""The sLSTM layer (Beck et al., xLSTM, 2024) as TiRex uses it, and the pre-norm block around it.

Gates are named for what they do here. The reference checkpoint swaps two names (its ``fgate``
weight drives the input gate, its ``igate`` weight the forget gate); that is undone once, in
``tirex.checkpoint``, and nowhere else.

Numerics. With ``recurrence_dtype="bfloat16"`` the recurrence reproduces the reference's emulation
of a bfloat16 kernel: input pre-activations, the recurrent matmul result and all four states are
rounded to bfloat16 at every step, everything else runs in float32. The values are held in float32
tensors, so the float32 matmul of bfloat16-valued operands is exact up to float32 accumulation.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn
import torch.nn.functional as F

from .layers import GatedFeedForward, RMSNorm

GATES = ("input", "forget", "cell", "output")  # order of the gate axis everywhere


class SLSTMState(NamedTuple):
    """Recurrent state, each (heads, batch, head_dim) float32."""

    y: torch.Tensor
    c: torch.Tensor
    n: torch.Tensor
    m: torch.Tensor


def zero_state(num_heads: int, batch: int, head_dim: int, device=None) -> SLSTMState:
    z = torch.zeros(num_heads, batch, head_dim, device=device)
    return SLSTMState(z, z, z, z)


def _round_bf16(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.bfloat16).float()


def slstm_recurrence_torch(
    wx: torch.Tensor,
    recurrent: torch.Tensor,
    bias: torch.Tensor,
    state: SLSTMState | None = None,
    emulate_bf16: bool = True,
) -> tuple[torch.Tensor, SLSTMState]:
    """Run the sLSTM recurrence over all steps, one step at a time.

    Args:
        wx: (steps, heads, batch, 4 * head_dim) input pre-activations, gate-major on the last axis.
        recurrent: (heads, head_dim, 4 * head_dim) recurrent matrix.
        bias: (heads, 4 * head_dim).
        state: starting state; zeros (a fresh sequence) when None.
        emulate_bf16: round to bfloat16 like the reference kernel.

    Returns:
        y: (steps, heads, batch, head_dim) float32 hidden outputs, and the final state.
    """
    steps, heads, batch, four_dh = wx.shape
    dh = four_dh // 4
    rnd = _round_bf16 if emulate_bf16 else (lambda t: t)
    fresh = state is None
    if fresh:
        state = zero_state(heads, batch, dh, device=wx.device)
    y, c, n, m = state
    wx = rnd(wx)
    r = rnd(recurrent)
    bias = bias.unsqueeze(1)  # (heads, 1, 4 * head_dim)
    outputs = []
    for t in range(steps):
        pre = wx[t] + rnd(torch.bmm(y, r)) + bias
        i_pre, f_pre, z_pre, o_pre = pre.split(dh, dim=-1)
        log_f = m + F.logsigmoid(torch.clamp(f_pre, max=15.0))
        # On a fresh sequence n is all zero only at the first step; the max-stabiliser starts at i~.
        m_new = i_pre if (fresh and t == 0) else torch.maximum(i_pre, log_f)
        i_gate = torch.clamp(torch.exp(i_pre - m_new), max=1.0)
        f_gate = torch.clamp(torch.exp(log_f - m_new), max=1.0)
        c = f_gate * c + i_gate * torch.tanh(z_pre)
        n = f_gate * n + i_gate
        y = torch.sigmoid(o_pre) * c / n
        y, c, n, m = rnd(y), rnd(c), rnd(n), rnd(m_new)
        outputs.append(y)
    return torch.stack(outputs), SLSTMState(y, c, n, m)


class SLSTMLayer(nn.Module):
    """Head-wise input projections, the sLSTM recurrence, and a per-head group norm."""

    def __init__(self, embed_dim: int, num_heads: int, recurrence_dtype: str = "bfloat16") -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dh = embed_dim // num_heads
        self.recurrence_dtype = recurrence_dtype
        # Block-diagonal input projections, one (head_dim x head_dim) matrix per head: out = W[h] @ x[h].
        self.input_gate = nn.Parameter(torch.empty(num_heads, dh, dh))
        self.forget_gate = nn.Parameter(torch.empty(num_heads, dh, dh))
        self.cell_gate = nn.Parameter(torch.empty(num_heads, dh, dh))
        self.output_gate = nn.Parameter(torch.empty(num_heads, dh, dh))
        # Recurrent matrix: y (1 x head_dim) @ R[h] -> (1 x 4 * head_dim), column = gate * head_dim + unit.
        self.recurrent = nn.Parameter(torch.zeros(num_heads, dh, 4 * dh))
        self.bias = nn.Parameter(torch.zeros(num_heads, 4, dh))
        self.norm_weight = nn.Parameter(torch.zeros(embed_dim))  # group norm scales by (1 + w)
        for w in (self.input_gate, self.forget_gate, self.cell_gate, self.output_gate):
            nn.init.normal_(w, std=(2.0 / (5 * embed_dim)) ** 0.5)

    def input_projection(self) -> torch.Tensor:
        """(heads, head_dim_in, 4 * head_dim_out): the four gate projections side by side."""
        w = torch.stack([self.input_gate, self.forget_gate, self.cell_gate, self.output_gate], dim=1)
        return w.permute(0, 3, 1, 2).reshape(self.num_heads, self.head_dim, 4 * self.head_dim)

    def forward(self, x: torch.Tensor, state: SLSTMState | None = None) -> tuple[torch.Tensor, SLSTMState]:
        # x: (batch, steps, embed)
        batch, steps, _ = x.shape
        heads, dh = self.num_heads, self.head_dim
        xh = x.reshape(batch * steps, heads, dh).transpose(0, 1)  # (heads, batch*steps, dh)
        wx = torch.bmm(xh, self.input_projection())  # (heads, batch*steps, 4dh)
        wx = wx.view(heads, batch, steps, 4 * dh).permute(2, 0, 1, 3)  # (steps, heads, batch, 4dh)
        y, state = slstm_recurrence_torch(
            wx, self.recurrent, self.bias.reshape(heads, 4 * dh), state, self.recurrence_dtype == "bfloat16"
        )
        # per-head group norm over head_dim, then back to (batch, steps, embed)
        y = F.layer_norm(y, (dh,), eps=1e-5)
        y = y * (1.0 + self.norm_weight.view(1, heads, 1, dh))
        return y.permute(2, 0, 1, 3).reshape(batch, steps, heads * dh), state


class SLSTMBlock(nn.Module):
    """Pre-norm residual block: ``h + sLSTM(norm(h))`` then ``h + FFN(norm(h))``."""

    def __init__(self, embed_dim: int, num_heads: int, ffn_dim: int, recurrence_dtype: str = "bfloat16") -> None:
        super().__init__()
        self.norm_slstm = RMSNorm(embed_dim)
        self.slstm = SLSTMLayer(embed_dim, num_heads, recurrence_dtype)
        self.norm_ffn = RMSNorm(embed_dim)
        self.ffn = GatedFeedForward(embed_dim, ffn_dim)

    def forward(self, h: torch.Tensor, state: SLSTMState | None = None) -> tuple[torch.Tensor, SLSTMState]:
        out, state = self.slstm(self.norm_slstm(h), state)
        h = h + out
        h = h + self.ffn(self.norm_ffn(h))
        return h, state

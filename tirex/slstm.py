"""The sLSTM layer (Beck et al., xLSTM, 2024) as TiRex uses it, and the pre-norm block around it.

Gates are named for what they do here. The reference checkpoint swaps two names (its ``fgate``
weight drives the input gate, its ``igate`` weight the forget gate); that is undone once, in
``tirex.checkpoint``, and nowhere else.

Numerics. With ``recurrence_dtype="bfloat16"`` the recurrence reproduces the reference's emulation
of a bfloat16 kernel: input pre-activations, the recurrent matmul result and all four states are
rounded to bfloat16 at every step, everything else runs in float32. The values are held in float32
tensors, so the float32 matmul of bfloat16-valued operands is exact up to float32 accumulation.

Speed. ``slstm_recurrence_torch`` is the readable reference loop. At inference the recurrence runs
in one call of a compiled kernel (``tirex.cpu_kernel`` on CPU, ``cuda/`` on GPUs; chosen by
``tirex.backends``) with the same op sequence, and the block's norms and feed-forward take the
chunked, in-place path of ``tirex.inference``. Training (grad enabled) uses the plain modules.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

from . import inference
from .backends import resolve
from .kernel_forward import GROUP_NORM_EPS, pairs_block, round_bf16
from .kernel_forward import bf16_pairs as _bf16_pairs_array
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


def _round_bf16_numpy(x: np.ndarray) -> torch.Tensor:
    """``_round_bf16`` for a float32 array (nearest even on the bits; NaN kept), as a tensor."""
    return torch.from_numpy(round_bf16(x))


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
    # unbind, not wx[t]: the backward of unbind stacks the step gradients once, while the backward of
    # indexing would add a full-size zero gradient per step (quadratic in the number of steps)
    wx_steps = wx.unbind(0)
    for t in range(steps):
        pre = wx_steps[t] + rnd(torch.bmm(y, r)) + bias
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


def slstm_recurrence(
    wx: torch.Tensor,
    recurrent: torch.Tensor,
    bias: torch.Tensor,
    state: SLSTMState | None = None,
    emulate_bf16: bool = True,
    backend: str = "auto",
) -> tuple[torch.Tensor, SLSTMState]:
    """The sLSTM recurrence on the backend ``backend`` (see ``tirex.backends``).

    Args:
        wx: (heads, batch, steps, 4 * head_dim) float32 input pre-activations, gate-major on the last axis.
        recurrent, bias, state, emulate_bf16: as for ``slstm_recurrence_torch``.
    Returns:
        y: (batch, steps, heads, head_dim) float32, and the final state.
    """
    chosen = resolve(backend, wx)
    if chosen == "cpu":
        y, new_state = _recurrence_cpu_kernel(wx, recurrent, bias, state, emulate_bf16)
        if y is not None:
            return y, new_state
    if chosen == "cuda":
        from .cuda_backend import slstm_recurrence_cuda

        return slstm_recurrence_cuda(wx, recurrent, bias, state, emulate_bf16)
    y, state = slstm_recurrence_torch(wx.permute(2, 0, 1, 3), recurrent, bias, state, emulate_bf16)
    return y.permute(2, 0, 1, 3), state


def bf16_pairs(recurrent: torch.Tensor, block: int = 0) -> torch.Tensor:
    """``tirex.kernel_forward.bf16_pairs`` of a (heads, D, 4D) CPU tensor, as a bfloat16 tensor."""
    return torch.from_numpy(_bf16_pairs_array(recurrent.detach().float().numpy(), block)).view(torch.bfloat16)


def kernel_recurrent_operands(recurrent: torch.Tensor, emulate_bf16: bool, lib) -> tuple[torch.Tensor,
                                                                                         torch.Tensor | None]:
    """(R as float32, its bfloat16 pairs or None): what the CPU kernel ``lib`` reads of the recurrent matrix
    (heads, D, 4D) that ``SLSTMLayer._inference_weights`` returns (pairs cached on it per layout)."""
    dh = recurrent.shape[1]
    r = recurrent.detach().float()
    pairs = None
    block = pairs_block(lib) if emulate_bf16 and dh % 32 == 0 else None
    if block is not None:
        cached = getattr(recurrent, "_tirex_bf16_pairs", None)  # {block: pairs} from _inference_weights
        pairs = cached.get(block) if cached is not None else None
        if pairs is None:
            pairs = bf16_pairs(r, block)  # rounds to nearest even, as _round_bf16
            if cached is not None:  # another kernel level was selected since: keep its layout too
                cached[block] = pairs
    if emulate_bf16 and pairs is None and not getattr(recurrent, "_tirex_bf16_rounded", False):
        r = _round_bf16(r)  # the kernel reads R itself only without pairs
    return r.contiguous(), pairs


def kernel_states(state: SLSTMState | None, heads: int, batch: int, dh: int) -> torch.Tensor:
    """The (4, heads, batch, head_dim) float32 state buffer the CPU kernel starts from (a copy of ``state``)
    and writes its final state into; uninitialised for a fresh start (``state`` None)."""
    if state is None:
        return torch.empty(4, heads, batch, dh)
    states = torch.stack([s.detach().float() for s in state])
    if states.shape != (4, heads, batch, dh):
        raise ValueError(f"a starting state must be 4 tensors of (heads, batch, head_dim) = {(heads, batch, dh)} "
                         f"for this input, got {tuple(states.shape[1:])}")
    return states


def _recurrence_cpu_kernel(wx, recurrent, bias, state, emulate_bf16, norm_weight=None, residual=None,
                           snapshot_at=None):
    """The compiled CPU kernel. With ``norm_weight`` it also applies the per-head group norm and adds
    ``residual`` (batch, steps, embed), returning the block's residual stream. (None, None) if the
    kernel does not handle these sizes. With ``snapshot_at`` (1 <= snapshot_at <= steps) a third result:
    the state after the first ``snapshot_at`` steps."""
    heads, batch, steps, four_dh = wx.shape
    dh = four_dh // 4
    wx = wx.detach()
    # bfloat16: the fast mode's projection, or the exact mode's rounded pre-activations (the same values)
    wx = (wx if wx.dtype == torch.bfloat16 else wx.float()).contiguous()
    lib = inference.dispatch().library
    r, pairs = kernel_recurrent_operands(recurrent, emulate_bf16, lib)
    bias = bias.detach().float().contiguous()
    states = kernel_states(state, heads, batch, dh)
    # the fused block output alternates between two reused residual-stream buffers within a forward
    shape = (batch, steps, heads, dh)
    out = inference.stream_buffer(shape, residual) if norm_weight is not None else torch.empty(shape)
    if norm_weight is not None:
        norm_weight = norm_weight.detach().float().contiguous()
    if residual is not None:
        residual = residual.detach().float().contiguous()
    snap = None if snapshot_at is None else torch.empty(4, heads, batch, dh)
    status = lib.tirex_slstm_forward(
        wx.data_ptr(), int(wx.dtype == torch.bfloat16), r.data_ptr(), None if pairs is None else pairs.data_ptr(),
        bias.data_ptr(), states.data_ptr(), out.data_ptr(),
        None if norm_weight is None else norm_weight.data_ptr(), None if residual is None else residual.data_ptr(),
        GROUP_NORM_EPS, heads, batch, steps, dh, int(state is None), int(emulate_bf16), inference.kernel_threads(),
        None if snap is None else snap.data_ptr(), snapshot_at or 0,
    )
    if status != 0:
        return (None, None) if snap is None else (None, None, None)
    if snap is None:
        return out, SLSTMState(*states.unbind(0))
    return out, SLSTMState(*states.unbind(0)), SLSTMState(*snap.unbind(0))


class SLSTMLayer(nn.Module):
    """Head-wise input projections, the sLSTM recurrence, and a per-head group norm."""

    def __init__(self, embed_dim: int, num_heads: int, recurrence_dtype: str = "bfloat16") -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dh = embed_dim // num_heads
        self.recurrence_dtype = recurrence_dtype
        self.backend = "auto"  # see tirex.backends
        self.matmul_dtype = torch.float32  # bfloat16 = the opt-in fast mode (inference only)
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
            # Not on the meta device (load_model builds there, then assigns the checkpoint's tensors): torch's
            # normal_ for meta tensors imports ~800 modules (sympy, the decompositions) on first use, 73 MB of
            # resident memory for the rest of the process.
            if not w.is_meta:
                nn.init.normal_(w, std=(2.0 / (5 * embed_dim)) ** 0.5)

    def input_projection(self) -> torch.Tensor:
        """(heads, head_dim_in, 4 * head_dim_out): the four gate projections side by side."""
        w = torch.stack([self.input_gate, self.forget_gate, self.cell_gate, self.output_gate], dim=1)
        return w.permute(0, 3, 1, 2).reshape(self.num_heads, self.head_dim, 4 * self.head_dim)

    def _inference_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(input projection in matmul_dtype, recurrent matrix as the recurrence uses it), cached
        until a parameter changes (no re-stacking and re-rounding on every call)."""
        params = (self.input_gate, self.forget_gate, self.cell_gate, self.output_gate, self.recurrent)
        key = (self.matmul_dtype, self.recurrence_dtype) + tuple((p._version, p.data_ptr()) for p in params)
        cached = getattr(self, "_inference_cache", None)
        if cached is None or cached[0] != key:
            if self.recurrent.device.type == "cpu":
                # numpy, single-threaded: on a busy CPU a few small torch ops here cost more than the
                # whole first forecast (every parallel op waits for a descheduled worker thread)
                # (heads, in, out) row-major: the layout of the compiled weight matmuls and of MKL's fast path
                projection = torch.from_numpy(np.ascontiguousarray(np.concatenate(
                    [w.detach().float().numpy().transpose(0, 2, 1) for w in params[:4]], axis=2)))
                recurrent = _round_bf16_numpy(self.recurrent.detach().float().numpy()) if (
                    self.recurrence_dtype == "bfloat16") else self.recurrent.detach().float().contiguous()
            else:
                projection = self.input_projection().detach()
                recurrent = self.recurrent.detach().float()
                recurrent = (_round_bf16(recurrent) if self.recurrence_dtype == "bfloat16" else recurrent).contiguous()
            if self.recurrence_dtype == "bfloat16":
                recurrent._tirex_bf16_rounded = True
                block = pairs_block(inference.compiled_kernels(recurrent)) if self.head_dim % 32 == 0 else None
                if block is not None:  # the kernel reads only the pairs: no rounded float32 copy kept
                    pairs = bf16_pairs(recurrent, block)
                    recurrent = self.recurrent.detach()
                    recurrent._tirex_bf16_pairs = {block: pairs}
            cached = (key, (projection.to(self.matmul_dtype), recurrent))
            self._inference_cache = cached
        return cached[1]

    def forward(
        self,
        x: torch.Tensor,
        state: SLSTMState | None = None,
        residual: torch.Tensor | None = None,
        head_major: bool = False,
        snapshot_at: int | None = None,
    ):
        """x: (batch, steps, embed) -> (batch, steps, embed) and the final state; plus ``residual`` if given.

        With ``head_major`` x is (heads, batch * steps, head_dim) (the fast path's norm writes it so) and
        ``residual`` (batch, steps, embed) is required: it gives the shape. With ``snapshot_at`` (1 ... steps)
        a third result: the state after the first ``snapshot_at`` steps (the same values as a forward of those
        steps alone).
        """
        heads, dh = self.num_heads, self.head_dim
        if head_major:
            batch, steps, _ = residual.shape
            xh = x
        else:
            batch, steps, _ = x.shape
            xh = x.reshape(batch * steps, heads, dh).transpose(0, 1)  # (heads, batch*steps, dh), a view
        if torch.is_grad_enabled():
            weight, recurrent = self.input_projection(), self.recurrent
        else:
            weight, recurrent = self._inference_weights()
            xh = xh.to(weight.dtype)
        reuse = not torch.is_grad_enabled() and xh.device.type == "cpu"
        out = inference.buffer("scratch", (heads, batch * steps, 4 * dh), weight.dtype) if reuse else None
        lib = inference.compiled_kernels(xh) if reuse and weight.dtype == torch.float32 else None
        if weight.is_contiguous() and xh.is_contiguous() and inference.gemm_enabled(lib):
            if self.recurrence_dtype == "bfloat16":  # rounded to bfloat16 by the recurrence anyway: half the memory
                out = inference.buffer("scratch", (heads, batch * steps, 2 * dh)).view(torch.bfloat16)
            inference.gemm_heads_(lib, xh, weight, out)
            wx = out.view(heads, batch, steps, 4 * dh)
        else:
            wx = torch.bmm(xh, weight, out=out).view(heads, batch, steps, 4 * dh)  # bfloat16 in fast mode
        bias = self.bias.reshape(heads, 4 * dh)
        emulate = self.recurrence_dtype == "bfloat16"
        if resolve(self.backend, wx) == "cpu":  # fused recurrence + group norm + residual
            out, new_state, *snap = _recurrence_cpu_kernel(wx, recurrent, bias, state, emulate, self.norm_weight,
                                                           residual, snapshot_at)
            if out is not None:
                return (out.view(batch, steps, heads * dh), new_state, *snap)
        wx = wx.float()
        if snapshot_at is not None and not 1 <= snapshot_at <= steps:
            raise ValueError(f"snapshot_at must be in 1 ... {steps}, got {snapshot_at}")
        first, snap = [], []  # with a snapshot inside the sequence: the first steps, then the rest from their state
        if snapshot_at is not None and snapshot_at < steps:
            y_first, state = slstm_recurrence(wx[:, :, :snapshot_at], recurrent, bias, state, emulate, self.backend)
            first, snap, wx = [y_first], [state], wx[:, :, snapshot_at:]
        y, state = slstm_recurrence(wx, recurrent, bias, state, emulate, self.backend)  # y: (batch, steps, heads, dh)
        if snapshot_at == steps:
            snap = [state]
        y = torch.cat([*first, y], dim=1) if first else y
        # per-head group norm over head_dim, then back to (batch, steps, embed)
        y = F.layer_norm(y, (dh,), eps=GROUP_NORM_EPS) * (1.0 + self.norm_weight.view(heads, dh))
        out = y.reshape(batch, steps, heads * dh)
        return ((out if residual is None else out + residual), state, *snap)


class SLSTMBlock(nn.Module):
    """Pre-norm residual block: ``h + sLSTM(norm(h))`` then ``h + FFN(norm(h))``."""

    def __init__(self, embed_dim: int, num_heads: int, ffn_dim: int, recurrence_dtype: str = "bfloat16") -> None:
        super().__init__()
        self.norm_slstm = RMSNorm(embed_dim)
        self.slstm = SLSTMLayer(embed_dim, num_heads, recurrence_dtype)
        self.norm_ffn = RMSNorm(embed_dim)
        self.ffn = GatedFeedForward(embed_dim, ffn_dim)

    def forward(
        self, h: torch.Tensor, state: SLSTMState | None = None, keep_last: int | None = None,
        snapshot_at: int | None = None,
    ):
        """h: (batch, steps, embed). With ``keep_last`` only the last ``keep_last`` steps are returned,
        and the feed-forward runs on those only (it is per token; the recurrence still sees every step).
        With ``snapshot_at`` a third result: the sLSTM state after the first ``snapshot_at`` steps."""
        if torch.is_grad_enabled():
            out, state, *snap = self.slstm(self.norm_slstm(h), state, snapshot_at=snapshot_at)
            h = h + out
            if keep_last is not None:
                h = h[:, -keep_last:]
            h = h + self.ffn(self.norm_ffn(h))
            return (h, state, *snap)
        # inference: fused norm, residuals added in place into the fresh sLSTM output, chunked FFN
        x = inference.rms_norm(h.float(), self.norm_slstm, self.slstm.matmul_dtype, self.slstm.num_heads, "norm")
        h, state, *snap = self.slstm(x, state, residual=h, head_major=True, snapshot_at=snapshot_at)
        if keep_last is not None:
            h = h[:, -keep_last:].contiguous()
        inference.ffn_residual_(h, self.norm_ffn, self.ffn, self.slstm.matmul_dtype)
        return (h, state, *snap)

"""The fused CUDA sLSTM kernels (sources in ``cuda/``, installed as package ``tirex_cuda``).

Built on first use with ``torch.utils.cpp_extension.load`` (ninja) into torch's extension cache
(``TORCH_EXTENSIONS_DIR``, default ``~/.cache/torch_extensions``), so later processes only load them.
``tirex.backends`` decides when they run; a failed build is reported once and the torch loop is used.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import torch

_lock = threading.Lock()
_extension = None
_error: str | None = None


def source_dir() -> Path:
    """Folder holding ``slstm_kernels.cu`` and ``slstm_binding.cpp``."""
    try:
        import tirex_cuda

        return Path(tirex_cuda.__file__).parent
    except ImportError:  # a source checkout: the cuda/ folder next to tirex/
        return Path(__file__).resolve().parents[1] / "cuda"


def load_extension():
    """The compiled extension module, or None (``build_error()`` says why)."""
    global _extension, _error
    if _extension is not None or _error is not None:
        return _extension
    with _lock:
        if _extension is not None or _error is not None:
            return _extension
        if os.environ.get("TIREX_CUDA_KERNEL", "1").lower() in ("0", "false", "no", "off"):
            _error = "disabled by TIREX_CUDA_KERNEL=0"
            return None
        folder = source_dir()
        sources = [folder / "slstm_binding.cpp", folder / "slstm_kernels.cu"]
        missing = [str(s) for s in sources if not s.is_file()]
        if missing:
            _error = f"kernel sources not found: {missing}"
            return None
        try:
            from torch.utils.cpp_extension import load

            major, minor = torch.cuda.get_device_capability()
            os.environ.setdefault("TORCH_CUDA_ARCH_LIST", f"{major}.{minor}")
            _extension = load(
                name="tirex_slstm_cuda",
                sources=[str(s) for s in sources],
                extra_cflags=["-O3"],
                extra_cuda_cflags=["-O3"],
                verbose=False,
            )
        except Exception as exc:  # a compiler/ninja/toolkit problem of any kind: fall back, never crash
            _error = f"{type(exc).__name__}: {str(exc).strip()[-1500:]}"
    return _extension


def build_error() -> str | None:
    return _error


class _SLSTMFunction(torch.autograd.Function):
    """Forward and backward of the recurrence through the fused kernels."""

    @staticmethod
    def forward(ctx, wx, recurrent, bias, y0, c0, n0, m0, fresh: bool, emulate_bf16: bool):
        ext = load_extension()
        state = torch.stack([y0, c0, n0, m0]).float().contiguous()
        save = ctx.needs_input_grad[0] or ctx.needs_input_grad[1] or ctx.needs_input_grad[2]
        outs = ext.forward(wx.contiguous(), recurrent.float().contiguous(), bias.float().contiguous(), state,
                           fresh, emulate_bf16, save)
        y, state_out = outs[0], outs[1]
        if save:
            ctx.save_for_backward(recurrent, state, outs[2], outs[3], y)
        ctx.fresh = fresh
        return y, *state_out.unbind(0)

    @staticmethod
    def backward(ctx, grad_y, g_y, g_c, g_n, g_m):
        recurrent, state, saved_pre, saved_state, y = ctx.saved_tensors
        grads = [torch.zeros_like(state[0]) if g is None else g for g in (g_y, g_c, g_n, g_m)]
        grad_state = torch.stack(grads).float().contiguous()
        grad_y = torch.zeros_like(y) if grad_y is None else grad_y.float().contiguous()
        heads, dh = recurrent.shape[0], recurrent.shape[1]
        rt = recurrent.float().transpose(1, 2).contiguous()  # (H, 4D, D)
        grad_wx, grad_state_in = load_extension().backward(
            grad_y, grad_state, rt, state, saved_pre, saved_state, ctx.fresh
        )
        # R gradient: sum over (batch, time) of y_prev^T gpre, one batched matmul per head
        batch, steps = grad_wx.shape[1], grad_wx.shape[2]
        y_hb = y.permute(2, 0, 1, 3)  # (H, B, T, D)
        y_prev = torch.cat([state[0].unsqueeze(2), y_hb[:, :, :-1]], dim=2)  # (H, B, T, D)
        grad_r = torch.bmm(y_prev.reshape(heads, batch * steps, dh).transpose(1, 2),
                           grad_wx.reshape(heads, batch * steps, 4 * dh))
        grad_bias = grad_wx.sum(dim=(1, 2))
        g0 = grad_state_in.unbind(0)
        return grad_wx, grad_r, grad_bias, g0[0], g0[1], g0[2], g0[3], None, None


def slstm_recurrence_cuda(wx, recurrent, bias, state, emulate_bf16: bool):
    """Same contract as ``tirex.slstm.slstm_recurrence``: wx (H, B, T, 4D) -> y (B, T, H, D), final state."""
    from .slstm import SLSTMState, zero_state

    heads, batch, steps, four_dh = wx.shape
    fresh = state is None
    if fresh:
        state = zero_state(heads, batch, four_dh // 4, device=wx.device)
    y, *final = _SLSTMFunction.apply(wx.float(), recurrent, bias, *state, fresh, emulate_bf16)
    return y, SLSTMState(*final)

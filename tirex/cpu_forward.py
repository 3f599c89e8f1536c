"""The CPU inference forward as a sequence of compiled-kernel calls, prepared once per model.

The no-grad path of ``TiRexModel.forward`` (``tirex.inference``) decides at every layer of every forward
which kernels apply, looks up cached weights and wraps each kernel call in tensor views: a few hundred
microseconds of Python per block, 15-17% of a batch-1 forecast at the published size (README "Speed").
Where every layer runs on the compiled CPU kernels with float32 weight matmuls - the default wherever a
kernel level exists - those decisions and the weights' addresses stay fixed until a parameter, a module,
a setting or the kernels change. ``CompiledForward`` takes them once; a forward is then the kernel calls
in sequence: the same calls, in the same order, on the same operands as the layer-by-layer path, so the
same bits (tested on every kernel level).

Anything else takes the layer-by-layer path: the fast mode, torch's matmuls (``TIREX_CPU_GEMM=0``), an
sLSTM backend other than the CPU kernel, weights that are not float32 ``nn.Linear`` matrices (a replaced or
wrapped layer), head sizes the kernel does not take, and forward hooks on any submodule (they run).
"""

from __future__ import annotations

import threading
import weakref

import torch
from torch import nn
from torch.nn.modules import module as torch_module

from . import backends, inference
from .inference import GEMM_ACCUMULATE, GEMM_RELU, GEMM_STORE, GEMM_STORE_BF16, GEMM_SWIGLU, ROWS_PER_CHUNK
from .layers import GatedFeedForward, ResidualBlock, RMSNorm
from .slstm import GROUP_NORM_EPS, SLSTMBlock, SLSTMLayer, SLSTMState, kernel_recurrent_operands, kernel_states

FLOAT_BYTES = 4


def compiled_forward(model: nn.Module) -> "CompiledForward | None":
    """The model's prepared CPU forward for the kernels in use, or None where the layer-by-layer path must
    run. Checked on every call (about 0.1 ms for the published size); prepared again after any change."""
    dispatch = inference.dispatch()
    cached = _prepared.get(model)
    if cached is not None and cached[0] == _key(model, dispatch, cached[2]):
        return cached[1]
    with _prepare_lock:  # one preparation at a time (the layout change below moves weights)
        inference.use_matmul_layout_(model)
        submodules = tuple(m for m in model.modules() if m is not model)
        plan = CompiledForward.prepare(model, dispatch)
        _prepared[model] = (_key(model, dispatch, submodules), plan, submodules)
    return plan


# by model, outside it (nothing to copy or pickle with it) and weakly (nothing kept alive: the entry holds
# the model's submodules and the kernels, never the model)
_prepared: "weakref.WeakKeyDictionary[nn.Module, tuple]" = weakref.WeakKeyDictionary()
_prepare_lock = threading.Lock()


def _key(model: nn.Module, dispatch, submodules: tuple[nn.Module, ...]) -> tuple:
    """What a prepared forward depends on: the kernels, the default sLSTM backend, hooks, and for the model
    and every submodule its children, parameters (object, in-place version, memory) and the settings of its
    sLSTM layer. ``submodules`` are those it was prepared from (held, so their ids cannot be reused)."""
    parts = [id(dispatch), backends.default_backend(), _global_hooks()]
    for m in (model, *submodules):
        parts.append(id(m))
        parts.extend(map(id, m._modules.values()))
        for p in m._parameters.values():
            parts.extend((id(p), p._version, p.data_ptr()) if p is not None else (None,))
        if m is not model and (m._forward_hooks or m._forward_pre_hooks):  # the model's own run anyway
            parts.append("hooks")
        if isinstance(m, SLSTMLayer):
            parts.extend((m.matmul_dtype, m.recurrence_dtype, m.backend))
        elif isinstance(m, RMSNorm):
            parts.append(m.eps)
    return tuple(parts)


def _global_hooks() -> bool:
    """Whether forward hooks for every module are registered (``nn.modules.module.register_module_forward_hook``)."""
    return bool(getattr(torch_module, "_global_forward_hooks", None) or
                getattr(torch_module, "_global_forward_pre_hooks", None))


def _hooked(model: nn.Module) -> bool:
    """Whether a forward hook would run inside the model's forward (its own run in any case)."""
    if _global_hooks():
        return True
    return any(m._forward_hooks or m._forward_pre_hooks for m in model.modules() if m is not model)


class _Linear:
    """An ``nn.Linear`` as the compiled matmul reads it: the address of its (in, out) row-major weight."""

    def __init__(self, layer: nn.Module, keep: list) -> None:
        if type(layer) is not nn.Linear or not inference._matmul_ready(layer.weight):
            raise _NotPlain(f"{layer!r}")
        self.weight = _held(layer.weight, keep)
        self.bias = None if layer.bias is None else _held(layer.bias, keep)
        self.out_features, self.in_features = layer.weight.shape


class _Norm:
    def __init__(self, norm: nn.Module, keep: list) -> None:
        if type(norm) is not RMSNorm:
            raise _NotPlain(f"{norm!r}")
        self.weight, self.eps = _held(norm.weight, keep), norm.eps


class _Residual:
    """A ``ResidualBlock``: out = W_r u + b_r + W_o relu(W_h u + b_h) + b_o."""

    def __init__(self, block: nn.Module, keep: list) -> None:
        if type(block) is not ResidualBlock:
            raise _NotPlain(f"{block!r}")
        self.hidden, self.output, self.residual = (_Linear(block.hidden, keep), _Linear(block.output, keep),
                                                   _Linear(block.residual, keep))


class _Block:
    """An ``SLSTMBlock``: the two norms, the head-wise projection, the recurrence's operands, the FFN."""

    def __init__(self, block: nn.Module, lib, keep: list) -> None:
        if type(block) is not SLSTMBlock or type(block.slstm) is not SLSTMLayer or type(block.ffn) is not GatedFeedForward:
            raise _NotPlain(f"{type(block).__name__}")
        s = block.slstm
        if s.matmul_dtype != torch.float32 or s.head_dim % 8 or backends.resolve(s.backend, _CPU_PROBE) != "cpu":
            raise _NotPlain("the sLSTM layer's settings")
        self.norm_slstm, self.norm_ffn = _Norm(block.norm_slstm, keep), _Norm(block.norm_ffn, keep)
        projection, recurrent = s._inference_weights()
        if not projection.is_contiguous():
            raise _NotPlain("the input projection")
        self.heads, self.dh = s.num_heads, s.head_dim
        self.projection = _held(projection, keep)
        self.bf16 = s.recurrence_dtype == "bfloat16"  # rounded pre-activations, emulated bfloat16 recurrence
        r, pairs = kernel_recurrent_operands(recurrent, self.bf16, lib)
        self.recurrent, self.pairs = _held(r, keep), None if pairs is None else _held(pairs, keep)
        self.bias = _held(s.bias.detach().float().contiguous(), keep)
        self.group_norm = _held(s.norm_weight.detach().float().contiguous(), keep)
        self.gate, self.up, self.down = (_Linear(block.ffn.gate, keep), _Linear(block.ffn.up, keep),
                                         _Linear(block.ffn.down, keep))
        self.ffn_dim = self.gate.out_features


_CPU_PROBE = torch.empty(0)


class _NotPlain(Exception):
    """A part of the model the prepared forward does not run (the layer-by-layer path does)."""


def _held(t: torch.Tensor, keep: list) -> int:
    """The address of ``t``'s data, which the prepared forward keeps alive (a detached view holds the memory
    even where a parameter is given new data meanwhile)."""
    keep.append(t.detach())
    return t.data_ptr()


class CompiledForward:
    """``TiRexModel.forward`` without grad on CPU as kernel calls on prepared addresses (see the module
    docstring). Immutable once prepared; temporaries come from the calling thread's ``inference.workspace``."""

    def __init__(self, model: nn.Module, dispatch) -> None:
        self.dispatch, self.lib = dispatch, dispatch.library
        self._keep: list[torch.Tensor] = []
        self.embedding = _Residual(model.patch_embedding, self._keep)
        self.blocks = [_Block(b, self.lib, self._keep) for b in model.blocks]
        self.out_norm = _Norm(model.out_norm, self._keep)
        self.head = _Residual(model.head, self._keep)
        self.embed_dim = self.embedding.residual.out_features
        self.quantiles, self.patch_size = len(model.config.quantile_levels), model.config.patch_size
        if not self.blocks or any(b.heads * b.dh != self.embed_dim for b in self.blocks):
            raise _NotPlain("the block sizes")

    @classmethod
    def prepare(cls, model: nn.Module, dispatch) -> "CompiledForward | None":
        """The prepared forward, or None where some part needs the layer-by-layer path."""
        if dispatch.library is None or dispatch.matmuls != "compiled":
            return None
        if any(p.dtype != torch.float32 or p.device.type != "cpu" for p in model.parameters()):
            return None
        if _hooked(model):
            return None
        try:
            with torch.no_grad():
                return cls(model, dispatch)
        except _NotPlain:
            return None

    def takes(self, tokens: torch.Tensor, last_tokens: int | None) -> bool:
        """Whether this input runs here (else the layer-by-layer path, which handles every input)."""
        return (tokens.dtype == torch.float32 and tokens.device.type == "cpu" and tokens.dim() == 3
                and tokens.shape[0] > 0 and tokens.shape[1] > 0 and tokens.shape[2] == 2 * self.patch_size
                and (last_tokens is None or last_tokens > 0))

    def __call__(self, tokens: torch.Tensor, states: list[SLSTMState] | None, last_tokens: int | None,
                 return_hidden: bool, snapshot_at: int | None):
        """(quantiles (batch, kept tokens, Q, P) or the blocks' outputs, final states, snapshot states):
        the values ``TiRexModel.forward`` returns with the same arguments."""
        batch, steps, width = tokens.shape
        if snapshot_at is not None and not 1 <= snapshot_at <= steps:
            raise ValueError(f"snapshot_at must be in 1 ... {steps}, got {snapshot_at}")
        if states is not None and len(states) != len(self.blocks):
            raise ValueError(f"expected {len(self.blocks)} block states, got {len(states)}")
        lib, threads, e = self.lib, inference.kernel_threads(), self.embed_dim
        rows = batch * steps
        kept = steps if return_hidden or last_tokens is None else min(last_tokens, steps)
        new_states, snapshots, hidden = [], [], []
        with inference.workspace():
            stream = [inference.buffer("stream_a", (rows, e)), inference.buffer("stream_b", (rows, e))]
            self._residual(self.embedding, tokens.reshape(rows, width).contiguous(), stream[0], threads)
            for i, block in enumerate(self.blocks):
                h, out = stream[i % 2], stream[(i + 1) % 2]
                state = kernel_states(None if states is None else states[i], block.heads, batch, block.dh)
                snap = None if snapshot_at is None else torch.empty(4, block.heads, batch, block.dh)
                self._recurrence(block, h, out, state, states is None, snap, snapshot_at, batch, steps, threads)
                new_states.append(SLSTMState(*state.unbind(0)))
                if snap is not None:
                    snapshots.append(SLSTMState(*snap.unbind(0)))
                if i == len(self.blocks) - 1 and kept < steps:  # the FFN only where the head will read
                    out = out.view(batch, steps, e)[:, -kept:].contiguous().view(batch * kept, e)
                self._ffn(block, out, threads)
                if return_hidden:
                    hidden.append(out.view(batch, steps, e).clone())
            if return_hidden:
                return hidden, new_states, snapshots
            norm = torch.empty(out.shape)
            lib.tirex_rms_norm(out.data_ptr(), self.out_norm.weight, norm.data_ptr(), out.shape[0], e,
                               self.out_norm.eps, 0, 1, threads)
            result = torch.empty(out.shape[0], self.head.output.out_features)
            self._residual(self.head, norm, result, threads)
        return result.view(batch, kept, self.quantiles, self.patch_size), new_states, snapshots

    def _recurrence(self, block: _Block, h, out, state, fresh: bool, snap, snapshot_at, batch: int, steps: int,
                    threads: int) -> None:
        """out = h + group_norm(sLSTM(W norm(h))), the state updated in place (``SLSTMBlock``'s first half)."""
        lib, rows, heads, dh = self.lib, batch * steps, block.heads, block.dh
        norm = inference.buffer("norm", (heads, rows, dh))
        lib.tirex_rms_norm(h.data_ptr(), block.norm_slstm.weight, norm.data_ptr(), rows, heads * dh,
                           block.norm_slstm.eps, 0, heads, threads)
        # the rounded pre-activations in bfloat16 where the recurrence reads them so (half the memory); the
        # buffer the feed-forward's hidden layer uses next
        wx = (inference.buffer("scratch", (heads, rows, 2 * dh)).view(torch.bfloat16) if block.bf16
              else inference.buffer("scratch", (heads, rows, 4 * dh)))
        status = lib.tirex_gemm_heads(norm.data_ptr(), dh, rows * dh, block.projection, 4 * dh, dh * 4 * dh,
                                      wx.data_ptr(), 4 * dh, rows * 4 * dh, heads, rows, 4 * dh, dh,
                                      GEMM_STORE_BF16 if block.bf16 else GEMM_STORE, threads)
        if status != 0:
            raise RuntimeError(f"tirex_gemm_heads failed with status {status}")
        status = lib.tirex_slstm_forward(
            wx.data_ptr(), int(block.bf16), block.recurrent, block.pairs, block.bias, state.data_ptr(),
            out.data_ptr(), block.group_norm, h.data_ptr(), GROUP_NORM_EPS, heads, batch, steps, dh,
            int(fresh), int(block.bf16), threads, None if snap is None else snap.data_ptr(), snapshot_at or 0)
        if status != 0:
            raise RuntimeError(f"tirex_slstm_forward failed with status {status}")

    def _ffn(self, block: _Block, h: torch.Tensor, threads: int) -> None:
        """h += FFN(norm(h)) in place, in chunks of rows (``inference.ffn_residual_``)."""
        lib, e, f = self.lib, self.embed_dim, block.ffn_dim
        for start in range(0, h.shape[0], ROWS_PER_CHUNK):
            n = min(ROWS_PER_CHUNK, h.shape[0] - start)
            x = h.data_ptr() + start * e * FLOAT_BYTES
            norm, gate = inference.buffer("norm", (n, e)), inference.buffer("scratch", (n, f))
            lib.tirex_rms_norm(x, block.norm_ffn.weight, norm.data_ptr(), n, e, block.norm_ffn.eps, 0, 1, threads)
            lib.tirex_gemm(norm.data_ptr(), e, block.gate.weight, block.up.weight, f, None, gate.data_ptr(), f,
                           n, f, e, GEMM_SWIGLU, threads)
            lib.tirex_gemm(gate.data_ptr(), f, block.down.weight, None, e, None, x, e, n, e, f, GEMM_ACCUMULATE,
                           threads)

    def _residual(self, block: _Residual, u: torch.Tensor, out: torch.Tensor, threads: int) -> None:
        """out = block(u) for contiguous (rows, in) u and (rows, out) out (``inference.residual_block``)."""
        lib, k, o, hd = self.lib, block.hidden.in_features, block.output.out_features, block.hidden.out_features
        for start in range(0, u.shape[0], ROWS_PER_CHUNK):
            n = min(ROWS_PER_CHUNK, u.shape[0] - start)
            x, dst = u.data_ptr() + start * k * FLOAT_BYTES, out.data_ptr() + start * o * FLOAT_BYTES
            hidden = inference.buffer("scratch", (n, hd))
            lib.tirex_gemm(x, k, block.hidden.weight, None, hd, block.hidden.bias, hidden.data_ptr(), hd, n, hd, k,
                           GEMM_RELU, threads)
            lib.tirex_gemm(x, k, block.residual.weight, None, o, block.residual.bias, dst, o, n, o, k, GEMM_STORE,
                           threads)
            lib.tirex_gemm(hidden.data_ptr(), hd, block.output.weight, None, o, block.output.bias, dst, o, n, o, hd,
                           GEMM_ACCUMULATE, threads)

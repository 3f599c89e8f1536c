"""The CPU inference forward as compiled-kernel calls on operands prepared once per model.

The no-grad path of ``TiRexModel.forward`` (``tirex.inference``) decides at every layer of every forward
which kernels apply, looks up cached weights and wraps each kernel call in tensor views: about 0.3 ms of
Python per block and forward, and Python code that runs right after a large matmul runs 5-8x slower than
usual (the matmul has evicted it from the caches). Where every layer runs on the compiled CPU kernels with
float32 weight matmuls - the default wherever a kernel level exists - those decisions and the weights'
addresses stay fixed until a parameter, a module, a setting or the kernels change. ``CompiledForward``
takes them once (``BlockOperands`` per block); a forward is then the patch embedding's matmuls, one kernel
call that runs every block (``tirex_blocks_forward``: norm, head-wise projection, recurrence with its group
norm and residual, feed-forward) without coming back to Python, and the head. The same calls in the same
order on the same operands as the layer-by-layer path: the same bits (tested on every kernel level).

Anything else takes the layer-by-layer path: the fast mode, torch's matmuls (``TIREX_CPU_GEMM=0``), an
sLSTM backend other than the CPU kernel, weights that are not float32 ``nn.Linear`` matrices (a replaced or
wrapped layer), head sizes the kernel does not take, and forward hooks on any submodule (they run).
"""

from __future__ import annotations

import ctypes
import threading
import weakref

import torch
from torch import nn
from torch.nn.modules import module as torch_module

from . import backends, inference
from .inference import ROWS_PER_CHUNK
from .layers import PLAIN_LINEAR, GatedFeedForward, ResidualBlock, RMSNorm
from .slstm import GROUP_NORM_EPS, SLSTMBlock, SLSTMLayer, SLSTMState, kernel_recurrent_operands, kernel_states

FLOAT_BYTES = 4


def compiled_forward(model: nn.Module) -> "CompiledForward | None":
    """The model's prepared CPU forward for the kernels in use, or None where the layer-by-layer path must
    run. Checked on every call (tens of microseconds); prepared again after any change."""
    dispatch = inference.dispatch()
    cached = _prepared.get(model)
    if cached is not None and cached[0].unchanged(dispatch):
        return cached[1]
    with _prepare_lock:  # one preparation at a time (the layout change below moves weights)
        inference.return_large_blocks_to_the_os()  # the allocator settings the layer-by-layer path applies too
        inference.use_matmul_layout_(model)
        watch = _Watch(model, dispatch)
        # forward hooks on a submodule run only layer by layer
        _prepared[model] = (watch, None if watch.hooked() else CompiledForward.prepare(model, dispatch))
    return _prepared[model][1]


# by model, outside it (nothing to copy or pickle with it) and weakly (nothing kept alive: the entry holds
# the model's submodules, parameters and kernels, never the model)
_prepared: "weakref.WeakKeyDictionary[nn.Module, tuple]" = weakref.WeakKeyDictionary()
_prepare_lock = threading.Lock()


class _Watch:
    """What a prepared forward depends on: the kernels, the default sLSTM backend, forward hooks, and for
    the model and every submodule its children and parameters (object, in-place version, memory), the
    settings of its sLSTM layers and the norms' eps. Recorded when it is prepared, compared on every call;
    it holds the dispatch, submodules and parameters, so their ids cannot be reused meanwhile (the model is
    not held: its id is ``_prepared``'s key)."""

    def __init__(self, model: nn.Module, dispatch) -> None:
        self._dispatch = dispatch
        modules = [m for m in model.modules() if m is not model]
        # (dict, name) of every child module and parameter: the objects found there must stay the same
        self._dicts = [d for m in (model, *modules) for d in (m._modules, m._parameters)]
        self._slots = [(d, name) for d in self._dicts for name in d]
        self._held = [d[name] for d, name in self._slots]
        self._params = [p for p in self._held if isinstance(p, nn.Parameter)]
        self._hookable = modules  # the model's own hooks run anyway
        self._layers = [m for m in modules if isinstance(m, SLSTMLayer)]
        self._norms = [m for m in modules if isinstance(m, RMSNorm)]
        self._state = self._now(dispatch)

    def _now(self, dispatch) -> tuple | None:
        try:
            found = [id(d[name]) for d, name in self._slots]
        except KeyError:  # a module or parameter was deleted
            return None
        return (id(dispatch), backends.default_backend(), self.hooked(), found,
                [len(d) for d in self._dicts],  # one added (a block appended to the list, say)
                [(p._version, p.data_ptr()) for p in self._params],
                [(m.matmul_dtype, m.recurrence_dtype, m.backend) for m in self._layers],
                [m.eps for m in self._norms])

    def unchanged(self, dispatch) -> bool:
        return self._now(dispatch) == self._state

    def hooked(self) -> bool:
        """Whether a forward hook would run inside the model's forward (its own run in any case)."""
        return _global_hooks() or bool([m for m in self._hookable if m._forward_hooks or m._forward_pre_hooks])


def _global_hooks() -> bool:
    """Whether forward hooks for every module are registered (``nn.modules.module.register_module_forward_hook``)."""
    return bool(getattr(torch_module, "_global_forward_hooks", None) or
                getattr(torch_module, "_global_forward_pre_hooks", None))


class _Linear:
    """An ``nn.Linear`` as the compiled matmul reads it: the address of its (in, out) row-major weight."""

    def __init__(self, layer: nn.Module, keep: list) -> None:
        if type(layer) not in PLAIN_LINEAR or not inference._matmul_ready(layer.weight):
            raise _NotPlain(f"{layer!r}")
        self.weight = _held(layer.weight, keep)
        self.bias = None if layer.bias is None else _held(layer.bias, keep)
        self.out_features, self.in_features = layer.weight.shape


class _Norm:
    def __init__(self, norm: nn.Module, keep: list) -> None:
        if not inference.plain(norm, RMSNorm):
            raise _NotPlain(f"{norm!r}")
        self.weight, self.eps = _held(norm.weight, keep), norm.eps


class _Residual:
    """A ``ResidualBlock``: out = W_r u + b_r + W_o relu(W_h u + b_h) + b_o."""

    def __init__(self, block: nn.Module, keep: list) -> None:
        if not inference.plain(block, ResidualBlock):
            raise _NotPlain(f"{block!r}")
        self.hidden, self.output, self.residual = (_Linear(block.hidden, keep), _Linear(block.output, keep),
                                                   _Linear(block.residual, keep))


class BlockOperands(ctypes.Structure):
    """One block's operands as the kernel's ``tirex_blocks_forward`` reads them (its ``TirexBlock``)."""

    _fields_ = [(name, ctypes.c_void_p) for name in ("norm_slstm", "projection", "recurrent", "pairs", "bias",
                                                     "group_norm", "norm_ffn", "gate", "up", "down")]
    _fields_ += [("eps_slstm", ctypes.c_float), ("eps_ffn", ctypes.c_float)]
    _fields_ += [(name, ctypes.c_int) for name in ("heads", "head_dim", "ffn_dim", "bf16")]


class _Block:
    """An ``SLSTMBlock``: the two norms, the head-wise projection, the recurrence's operands, the FFN."""

    def __init__(self, block: nn.Module, lib, keep: list) -> None:
        if type(block) is not SLSTMBlock or type(block.slstm) is not SLSTMLayer or not inference.plain(
                block.ffn, GatedFeedForward):
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

    def operands(self) -> BlockOperands:
        return BlockOperands(self.norm_slstm.weight, self.projection, self.recurrent, self.pairs, self.bias,
                             self.group_norm, self.norm_ffn.weight, self.gate.weight, self.up.weight, self.down.weight,
                             self.norm_slstm.eps, self.norm_ffn.eps, self.heads, self.dh, self.ffn_dim, int(self.bf16))


_CPU_PROBE = torch.empty(0)


class _NotPlain(Exception):
    """A part of the model the prepared forward does not run (the layer-by-layer path does)."""


def _pointers(tensors: list) -> ctypes.Array:
    """A C array of the tensors' data addresses (null for None)."""
    return (ctypes.c_void_p * len(tensors))(*(None if t is None else t.data_ptr() for t in tensors))


def _held(t: torch.Tensor, keep: list) -> int:
    """The address of ``t``'s data, which the prepared forward keeps alive (a detached view holds the memory
    even where a parameter is given new data meanwhile)."""
    keep.append(t.detach())
    return t.data_ptr()


class CompiledForward:
    """``TiRexModel.forward`` without grad on CPU as kernel calls on prepared addresses (see the module
    docstring). Immutable once prepared; temporaries come from the calling thread's ``inference.workspace``."""

    def __init__(self, model: nn.Module, dispatch) -> None:
        self.lib = dispatch.library
        self._keep: list[torch.Tensor] = []
        self.embedding = _Residual(model.patch_embedding, self._keep)
        self.blocks = [_Block(b, self.lib, self._keep) for b in model.blocks]
        self.out_norm = _Norm(model.out_norm, self._keep)
        self.head = _Residual(model.head, self._keep)
        self.embed_dim = self.embedding.residual.out_features
        self.quantiles, self.patch_size = len(model.config.quantile_levels), model.config.patch_size
        if not self.blocks or any(b.heads * b.dh != self.embed_dim for b in self.blocks):
            raise _NotPlain("the block sizes")
        self.operands = (BlockOperands * len(self.blocks))(*(b.operands() for b in self.blocks))

    @classmethod
    def prepare(cls, model: nn.Module, dispatch) -> "CompiledForward | None":
        """The prepared forward, or None where some part needs the layer-by-layer path."""
        if dispatch.library is None or dispatch.matmuls != "compiled":
            return None
        if any(p.dtype != torch.float32 or p.device.type != "cpu" for p in model.parameters()):
            return None
        try:
            with torch.no_grad():
                return cls(model, dispatch)
        except _NotPlain:
            return None

    def takes(self, last_tokens: int | None) -> bool:
        """Whether a forward with ``last_tokens`` runs here (else the layer-by-layer path, which handles every
        input). The tokens come checked by ``TiRexModel.forward`` (``tirex.validation.check_tokens``: float32 on the
        model's device, (batch >= 1, tokens >= 1, 2 * patch_size)); what is left is ``last_tokens``."""
        return last_tokens is None or last_tokens > 0

    def __call__(self, tokens: torch.Tensor, states: list[SLSTMState] | None, last_tokens: int | None,
                 return_hidden: bool, snapshot_at: int | None):
        """(quantiles (batch, kept tokens, Q, P) or the blocks' outputs, final states, snapshot states):
        the values ``TiRexModel.forward`` returns with the same arguments."""
        batch, steps, width = tokens.shape
        if snapshot_at is not None and not 1 <= snapshot_at <= steps:
            raise ValueError(f"snapshot_at must be in 1 ... {steps}, got {snapshot_at}")
        if states is not None and len(states) != len(self.blocks):
            raise ValueError(f"expected {len(self.blocks)} block states, got {len(states)}")
        lib, threads, e, n = self.lib, inference.kernel_threads(), self.embed_dim, len(self.blocks)
        rows = batch * steps
        kept = steps if return_hidden or last_tokens is None else min(last_tokens, steps)
        new_states = [kernel_states(None if states is None else s, b.heads, batch, b.dh)
                      for s, b in zip(states or [None] * n, self.blocks)]
        snaps = [None if snapshot_at is None else torch.empty(4, b.heads, batch, b.dh) for b in self.blocks]
        hidden = [torch.empty(batch, steps, e) for _ in self.blocks] if return_hidden else [None] * n
        with inference.workspace():
            stream = [inference.buffer("stream_a", (rows, e)), inference.buffer("stream_b", (rows, e))]
            self._residual(self.embedding, tokens.reshape(rows, width).contiguous(), stream[0], threads)
            last = inference.buffer("last", (batch * kept, e)) if kept < steps else None
            norm = inference.buffer("norm", (rows * e,))
            # the pre-activations (bfloat16 where rounded so: half the memory), then the FFN's hidden layer
            scratch = inference.buffer("scratch", (max(max(b.heads * rows * 4 * b.dh // (2 if b.bf16 else 1),
                                                           min(rows, ROWS_PER_CHUNK) * b.ffn_dim)
                                                       for b in self.blocks),))
            status = lib.tirex_blocks_forward(
                ctypes.addressof(self.operands), n, _pointers(new_states), _pointers(snaps), _pointers(hidden),
                stream[0].data_ptr(), stream[1].data_ptr(), None if last is None else last.data_ptr(),
                norm.data_ptr(), scratch.data_ptr(), batch, steps, e, kept, int(states is None), snapshot_at or 0,
                GROUP_NORM_EPS, ROWS_PER_CHUNK, threads)
            if status != 0:
                raise RuntimeError(f"tirex_blocks_forward failed with status {status}")
            new_states = [SLSTMState(*s.unbind(0)) for s in new_states]
            snapshots = [SLSTMState(*s.unbind(0)) for s in snaps] if snapshot_at is not None else []
            if return_hidden:
                return hidden, new_states, snapshots
            out = last if last is not None else stream[n % 2]
            out_norm = torch.empty(out.shape)
            lib.tirex_rms_norm(out.data_ptr(), self.out_norm.weight, out_norm.data_ptr(), out.shape[0], e,
                               self.out_norm.eps, 0, 1, threads)
            result = torch.empty(out.shape[0], self.head.output.out_features)
            self._residual(self.head, out_norm, result, threads)
        return result.view(batch, kept, self.quantiles, self.patch_size), new_states, snapshots

    def _residual(self, block: _Residual, u: torch.Tensor, out: torch.Tensor, threads: int) -> None:
        """out = block(u) for contiguous (rows, in) u and (rows, out) out (``inference.residual_block``)."""
        k, o, hd = block.hidden.in_features, block.output.out_features, block.hidden.out_features
        weights = [(layer.weight, layer.bias) for layer in (block.hidden, block.residual, block.output)]
        for start in range(0, u.shape[0], ROWS_PER_CHUNK):
            n = min(ROWS_PER_CHUNK, u.shape[0] - start)
            inference.residual_gemms(self.lib, u.data_ptr() + start * k * FLOAT_BYTES,
                                     out.data_ptr() + start * o * FLOAT_BYTES,
                                     inference.buffer("scratch", (n, hd)).data_ptr(), n, weights, threads, k, hd, o)

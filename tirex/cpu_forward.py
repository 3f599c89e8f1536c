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

import threading
import weakref

import torch
from torch import nn
from torch.nn.modules import module as torch_module

from . import backends, inference
from .kernel_forward import BlockOperands, KernelForward, LinearOperand, ResidualOperands
from .layers import PLAIN_LINEAR, GatedFeedForward, ResidualBlock, RMSNorm
from .slstm import SLSTMBlock, SLSTMLayer, SLSTMState, kernel_recurrent_operands, kernel_states


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


def _linear(layer: nn.Module, keep: list) -> LinearOperand:
    """An ``nn.Linear`` as the compiled matmul reads it: the address of its (in, out) row-major weight."""
    if type(layer) not in PLAIN_LINEAR or not inference._matmul_ready(layer.weight):
        raise _NotPlain(f"{layer!r}")
    bias = None if layer.bias is None else _held(layer.bias, keep)
    return LinearOperand(_held(layer.weight, keep), bias, layer.in_features, layer.out_features)


def _norm(norm: nn.Module, keep: list) -> tuple[int, float]:
    """An ``RMSNorm``: (the address of its weight, its eps)."""
    if not inference.plain(norm, RMSNorm):
        raise _NotPlain(f"{norm!r}")
    return _held(norm.weight, keep), norm.eps


def _residual(block: nn.Module, keep: list) -> ResidualOperands:
    if not inference.plain(block, ResidualBlock):
        raise _NotPlain(f"{block!r}")
    return ResidualOperands(_linear(block.hidden, keep), _linear(block.output, keep), _linear(block.residual, keep))


def _block(block: nn.Module, lib, keep: list) -> BlockOperands:
    """An ``SLSTMBlock``: the two norms, the head-wise projection, the recurrence's operands, the FFN."""
    if type(block) is not SLSTMBlock or type(block.slstm) is not SLSTMLayer or not inference.plain(
            block.ffn, GatedFeedForward):
        raise _NotPlain(f"{type(block).__name__}")
    s = block.slstm
    if s.matmul_dtype != torch.float32 or s.head_dim % 8 or backends.resolve(s.backend, _CPU_PROBE) != "cpu":
        raise _NotPlain("the sLSTM layer's settings")
    (norm_slstm, eps_slstm), (norm_ffn, eps_ffn) = _norm(block.norm_slstm, keep), _norm(block.norm_ffn, keep)
    projection, recurrent = s._inference_weights()
    if not projection.is_contiguous():
        raise _NotPlain("the input projection")
    bf16 = s.recurrence_dtype == "bfloat16"  # rounded pre-activations, emulated bfloat16 recurrence
    r, pairs = kernel_recurrent_operands(recurrent, bf16, lib)
    gate, up, down = _linear(block.ffn.gate, keep), _linear(block.ffn.up, keep), _linear(block.ffn.down, keep)
    return BlockOperands(norm_slstm, _held(projection, keep), _held(r, keep),
                         None if pairs is None else _held(pairs, keep),
                         _held(s.bias.detach().float().contiguous(), keep),
                         _held(s.norm_weight.detach().float().contiguous(), keep), norm_ffn, gate.weight, up.weight,
                         down.weight, eps_slstm, eps_ffn, s.num_heads, s.head_dim, gate.out_features, int(bf16))


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
    docstring; the calls themselves: ``tirex.kernel_forward.KernelForward``). Immutable once prepared;
    temporaries come from the calling thread's ``inference.workspace``."""

    def __init__(self, model: nn.Module, dispatch) -> None:
        self._keep: list[torch.Tensor] = []
        lib = dispatch.library
        blocks = [_block(b, lib, self._keep) for b in model.blocks]
        try:
            self.kernels = KernelForward(lib, _residual(model.patch_embedding, self._keep), blocks,
                                         _norm(model.out_norm, self._keep), _residual(model.head, self._keep),
                                         len(model.config.quantile_levels), model.config.patch_size)
        except ValueError as exc:  # the block sizes
            raise _NotPlain(str(exc)) from exc

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
        k = self.kernels
        batch, steps, width = tokens.shape
        if snapshot_at is not None and not 1 <= snapshot_at <= steps:
            raise ValueError(f"snapshot_at must be in 1 ... {steps}, got {snapshot_at}")
        if states is not None and len(states) != k.num_blocks:
            raise ValueError(f"expected {k.num_blocks} block states, got {len(states)}")
        n, e, blocks = k.num_blocks, k.embed_dim, k.operands
        kept = steps if return_hidden or last_tokens is None else min(last_tokens, steps)
        new_states = [kernel_states(None if states is None else s, b.heads, batch, b.head_dim)
                      for s, b in zip(states or [None] * n, blocks)]
        snaps = [None if snapshot_at is None else torch.empty(4, b.heads, batch, b.head_dim) for b in blocks]
        hidden = [torch.empty(batch, steps, e) for _ in blocks] if return_hidden else [None] * n
        result = None if return_hidden else torch.empty(batch * kept, k.quantiles * k.patch_size)
        tokens = tokens.reshape(batch * steps, width).contiguous()
        with inference.workspace():
            k.run(tokens.data_ptr(), batch, steps, kept, [s.data_ptr() for s in new_states], states is None,
                  [None if s is None else s.data_ptr() for s in snaps],
                  [None if h is None else h.data_ptr() for h in hidden], snapshot_at or 0,
                  None if result is None else result.data_ptr(),
                  lambda name, floats: inference.buffer(name, (floats,)).data_ptr(), inference.kernel_threads())
        new_states = [SLSTMState(*s.unbind(0)) for s in new_states]
        snapshots = [SLSTMState(*s.unbind(0)) for s in snaps] if snapshot_at is not None else []
        if return_hidden:
            return hidden, new_states, snapshots
        return result.view(batch, kept, k.quantiles, k.patch_size), new_states, snapshots

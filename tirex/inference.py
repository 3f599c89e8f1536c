"""The no-grad fast path around the recurrence: fused norms, in-place chunked feed-forward, bfloat16 option.

Training runs the plain modules (autograd). At inference the same maths runs with fewer, larger
ops: RMSNorm and the SwiGLU activation are single passes of the compiled CPU helpers
(``tirex.cpu_kernel``; torch ops elsewhere), the feed-forward adds into the residual stream in place
(inside the down-projection matmul), and rows are processed in chunks so that temporaries stay
bounded for large batches. The weight matmuls themselves run in the compiled kernel (``tirex_gemm``,
with the activation, residual add and biases fused in; see ``gemm_enabled``), whose outputs do not
depend on the other rows of the batch. Results equal the plain modules' up to float32 rounding order.

Nothing here changes process-wide state during a forward: thread counts are read, never set, and
temporaries and the chosen kernels are per Python thread, so concurrent forecasts from several
threads give the results of sequential ones.

``matmul_dtype=torch.bfloat16`` is the opt-in fast mode (``TiRexModel.set_fast_mode``): the weight
matmuls outside the recurrence take bfloat16 operands (float32 accumulation); norms, residual sums
and the bfloat16-emulating recurrence are unchanged.
"""

from __future__ import annotations

import contextlib
import math
import threading

import torch
import torch.nn.functional as F
from torch import nn

from . import cpu_kernel
from .cpus import capped_threads
from .kernel_forward import (GEMM_ACCUMULATE, GEMM_STORE, GEMM_STORE_BF16, GEMM_SWIGLU, ROWS_PER_CHUNK,
                             residual_gemms, return_large_blocks_to_the_os)
from .layers import PLAIN_LINEAR, GatedFeedForward, ResidualBlock, RMSNorm


def kernel_threads() -> int:
    """Threads for the compiled kernels: torch's count (``torch.set_num_threads``), read, never changed,
    at most the CPUs this process may use (``tirex.cpus``: its affinity mask and a container's CPU quota,
    which torch's default ignores; on a 1-CPU quota two threads made a batch-1 forecast 1.3x slower).

    The recurrence splits heads (and blocks of series) across threads that run every time step without
    meeting again, the matmuls split columns (each thread reads only its share of the weights), and
    their thread pool never waits for a worker that has not started (a worker the OS does not schedule
    in time costs nothing), so they gain from every core even at batch 1. Small jobs run on one thread
    inside the kernel. Results never depend on the count."""
    return capped_threads(torch.get_num_threads())


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 matrices natively (oneDNN's check: AVX512-BF16 or AMX on x86, the
    BF16 extension on ARM Linux, e.g. Neoverse V1/V2).
    Elsewhere torch emulates them: 8 GFLOP/s against 45 for float32 on an AMD Zen 3 core."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


_local = threading.local()


@contextlib.contextmanager
def workspace():
    """Within one forward, hand out the same memory for the large temporaries of every block.

    A fresh multi-megabyte tensor costs page faults on first touch (the allocator returns such
    blocks to the OS, see ``return_large_blocks_to_the_os``): up to 15% of a matmul writing into
    it. Buffers live until the outermost ``workspace`` exits; per thread, so concurrent forecasts in
    other Python threads never share them. Names are shared by temporaries that are never alive at
    the same time: "norm" (a norm's output, read by the next matmul), "scratch" (the input
    projection, the FFN gate, a residual block's hidden layer), "scratch_2" (the FFN up projection),
    and the two residual-stream buffers of ``stream_buffer``.
    """
    if getattr(_local, "buffers", None) is not None:  # nested: the outer one owns the buffers
        yield
        return
    _local.buffers = {}
    _local.dispatch = cpu_kernel.active()  # one forward uses one set of kernels, whatever select() does meanwhile
    try:
        yield
    finally:
        _local.buffers = None
        _local.dispatch = None


def buffer(name: str, shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """An uninitialised CPU tensor; inside ``workspace()`` the same memory for the same ``name``."""
    buffers = getattr(_local, "buffers", None)
    if buffers is None:
        return torch.empty(shape, dtype=dtype)
    numel = math.prod(shape)
    flat = buffers.get((name, dtype))
    if flat is None or flat.numel() < numel:
        flat = buffers[(name, dtype)] = torch.empty(numel, dtype=dtype)
    return flat[:numel].view(shape)


def stream_buffer(shape: tuple[int, ...], avoid: torch.Tensor | None) -> torch.Tensor:
    """One of two alternating residual-stream buffers: the one not holding ``avoid`` (a block's input)."""
    first = buffer("stream_a", shape)
    if avoid is not None and first.data_ptr() == avoid.data_ptr():
        return buffer("stream_b", shape)
    return first


def cast_weight(weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``weight`` in ``dtype``, cached on the tensor until it is modified (fine-tuning invalidates it)."""
    if weight.dtype == dtype:
        return weight
    key = (dtype, weight._version, weight.data_ptr(), weight.device)
    cached = getattr(weight, "_tirex_cast", None)
    if cached is None or cached[0] != key:
        cached = (key, weight.detach().to(dtype))
        weight._tirex_cast = cached  # plain attribute: not part of the state dict
    return cached[1]


def linear(x: torch.Tensor, layer: nn.Linear, dtype: torch.dtype, out: torch.Tensor | None = None) -> torch.Tensor:
    """``layer(x)`` for 2-D x with matmul operands in ``dtype``; float32 result (into ``out`` if given).

    torch.mm / addmm with a transposed weight view: 25% faster than F.linear on torch 2.13's CPU path.
    """
    if dtype == torch.float32:
        if layer.bias is None:
            return torch.mm(x, layer.weight.t(), out=out)
        return torch.addmm(layer.bias, x, layer.weight.t(), out=out)
    out = F.linear(x.to(dtype), cast_weight(layer.weight, dtype))
    out = out.float()
    return out if layer.bias is None else out.add_(layer.bias)


def use_matmul_layout_(model: nn.Module) -> None:
    """Store every CPU ``nn.Linear`` weight column-major, in place (same shape and values, strides swapped).

    The inference matmuls read ``weight.t()``; as a contiguous (in, out) matrix that is the layout
    the compiled matmuls read and oneDNN/MKL multiply fastest: 25-35% faster at 64 rows (a batch-1
    forecast), 4% at 2048, measured on torch 2.13. The parameters stay the same objects (optimizers,
    state dicts and autograd are unaffected; saving writes contiguous copies). Cheap to call again:
    converted weights are skipped. Serialised, so that a forecast in another thread never reads a
    weight whose memory is being swapped.
    """
    with _layout_lock:
        for module in model.modules():
            if isinstance(module, nn.Linear):
                weight = module.weight
                # checked on the parameter itself: `.data` makes a new tensor object per call (every forward)
                if weight.device.type == "cpu" and _row_major_matrix(weight):
                    module.weight.data = column_major(weight.data)


_layout_lock = threading.Lock()


def _row_major_matrix(weight: torch.Tensor) -> bool:
    """A contiguous (row-major) matrix of at least two rows and columns: what ``column_major`` converts."""
    return weight.dim() == 2 and min(weight.shape) > 1 and weight.is_contiguous()


def column_major(weight: torch.Tensor) -> torch.Tensor:
    """A column-major copy of a contiguous matrix (same shape and values); anything else is returned as is."""
    if _row_major_matrix(weight):
        return weight.t().contiguous().t()
    return weight


def dispatch():
    """The CPU kernel dispatch of the running forward (``tirex.cpu_kernel.active()`` outside a forward)."""
    return getattr(_local, "dispatch", None) or cpu_kernel.active()


def compiled_kernels(x: torch.Tensor):
    """The compiled CPU helpers if they apply to ``x`` (float32 on CPU), else None."""
    if x.device.type != "cpu" or x.dtype != torch.float32:
        return None
    return_large_blocks_to_the_os()
    return dispatch().library


def plain(module: nn.Module, kind: type) -> bool:
    """Whether the fused paths here may read ``module``'s weights instead of calling it: exactly ``kind``
    (``nn.Linear``, ``RMSNorm``, ...), with plain ``nn.Linear`` layers inside. A subclass or a wrapper (an
    adapter such as LoRA, a quantised layer) has a forward of its own, and that forward then runs."""
    if type(module) is not kind:
        return False
    if kind is GatedFeedForward:
        return all(type(layer) in PLAIN_LINEAR for layer in (module.gate, module.up, module.down))
    if kind is ResidualBlock:
        return all(type(layer) in PLAIN_LINEAR for layer in (module.hidden, module.output, module.residual))
    return True


def rms_norm(
    x: torch.Tensor, norm: nn.Module, out_dtype: torch.dtype = torch.float32, heads: int = 1, name: str | None = None
) -> torch.Tensor:
    """Same formula as ``tirex.layers.RMSNorm``, in one pass over x, returned in ``out_dtype``.

    x: (..., dim) float32. With ``heads`` > 1 the result is head-major, (heads, rows, dim / heads),
    ready for the head-wise input projection (rows = all leading dimensions of x flattened).
    """
    lib = compiled_kernels(x)
    dim = x.shape[-1]
    rows = x.numel() // dim
    plain_norm = plain(norm, RMSNorm)  # else a wrapped norm: its own forward
    if not plain_norm or lib is None or out_dtype not in (torch.float32, torch.bfloat16):
        out = (F.rms_norm(x, (dim,), norm.weight, norm.eps) if plain_norm else norm(x)).to(out_dtype)
        return out if heads == 1 else out.reshape(rows, heads, dim // heads).transpose(0, 1).contiguous()
    x = x.contiguous()
    shape = tuple(x.shape) if heads == 1 else (heads, rows, dim // heads)
    out = buffer(name, shape, out_dtype) if name else torch.empty(shape, dtype=out_dtype)
    weight = norm.weight.detach().float().contiguous()
    lib.tirex_rms_norm(x.data_ptr(), weight.data_ptr(), out.data_ptr(), rows, dim, norm.eps,
                       int(out_dtype == torch.bfloat16), heads, kernel_threads())
    return out


def ffn_residual_(h: torch.Tensor, norm: nn.Module, ffn: nn.Module, dtype: torch.dtype) -> torch.Tensor:
    """``h += ffn(norm(h))`` in place, chunk by chunk of rows. h: (..., embed) contiguous float32."""
    flat = h.view(-1, h.shape[-1])
    if not (plain(ffn, GatedFeedForward) and plain(norm, RMSNorm)):  # a wrapped layer: its own forward
        for rows in flat.split(ROWS_PER_CHUNK):
            rows.add_(ffn(norm(rows)).float())
        return h
    lib = compiled_kernels(h)
    threads = kernel_threads()
    cpu32 = dtype == torch.float32 and h.device.type == "cpu"
    gemm = cpu32 and gemm_applies(lib, ffn.gate, ffn.up, ffn.down)
    for rows in flat.split(ROWS_PER_CHUNK):
        if lib is not None and dtype == torch.bfloat16:  # fast mode: bfloat16 end to end, no conversions
            x = rms_norm(rows, norm, dtype)
            gate = F.linear(x, cast_weight(ffn.gate.weight, dtype))
            up = F.linear(x, cast_weight(ffn.up.weight, dtype))
            lib.tirex_silu_mul_bf16(gate.data_ptr(), up.data_ptr(), gate.data_ptr(), gate.numel(), threads)
            down = F.linear(gate, cast_weight(ffn.down.weight, dtype))
            lib.tirex_add_bf16(rows.data_ptr(), down.data_ptr(), rows.numel(), threads)
            continue
        x = rms_norm(rows, norm, name="norm")
        hidden = (rows.shape[0], ffn.gate.out_features)
        if gemm:  # both projections and the activation in one pass; the residual add inside the down matmul
            gate = buffer("scratch", hidden)
            gemm_(lib, x, ffn.gate.weight, gate, GEMM_SWIGLU, second=ffn.up.weight)
            gemm_(lib, gate, ffn.down.weight, rows, GEMM_ACCUMULATE)
            continue
        gate = linear(x, ffn.gate, dtype, out=buffer("scratch", hidden) if cpu32 else None)
        up = linear(x, ffn.up, dtype, out=buffer("scratch_2", hidden) if cpu32 else None)
        if lib is None:
            gate = F.silu(gate, inplace=True).mul_(up)
        else:  # one pass instead of two
            lib.tirex_silu_mul(gate.data_ptr(), up.data_ptr(), gate.data_ptr(), gate.shape[0], gate.shape[1], threads)
        if dtype == torch.float32:
            rows.addmm_(gate, ffn.down.weight.t())  # the residual add happens inside the matmul
        else:
            rows.add_(linear(gate, ffn.down, dtype))
    return h


def residual_block(u: torch.Tensor, block: nn.Module, dtype: torch.dtype) -> torch.Tensor:
    """``tirex.layers.ResidualBlock`` forward, chunk by chunk of rows. u: (..., in)."""
    flat = u.reshape(-1, u.shape[-1])
    if not plain(block, ResidualBlock):  # a wrapped layer: its own forward
        return block(u).float()
    out = torch.empty(flat.shape[0], block.output.out_features, device=u.device)
    cpu32 = dtype == torch.float32 and u.device.type == "cpu"
    lib = compiled_kernels(flat) if cpu32 else None
    gemm = cpu32 and gemm_applies(lib, block.hidden, block.output, block.residual)
    for rows, dst in zip(flat.split(ROWS_PER_CHUNK), out.split(ROWS_PER_CHUNK)):
        hidden = buffer("scratch", (rows.shape[0], block.hidden.out_features)) if cpu32 else None
        if gemm:
            rows = rows.contiguous()
            weights = [(layer.weight.data_ptr(), None if layer.bias is None else layer.bias.data_ptr())
                       for layer in (block.hidden, block.residual, block.output)]
            residual_gemms(lib, rows.data_ptr(), dst.data_ptr(), hidden.data_ptr(), rows.shape[0], weights,
                           kernel_threads(), block.hidden.in_features, block.hidden.out_features,
                           block.output.out_features)
            continue
        hidden = F.relu(linear(rows, block.hidden, dtype, out=hidden), inplace=True)
        torch.add(linear(hidden, block.output, dtype), linear(rows, block.residual, dtype), out=dst)
    return out.view(*u.shape[:-1], -1)


# -- the compiled weight matmuls (tirex_gemm in the CPU kernel) ------------------------------------------
def gemm_enabled(lib) -> bool:
    """Whether the compiled weight matmuls are used: there is a kernel ``lib`` (from ``compiled_kernels``)
    and the dispatch gives it the matmuls (see ``tirex.cpu_kernel``: not with ``TIREX_CPU_GEMM=0``, not
    on a level without an FMA instruction)."""
    return lib is not None and dispatch().matmuls == "compiled"


def _matmul_ready(weight: torch.Tensor) -> bool:
    """A float32 CPU matrix whose transpose is row-major: how ``use_matmul_layout_`` stores weights."""
    return (weight.dtype == torch.float32 and weight.device.type == "cpu" and weight.dim() == 2
            and weight.stride(0) == 1 and weight.stride(1) == weight.shape[0])


def gemm_applies(lib, *layers: nn.Module) -> bool:
    """Whether ``layers`` (nn.Linear) run on the compiled matmuls. Whatever the number of rows: a row's
    result must not depend on which other rows share the matmul (batch composition)."""
    return gemm_enabled(lib) and all(_matmul_ready(layer.weight) for layer in layers)


def gemm_(lib, x: torch.Tensor, weight: torch.Tensor, out: torch.Tensor, mode: int,
          bias: torch.Tensor | None = None, second: torch.Tensor | None = None) -> None:
    """out (rows, out) [+]= x (rows, in) @ weight.t() with the kernel's epilogue ``mode``.

    ``weight`` (out, in) is stored column-major, so ``weight.t()`` is the row-major (in, out) matrix the
    kernel reads; ``second`` is the up projection of GEMM_SWIGLU. x and out need unit column strides.
    """
    rows, k = x.shape
    n = weight.shape[0]
    lib.tirex_gemm(x.data_ptr(), x.stride(0), weight.data_ptr(), None if second is None else second.data_ptr(),
                   n, None if bias is None else bias.data_ptr(), out.data_ptr(), out.stride(0), rows, n, k, mode,
                   kernel_threads())


def gemm_heads_(lib, x: torch.Tensor, weight: torch.Tensor, out: torch.Tensor) -> None:
    """out[h] = x[h] @ weight[h] for (heads, rows, in) x and contiguous (heads, in, out) weight; ``out``
    float32, or bfloat16 (rounded to nearest even). One kernel call: the heads share one thread-pool job."""
    heads, rows, k = x.shape
    n = weight.shape[2]
    mode = GEMM_STORE_BF16 if out.dtype == torch.bfloat16 else GEMM_STORE
    status = lib.tirex_gemm_heads(x.data_ptr(), x.stride(1), x.stride(0), weight.data_ptr(), weight.stride(1),
                                  weight.stride(0), out.data_ptr(), out.stride(1), out.stride(0), heads, rows, n, k,
                                  mode, kernel_threads())
    if status != 0:
        raise RuntimeError(f"tirex_gemm_heads failed with status {status}")

"""The compiled CPU forward as kernel calls on raw addresses: no torch here.

``tirex.cpu_forward`` prepares the operands from a ``TiRexModel`` (torch tensors) and ``tirex.lite`` from
the weights of a ``model.safetensors`` read into numpy arrays; both run the forward through ``KernelForward``,
so the two run the same kernel calls in the same order on the same values: the same bits. A forward is the
patch embedding's matmuls, one kernel call that runs every block (``tirex_blocks_forward``: norm, head-wise
projection, recurrence with its group norm and residual, feed-forward) and the quantile head.
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

FLOAT_BYTES = 4
ROWS_PER_CHUNK = 2048  # few, large ops: smaller chunks lose more to thread synchronisation than they gain in cache
GROUP_NORM_EPS = 1e-5  # the per-head group norm after the recurrence
RMS_NORM_EPS = 1e-6  # the blocks' and the output's RMSNorm

# the kernel's GemmMode (tirex_gemm's epilogue)
GEMM_STORE, GEMM_ACCUMULATE, GEMM_RELU, GEMM_SWIGLU, GEMM_STORE_BF16 = 0, 1, 2, 3, 4


_heap_tuned = False


HEAP_KEPT = 8 << 20  # bytes of free heap top kept (M_TRIM_THRESHOLD): a small forecast's temporaries


def return_large_blocks_to_the_os() -> None:
    """Serve allocations of 1 MiB and more with mmap, so that freed activations go back to the OS.

    glibc otherwise raises its mmap threshold after the first large free and keeps later large
    blocks on the heap: a forecast then holds on to ~200 MB of freed activations (peak RSS 745 MB
    instead of 527 MB at the published size, batch 32), with no measurable speed difference.
    Smaller blocks stay on the heap, whose free top is kept up to 8 MiB (``HEAP_KEPT``): with 1 MiB a
    small forecast's freed temporaries went back to the OS and every forecast faulted them in again
    (about 560 page faults per batch-1 forecast of the bundled model, AMD Zen 3, 7 Dec: 8.7 against
    8.4 ms, medians of 6 alternating processes; none with 8 MiB).
    Linux/glibc only; set ``TIREX_MALLOC_TUNING=0`` to leave the allocator alone.
    """
    global _heap_tuned
    if _heap_tuned:
        return
    _heap_tuned = True
    if os.environ.get("TIREX_MALLOC_TUNING", "1").lower() in ("0", "false", "no", "off"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, HEAP_KEPT)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass  # not glibc


def residual_gemms(lib, x: int, dst: int, hidden: int, rows: int, weights, threads: int, k: int, hd: int,
                   o: int) -> None:
    """A ``ResidualBlock`` on the compiled matmuls, at raw addresses of contiguous float32 rows: dst (rows, o)
    = W_r x + b_r, then dst += W_o relu(W_h x + b_h) + b_o, with x (rows, k) and hidden (rows, hd) scratch.
    ``weights``: the (weight, bias) addresses of the hidden, residual and output layers, each weight the
    row-major (in, out) matrix (``tirex.inference.use_matmul_layout_``)."""
    (hw, hb), (rw, rb), (ow, ob) = weights
    lib.tirex_gemm(x, k, hw, None, hd, hb, hidden, hd, rows, hd, k, GEMM_RELU, threads)
    lib.tirex_gemm(x, k, rw, None, o, rb, dst, o, rows, o, k, GEMM_STORE, threads)
    lib.tirex_gemm(hidden, hd, ow, None, o, ob, dst, o, rows, o, hd, GEMM_ACCUMULATE, threads)


def round_bf16(x: np.ndarray) -> np.ndarray:
    """float32 values rounded to the nearest bfloat16 (ties to even on the bits; NaN kept), as float32."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    bits = x.view(np.uint32)
    rounded = ((bits + np.uint32(0x7FFF) + ((bits >> 16) & np.uint32(1))) & np.uint32(0xFFFF0000)).view(np.float32)
    return np.where(np.isnan(x), x, rounded).astype(np.float32)


def bf16_pairs(recurrent: np.ndarray, block: int = 0) -> np.ndarray:
    """(heads, D, 4D) float32 -> its bfloat16 bits (uint16, rounded as ``round_bf16``) in pairs for the CPU
    kernel's recurrent product (rows 2i and 2i + 1 of each column side by side): (heads, D / 2, 4D, 2) for the
    AVX512-BF16 product (``block`` 0), (heads, 4D / block, D / 2, block, 2) in column blocks for the AVX2 one."""
    heads, dh, g = recurrent.shape
    bits = (round_bf16(recurrent).view(np.uint32) >> 16).astype(np.uint16)
    pairs = bits.reshape(heads, dh // 2, 2, g).transpose(0, 1, 3, 2)  # (heads, D / 2, 4D, 2)
    if block:
        pairs = pairs.reshape(heads, dh // 2, g // block, block, 2).transpose(0, 2, 1, 3, 4)
    return np.ascontiguousarray(pairs)


def pairs_block(lib) -> int | None:
    """The column block of the pairs layout the CPU kernel ``lib`` reads (see ``bf16_pairs``), or None if
    it reads no pairs (or ``lib`` is None: no kernel)."""
    if lib is None or not lib.tirex_uses_bf16_pairs():
        return None
    return int(lib.tirex_bf16_pairs_block())


class BlockOperands(ctypes.Structure):
    """One block's operands as the kernel's ``tirex_blocks_forward`` reads them (its ``TirexBlock``)."""

    _fields_ = [(name, ctypes.c_void_p) for name in ("norm_slstm", "projection", "recurrent", "pairs", "bias",
                                                     "group_norm", "norm_ffn", "gate", "up", "down")]
    _fields_ += [("eps_slstm", ctypes.c_float), ("eps_ffn", ctypes.c_float)]
    _fields_ += [(name, ctypes.c_int) for name in ("heads", "head_dim", "ffn_dim", "bf16")]


@dataclass(frozen=True)
class LinearOperand:
    """A linear layer: the address of its row-major (in, out) float32 weight, of its bias (or None)."""

    weight: int
    bias: int | None
    in_features: int
    out_features: int


@dataclass(frozen=True)
class ResidualOperands:
    """A ``ResidualBlock``: out = W_r u + b_r + W_o relu(W_h u + b_h) + b_o."""

    hidden: LinearOperand
    output: LinearOperand
    residual: LinearOperand


Buffer = Callable[[str, int], int]  # (name, floats) -> address of at least that many floats, the same memory per name


class KernelForward:
    """``TiRexModel.forward`` (no grad, CPU, float32 weights) as kernel calls on prepared addresses.

    Immutable once made; the temporaries come from the caller's ``buffer`` (per call or per thread), so
    concurrent forwards never share memory. The caller keeps the operands' memory alive."""

    def __init__(self, lib, embedding: ResidualOperands, blocks: Sequence[BlockOperands], out_norm: tuple[int, float],
                 head: ResidualOperands, quantiles: int, patch_size: int) -> None:
        self.lib, self.embedding, self.out_norm, self.head = lib, embedding, out_norm, head
        self.embed_dim = embedding.residual.out_features
        if not blocks or any(b.heads * b.head_dim != self.embed_dim for b in blocks):
            raise ValueError("every block's heads x head_dim must be the embedding width")
        self.num_blocks = len(blocks)
        self.operands = (BlockOperands * len(blocks))(*blocks)
        self.quantiles, self.patch_size = quantiles, patch_size

    def _scratch_floats(self, rows: int) -> int:
        # the pre-activations (bfloat16 where rounded so: half the memory), then the FFN's hidden layer
        return max(max(b.heads * rows * 4 * b.head_dim // (2 if b.bf16 else 1), min(rows, ROWS_PER_CHUNK) * b.ffn_dim)
                   for b in self.operands)

    def run(self, tokens: int, batch: int, steps: int, kept: int, states: Sequence[int], fresh: bool,
            snaps: Sequence[int | None], hidden: Sequence[int | None], snapshot_at: int, result: int | None,
            buffer: Buffer, threads: int) -> None:
        """One forward of (batch, steps, 2 * patch_size) contiguous float32 ``tokens``.

        ``states``: per block a (4, heads, batch, head_dim) buffer, read as the starting state unless
        ``fresh``, and written with the final one; ``snaps`` / ``hidden``: per block a buffer for the state
        after ``snapshot_at`` steps / the block's output (batch, steps, embed), or None. ``result``: where the
        head writes (batch * kept, quantiles * patch_size) for the last ``kept`` tokens (None: no head)."""
        lib, e, n = self.lib, self.embed_dim, self.num_blocks
        rows = batch * steps
        stream = [buffer("stream_a", rows * e), buffer("stream_b", rows * e)]
        self._residual(self.embedding, tokens, stream[0], rows, buffer, threads)
        last = buffer("last", batch * kept * e) if kept < steps else None
        norm = buffer("norm", rows * e)
        scratch = buffer("scratch", self._scratch_floats(rows))

        def pointers(addresses) -> ctypes.Array:
            return (ctypes.c_void_p * n)(*addresses)

        status = lib.tirex_blocks_forward(
            ctypes.addressof(self.operands), n, pointers(states), pointers(snaps), pointers(hidden), stream[0],
            stream[1], last, norm, scratch, batch, steps, e, kept, int(fresh), snapshot_at, GROUP_NORM_EPS,
            ROWS_PER_CHUNK, threads)
        if status != 0:
            raise RuntimeError(f"tirex_blocks_forward failed with status {status}")
        if result is None:
            return
        out = last if last is not None else stream[n % 2]
        weight, eps = self.out_norm
        lib.tirex_rms_norm(out, weight, norm, batch * kept, e, eps, 0, 1, threads)
        self._residual(self.head, norm, result, batch * kept, buffer, threads)

    def _residual(self, block: ResidualOperands, u: int, out: int, rows: int, buffer: Buffer, threads: int) -> None:
        """out = block(u) for contiguous (rows, in) u and (rows, out) out, in chunks of rows."""
        k, o, hd = block.hidden.in_features, block.output.out_features, block.hidden.out_features
        weights = [(layer.weight, layer.bias) for layer in (block.hidden, block.residual, block.output)]
        for start in range(0, rows, ROWS_PER_CHUNK):
            m = min(ROWS_PER_CHUNK, rows - start)
            residual_gemms(self.lib, u + start * k * FLOAT_BYTES, out + start * o * FLOAT_BYTES,
                           buffer("scratch", m * hd), m, weights, threads, k, hd, o)

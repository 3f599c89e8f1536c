"""Forecasts without torch: numpy and the compiled CPU kernels only.

>>> from tirex.lite import load_model
>>> model = load_model()                                   # the bundled default model
>>> quantiles, mean = model.forecast(series, prediction_length=24)

``import torch`` alone takes about 220 MB of resident memory; this runtime never imports it. It reads a model
in tirex's format (a folder with ``config.json`` and ``model.safetensors``, as ``save_pretrained`` writes it),
runs the same compiled kernels as ``tirex.load_model()`` on CPU (``tirex.kernel_forward``: the same calls in
the same order) with the same validation (``tirex.validation``) and the same forecast loop (``tirex.rollout``:
batching, rollout, output rules), and returns the same bits as ``tirex.load_model(...).forecast(...)`` with the compiled
kernels (tested). What it leaves to the torch package: GPUs, the fast mode, tables and GluonTS datasets,
streams, embeddings, fine-tuning, Hub downloads and the published ``model.ckpt`` (a torch pickle: convert it
once with ``tirex.load_model(path).save_pretrained(folder)``).
"""

from __future__ import annotations

import json
import math
import os
import sys
import threading
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from . import cpu_kernel
from .config import CONFIG_NAME, OFFICIAL_CKPT_NAME, WEIGHTS_NAME, CheckpointError, ModelConfig, bundled_model_dir
from .cpus import capped_threads, cpu_budget
from .kernel_forward import (RMS_NORM_EPS, BlockOperands, KernelForward, LinearOperand, ResidualOperands, bf16_pairs,
                             pairs_block, return_large_blocks_to_the_os, round_bf16)
from .rollout import ArrayOps, forecast_batches, rollout, shared_empty_lead
from .validation import check_positive_int, check_run, to_series_arrays


def load_model(source: str | os.PathLike | None = None, threads: int | None = None) -> "LiteModel":
    """A model for torch-free forecasting.

    Args:
        source: None for the bundled default model; a folder with ``config.json`` + ``model.safetensors``, or
            a ``.safetensors`` file with a ``config.json`` beside it (``save_pretrained``'s output).
        threads: threads of the kernels; default the CPUs this process may use (its affinity mask and a
            container's CPU quota, ``tirex.cpus``), or ``OMP_NUM_THREADS`` where that is set and lower.
            Results never depend on it.
    Raises:
        FileNotFoundError / CheckpointError: no model there, or weights that do not fit its config.
        RuntimeError: no compiled CPU kernels on this machine (``tirex info`` says why); ``tirex.load_model``
            runs without them.
    """
    return_large_blocks_to_the_os()  # the allocator settings of the torch package (small temporaries kept)
    folder_or_file = bundled_model_dir() if source is None else Path(source)
    config_path, weights_path = _model_files(folder_or_file)
    config = ModelConfig.load(config_path)
    model = LiteModel(config, _read_weights(weights_path, config), _threads(threads), str(weights_path))
    model._prepared()  # the kernels loaded and the operands prepared now, not in the first forecast
    return model


def _model_files(path: Path) -> tuple[Path, Path]:
    if path.is_dir():
        if (path / CONFIG_NAME).is_file() and (path / WEIGHTS_NAME).is_file():
            return path / CONFIG_NAME, path / WEIGHTS_NAME
        if (path / OFFICIAL_CKPT_NAME).is_file():
            raise CheckpointError(_NEEDS_CONVERSION.format(path=path / OFFICIAL_CKPT_NAME))
        raise FileNotFoundError(f"{path} holds no {CONFIG_NAME} + {WEIGHTS_NAME} (a model saved by save_pretrained)")
    if path.suffix == ".safetensors" and path.is_file():
        if not path.with_name(CONFIG_NAME).is_file():
            raise FileNotFoundError(f"{path} needs a {CONFIG_NAME} next to it")
        return path.with_name(CONFIG_NAME), path
    if path.suffix == ".ckpt" and path.is_file():
        raise CheckpointError(_NEEDS_CONVERSION.format(path=path))
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist (tirex.lite reads local models only; a Hub repo: download "
                                "and convert it with tirex.load_model(repo_id).save_pretrained(folder))")
    raise ValueError(f"{path}: expected a model folder or a .safetensors file")


_NEEDS_CONVERSION = ("{path} is a torch pickle (the published TiRex layout), which tirex.lite does not read without "
                     "torch; convert it once: tirex.load_model('{path}').save_pretrained('folder'), then "
                     "tirex.lite.load_model('folder')")


def _threads(threads: int | None) -> int:
    if threads is not None:
        return capped_threads(check_positive_int(threads, "threads"))
    default = cpu_budget().cpus
    omp = os.environ.get("OMP_NUM_THREADS", "").strip()
    if omp.isdigit() and int(omp) > 0:
        default = min(default, int(omp))
    return capped_threads(default)


def expected_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor of a model with ``config`` in tirex's format (``TiRexModel.state_dict()``), by name."""
    p, e, h, d, f, hidden = (config.patch_size, config.embed_dim, config.num_heads, config.head_dim, config.ffn_dim,
                             config.input_ff_dim)
    out = len(config.quantile_levels) * p

    def residual(name: str, k: int, o: int) -> dict[str, tuple[int, ...]]:
        return {f"{name}.hidden.weight": (hidden, k), f"{name}.hidden.bias": (hidden,), f"{name}.output.weight": (o, hidden),
                f"{name}.output.bias": (o,), f"{name}.residual.weight": (o, k), f"{name}.residual.bias": (o,)}

    shapes = {**residual("patch_embedding", 2 * p, e), **residual("head", e, out), "out_norm.weight": (e,)}
    for i in range(config.num_blocks):
        b = f"blocks.{i}."
        shapes.update({b + "norm_slstm.weight": (e,), b + "norm_ffn.weight": (e,), b + "slstm.recurrent": (h, d, 4 * d),
                       b + "slstm.bias": (h, 4, d), b + "slstm.norm_weight": (e,), b + "ffn.gate.weight": (f, e),
                       b + "ffn.up.weight": (f, e), b + "ffn.down.weight": (e, f)})
        shapes.update({b + f"slstm.{gate}_gate": (h, d, d) for gate in ("input", "forget", "cell", "output")})
    return shapes


_DTYPES = {"F32": np.float32, "F64": np.float64, "F16": np.float16, "BF16": np.uint16}  # BF16: the upper float32 bits
_HEADER_LIMIT = 100 << 20  # the format's own cap on the JSON header


def _safetensors(path: Path):
    """(name, float32 array) for every tensor of a ``.safetensors`` file, read one tensor at a time with plain
    reads (the format: an 8-byte little-endian header length, a JSON header of dtype, shape and byte offsets into
    the data that follows). Not memory-mapped: a mapped file's pages count as this process's resident memory
    while it is open, twice the weights at the peak."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        length = int.from_bytes(head, "little") if len(head) == 8 else -1
        if not 0 < length <= min(_HEADER_LIMIT, size - 8):
            raise CheckpointError(f"cannot read {path}: corrupt or truncated safetensors file (no valid header)")
        try:
            header = json.loads(f.read(length))
        except ValueError as exc:
            raise CheckpointError(f"cannot read {path}: corrupt or truncated safetensors file ({exc})") from exc
        start = 8 + length
        for name, entry in sorted(header.items()):
            if name == "__metadata__":
                continue
            try:
                dtype, shape, (begin, end) = _DTYPES.get(entry["dtype"]), tuple(entry["shape"]), entry["data_offsets"]
            except (KeyError, TypeError, ValueError) as exc:
                raise CheckpointError(f"cannot read {path}: a malformed header entry for {name} ({exc})") from exc
            if dtype is None:
                raise CheckpointError(f"{path}: {name} holds {entry['dtype']} values, expected floating point")
            count = math.prod(shape)
            if not (0 <= begin <= end and start + end <= size and end - begin == count * np.dtype(dtype).itemsize):
                raise CheckpointError(f"cannot read {path}: corrupt or truncated safetensors file ({name}'s bytes)")
            value = np.empty(shape, dtype=dtype)
            f.seek(start + begin)
            if f.readinto(memoryview(value.reshape(-1)).cast("B")) != end - begin:
                raise CheckpointError(f"cannot read {path}: corrupt or truncated safetensors file ({name})")
            if sys.byteorder != "little":
                value = value.byteswap()
            if entry["dtype"] == "BF16":
                value = (value.astype(np.uint32) << 16).view(np.float32)
            yield name, value.astype(np.float32, copy=False)


def _read_weights(path: Path, config: ModelConfig) -> dict[str, np.ndarray]:
    """The tensors of ``path`` as float32 arrays, checked against ``config``'s names and shapes; weight matrices
    are stored transposed ((in, out) row-major, what the compiled matmuls read), one tensor at a time."""
    expected = expected_shapes(config)
    weights = {}
    try:
        for name, value in _safetensors(path):
            if name not in expected:
                reference = name.startswith(("input_patch_embedding.", "output_patch_embedding.", "block_stack."))
                raise CheckpointError(
                    f"{path} does not match its {CONFIG_NAME}: unexpected tensor {name}" +
                    (" (the published layout's names: convert it with tirex.load_model(path).save_pretrained(folder))"
                     if reference else ""))
            if value.shape != expected[name]:
                raise CheckpointError(f"{path}: {name} has shape {value.shape}, expected {expected[name]}")
            if not np.isfinite(value).all():
                raise CheckpointError(f"{path}: {name} holds NaN or inf values")
            weights[name] = np.ascontiguousarray(value.T) if name.endswith(".weight") and value.ndim == 2 else value
    except OSError as exc:
        raise CheckpointError(f"cannot read {path}: {exc}") from exc
    missing = sorted(set(expected) - set(weights))
    if missing:
        raise CheckpointError(f"{path} does not match its {CONFIG_NAME}: missing {missing[:5]}"
                              f"{'...' if len(missing) > 5 else ''}")
    return weights


class LiteModel:
    """A TiRex model run by the compiled CPU kernels from numpy (see the module docstring)."""

    def __init__(self, config: ModelConfig, weights: dict[str, np.ndarray], threads: int, source: str = "") -> None:
        config.validate()
        if config.head_dim % 8:
            raise ValueError(f"tirex.lite needs a head size that is a multiple of 8 (the kernels' tiles); this model's "
                             f"is {config.head_dim}: use tirex.load_model")
        self.config, self.threads, self.source = config, threads, source
        self._w = weights
        p = config.patch_size
        # the recurrent matrices as the recurrence reads them, and the head-wise input projections (heads, in, 4D)
        bf16 = config.recurrence_dtype == "bfloat16"
        for i in range(config.num_blocks):
            s = f"blocks.{i}.slstm."
            if bf16:
                weights[s + "recurrent"] = round_bf16(weights[s + "recurrent"])
            weights[s + "projection"] = np.ascontiguousarray(np.concatenate(
                [weights.pop(f"{s}{gate}_gate").transpose(0, 2, 1) for gate in ("input", "forget", "cell", "output")],
                axis=2))
        self._kernels: dict[int, tuple[Any, KernelForward, list]] = {}  # by library: pairs differ per level
        self._prefix: dict[tuple[int, int], list[np.ndarray]] = {}  # (library, length) -> empty-start states
        self._lock = threading.Lock()
        self.width = 2 * p

    def __repr__(self) -> str:
        c = self.config
        return (f"LiteModel({self.source or 'in memory'}: embed {c.embed_dim}, {c.num_blocks} blocks, "
                f"{c.num_heads} heads, context {c.context_length}, {self.threads} threads)")

    # -- the forward --------------------------------------------------------------------------------------------
    def _prepared(self) -> tuple[Any, KernelForward]:
        """(library, its prepared forward) of the active CPU kernel dispatch."""
        dispatch = cpu_kernel.active()
        lib = dispatch.library  # with its own matmuls, whoever does them in the torch package (TIREX_CPU_GEMM)
        why = list(dispatch.why)
        if lib is None and not cpu_kernel._disabled():
            # where the torch package prefers its loop (an x86 CPU without FMA: the portable level's multiply-adds
            # are library calls there), the portable level: slower than the torch loop, the same bits, no torch
            lib = cpu_kernel.load_level("portable")
            why.append(f"level portable: {cpu_kernel.level_error('portable')}")
        if lib is None:
            raise RuntimeError("tirex.lite runs on the compiled CPU kernels, which are not available here: " +
                               "; ".join(why) + ". tirex.load_model() runs without them")
        with self._lock:
            if id(lib) not in self._kernels:
                self._kernels[id(lib)] = (lib, *self._prepare(lib))
            lib, kernels, _ = self._kernels[id(lib)]
        return lib, kernels

    def _prepare(self, lib) -> tuple[KernelForward, list]:
        w, c = self._w, self.config
        keep: list[np.ndarray] = []  # what the addresses point into (alive as long as the prepared forward)

        def address(array: np.ndarray) -> int:
            keep.append(array)
            return array.ctypes.data

        def linear(name: str) -> LinearOperand:
            weight = w[name + ".weight"]  # (in, out)
            bias = w.get(name + ".bias")
            return LinearOperand(address(weight), None if bias is None else address(bias), *weight.shape)

        def residual(name: str) -> ResidualOperands:
            return ResidualOperands(linear(name + ".hidden"), linear(name + ".output"), linear(name + ".residual"))

        bf16 = c.recurrence_dtype == "bfloat16"
        block = pairs_block(lib) if bf16 and c.head_dim % 32 == 0 else None
        blocks = []
        for i in range(c.num_blocks):
            b = f"blocks.{i}."
            recurrent = w[b + "slstm.recurrent"]
            pairs = None if block is None else address(bf16_pairs(recurrent, block))
            gate = linear(b + "ffn.gate")
            blocks.append(BlockOperands(
                address(w[b + "norm_slstm.weight"]), address(w[b + "slstm.projection"]), address(recurrent), pairs,
                address(w[b + "slstm.bias"]), address(w[b + "slstm.norm_weight"]), address(w[b + "norm_ffn.weight"]),
                gate.weight, linear(b + "ffn.up").weight, linear(b + "ffn.down").weight, RMS_NORM_EPS, RMS_NORM_EPS,
                c.num_heads, c.head_dim, gate.out_features, int(bf16)))
        kernels = KernelForward(lib, residual("patch_embedding"), blocks, (address(w["out_norm.weight"]), RMS_NORM_EPS),
                                residual("head"), len(c.quantile_levels), c.patch_size)
        return kernels, keep

    def _forward(self, run: tuple[Any, KernelForward], tokens: np.ndarray, states: list[np.ndarray] | None,
                 last_tokens: int, with_head: bool = True) -> tuple[np.ndarray | None, list[np.ndarray]]:
        """(scaled quantiles (batch, kept, Q, P) of the last ``last_tokens`` tokens, final per-block states
        (4, heads, batch, head_dim)) of (batch, tokens, 2 * patch) float32 tokens (``TiRexModel.forward``), on the
        kernels ``run`` (``_prepared()``: one set for a whole forecast, whatever ``cpu_kernel.select`` does meanwhile)."""
        _, k = run
        c = self.config
        batch, steps, _ = tokens.shape
        kept = min(last_tokens, steps)
        tokens = np.ascontiguousarray(tokens, dtype=np.float32)
        # the kernel writes the final states where it read the starting ones: always a copy (of cached states too)
        shape = (4, c.num_heads, batch, c.head_dim)
        new = [np.empty(shape, np.float32) if states is None else np.broadcast_to(s, shape).copy()  # C order
               for s in (states or [None] * c.num_blocks)]
        result = np.empty((batch * kept, k.quantiles * k.patch_size), np.float32) if with_head else None
        buffers: dict[str, np.ndarray] = {}

        def buffer(name: str, floats: int) -> int:
            if name not in buffers or buffers[name].size < floats:
                buffers[name] = np.empty(floats, np.float32)
            return buffers[name].ctypes.data

        k.run(tokens.ctypes.data, batch, steps, kept, [s.ctypes.data for s in new], states is None,
              [None] * c.num_blocks, [None] * c.num_blocks, 0, None if result is None else result.ctypes.data,
              buffer, self.threads)
        out = None if result is None else result.reshape(batch, kept, k.quantiles, k.patch_size)
        return out, new

    def _empty_prefix_states(self, run: tuple[Any, KernelForward], length: int) -> list[np.ndarray]:
        """Per-block states (batch 1) after ``length`` empty tokens from a fresh start (``TiRexModel.empty_prefix_states``:
        computed once per length, continuing from the longest shorter one known)."""
        lib = run[0]
        with self._lock:
            known = {n: s for (key, n), s in self._prefix.items() if key == id(lib) and n <= length}
        if length in known:
            return known[length]
        start = max(known, default=0)
        empty = np.zeros((1, length - start, self.width), np.float32)
        _, states = self._forward(run, empty, known.get(start), 1, with_head=False)
        with self._lock:
            self._prefix[(id(lib), length)] = states
        return states

    def _predict_patches(self, run: tuple[Any, KernelForward], context: np.ndarray, num_patches: int) -> np.ndarray:
        """``TiRexModel.predict_patches``: (batch, num_patches, Q, P) in data units from (batch, time) float32."""
        c = self.config
        x = window(context, c.context_length)
        loc, scale = fit_scale(x)
        tokens = patch_tokens((x - loc) / scale, c.patch_size)
        if num_patches > 1:
            tokens = np.concatenate([tokens, np.zeros((tokens.shape[0], num_patches - 1, self.width), np.float32)],
                                    axis=1)
        lead = shared_empty_lead(tokens, keep=num_patches)
        states = self._empty_prefix_states(run, lead) if lead > 0 else None
        out, _ = self._forward(run, tokens[:, lead:], states, num_patches)
        return out * scale.reshape(-1, 1, 1, 1) + loc.reshape(-1, 1, 1, 1)

    # -- the public API -----------------------------------------------------------------------------------------
    def forecast(self, context: Any, prediction_length: int, quantile_levels: Sequence[float] | None = None,
                 batch_size: int = 256, rollout_steps: int = 1, max_masked_fraction: float | None = 0.5,
                 progress: bool | None = None, keep_sign: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """``TiRexModel.forecast`` for array-like contexts (a 1-D / 2-D array, a list of 1-D series of any
        lengths, ``None`` = missing): numpy ``(quantiles (n, H, levels), mean (n, H))``, float32 (float64 where a
        value does not fit float32), the same values as ``tirex.load_model(...).forecast``. Tables: use
        ``tirex.load_model``."""
        if type(context).__name__ in ("DataFrame", "Series") and hasattr(context, "index"):
            raise TypeError(f"tirex.lite takes arrays and lists of series, not a pandas {type(context).__name__}; pass "
                            "its values (e.g. df.to_numpy()), or use tirex.load_model for tables with timestamps")
        settings = check_run(self, prediction_length, quantile_levels, batch_size, rollout_steps, max_masked_fraction,
                             progress, keep_sign)
        series = to_series_arrays(context)
        run = self._prepared()

        def rollout_batch(context, prediction_length, rollout_steps, max_masked_fraction, on_patches):
            return rollout(context, prediction_length, rollout_steps, max_masked_fraction, self.config,
                           lambda x, k: self._predict_patches(run, x, k), _NUMPY, on_patches)

        return forecast_batches(series, self.config, rollout_batch, **settings)


# -- a raw context as the model sees it (tirex.scaling, in numpy: the same operations, the same bits) --------
def window(context: np.ndarray, length: int) -> np.ndarray:
    """The last ``length`` values of each row, left-padded with NaN where shorter."""
    batch, time = context.shape
    if time >= length:
        return context[:, time - length:]
    return np.concatenate([np.full((batch, length - time), np.nan, context.dtype), context], axis=1)


def fit_scale(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``tirex.scaling.fit_scale``: (loc, scale), each (batch, 1) float32."""
    observed = ~np.isnan(x)
    count = observed.sum(axis=1, keepdims=True).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):  # all-NaN rows: 0 / 0, replaced below
        loc = (np.where(observed, x, 0).sum(axis=1, keepdims=True, dtype=np.float64) / count).astype(np.float32)
        loc = np.nan_to_num(loc, nan=0.0)
        sq = np.where(observed, (x - loc) ** 2, 0).sum(axis=1, keepdims=True, dtype=np.float64) / count
        scale = np.nan_to_num(np.sqrt(sq).astype(np.float32), nan=1.0)
    scale = np.where(scale == 0, np.abs(loc) + np.float32(1e-5), scale).astype(np.float32)
    return loc, scale


_NUMPY = ArrayOps(cat=lambda parts, axis: np.concatenate(parts, axis=axis),
                  nans=lambda rows, cols: np.full((rows, cols), np.nan, np.float32), window=window)


def patch_tokens(x: np.ndarray, patch_size: int) -> np.ndarray:
    """``tirex.scaling.patch_tokens``: (batch, time / patch, 2 * patch) values (NaN -> 0), then the observed mask."""
    batch, _ = x.shape
    observed = ~np.isnan(x)
    values = np.where(observed, x, np.float32(0)).astype(np.float32)
    return np.concatenate([values.reshape(batch, -1, patch_size),
                           observed.astype(np.float32).reshape(batch, -1, patch_size)], axis=-1)


__all__ = ["LiteModel", "expected_shapes", "load_model"]

"""Which implementation runs the sLSTM recurrence: the torch loop, the compiled CPU kernel or the CUDA kernels.

Backends:
    "auto"  (default) the fastest that works for the tensors at hand: the fused CUDA kernels on CUDA
            devices of compute capability >= 8.0, the compiled C++ kernel on CPU, else the torch loop.
    "torch" the step-by-step torch loop (``tirex.slstm.slstm_recurrence_torch``); always works.
    "cpu"   the compiled C++ kernel (``tirex.cpu_kernel``) for CPU tensors; inference only.
    "cuda"  the fused CUDA kernels (``cuda/``, package ``tirex_cuda``) for CUDA tensors, forward and backward.

A backend that cannot run (no compiler, no GPU, an old GPU, a failed build) falls back to the torch
loop with one warning naming the reason; results are the same up to float32 rounding noise.

Example:
    >>> import tirex.backends as backends
    >>> backends.set_default_backend("torch")   # or model.set_backend("torch") for one model
"""

from __future__ import annotations

import dataclasses
import warnings

import torch

BACKENDS = ("auto", "torch", "cpu", "cuda")
_default_backend = "auto"
_warned: set[str] = set()


def check_backend(name: str) -> str:
    """Validate a backend name (raises ``ValueError`` listing the valid ones)."""
    if name not in BACKENDS:
        raise ValueError(f"unknown sLSTM backend {name!r}; choose one of {BACKENDS}")
    return name


def set_default_backend(name: str) -> None:
    """What layers whose own backend is "auto" use (itself "auto" by default: pick per device)."""
    global _default_backend
    _default_backend = check_backend(name)


def default_backend() -> str:
    return _default_backend


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=4)


def _load_cpu_kernel():
    """(library, why there is none, whether that was chosen rather than for want of a kernel)."""
    from . import inference

    dispatch = inference.dispatch()
    return dispatch.library, None if dispatch.library is not None else "; ".join(dispatch.why), dispatch.chosen


def backend_info(model=None) -> dict:
    """What runs where, and why: the CPU kernel level chosen from the CPU's flags (``tirex.cpu_kernel``),
    who does the weight matmuls and whether results are bitwise independent of the batch, the fast
    mode, threads (torch's; the compiled kernels': at most the CPUs this process may use, ``tirex.cpus``),
    and (given a model) its device and sLSTM backend setting.

    Example:
        >>> info = model.backend_info()
        >>> info["cpu"]["level"], info["cpu"]["matmuls"], info["cpu"]["why"]
    """
    from . import cpu_kernel, inference
    from .cpus import cpu_budget

    dispatch = cpu_kernel.active()
    flags = cpu_kernel.cpu_flags()
    fast = inference.cpu_has_fast_bf16()
    info = {
        "cpu": {
            "model": cpu_kernel.cpu_model(),
            "flags": cpu_kernel.isa_flags(flags),
            "levels_this_cpu_runs": cpu_kernel.runnable_levels(),
            "level": dispatch.level,
            "emulated": dispatch.emulated,
            "recurrence": (f"compiled kernel ({dispatch.level}{', emulated' if dispatch.emulated else ''})"
                           if dispatch.level else "torch loop"),
            "matmuls": dispatch.matmuls,
            "batch_independent_bitwise": dispatch.matmuls == "compiled",
            "why": list(dispatch.why),
        },
        "fast_mode": {
            "native_bfloat16": fast,
            "amx": "amx_bf16" in flags,
            "what": "bfloat16 weight matmuls in torch (oneDNN: AMX or AVX512-BF16 on x86, BF16 on ARM)" if fast else
                    "this CPU emulates bfloat16 matmuls: set_fast_mode(True) keeps the exact mode",
        },
        "threads": torch.get_num_threads(),
        "kernel_threads": inference.kernel_threads(),
        "cpus": dataclasses.asdict(cpu_budget()),  # what this process may use (affinity, container quota)
        "default_backend": _default_backend,
    }
    if model is not None:
        param = next(model.parameters(), None)
        info["device"] = str(param.device) if param is not None else "cpu"
        blocks = getattr(model, "blocks", [])
        info["backend"] = sorted({block.slstm.backend for block in blocks}) if len(blocks) else []
        info["fast_mode"]["enabled"] = any(block.slstm.matmul_dtype == torch.bfloat16 for block in blocks)
        if info["fast_mode"]["enabled"]:  # its bfloat16 matmuls are torch's
            info["cpu"]["batch_independent_bitwise"] = False
            info["cpu"]["why"].append("fast mode: bfloat16 weight matmuls in torch, not bitwise batch-independent")
        if info["device"].startswith("cuda"):
            reason = cuda_unsupported_reason(param.device)
            info["cuda"] = {"kernels": reason is None, "why": reason or "fused CUDA kernels"}
    return info


def cuda_unsupported_reason(device: torch.device) -> str | None:
    """Why the CUDA kernels cannot run on ``device`` (None if they can)."""
    if not torch.cuda.is_available():
        return "CUDA is not available (no GPU or a CPU-only torch build)"
    major, minor = torch.cuda.get_device_capability(device)
    if major < 8:
        return f"GPU compute capability {major}.{minor} < 8.0 (the kernels need bfloat16 support: Ampere or newer)"
    from .cuda_backend import load_extension, build_error

    if load_extension() is None:
        return f"building the CUDA kernels failed: {build_error()}"
    return None


def resolve(backend: str, wx: torch.Tensor) -> str:
    """The backend that will actually run for input pre-activations ``wx`` ("torch", "cpu" or "cuda")."""
    backend = check_backend(backend)
    if backend == "auto":
        backend = _default_backend
    if backend == "torch":
        return "torch"
    if wx.device.type == "cuda":
        if backend == "cpu":
            _warn_once("cpu-on-cuda", "sLSTM backend 'cpu' was requested for CUDA tensors; using the torch loop")
            return "torch"
        reason = cuda_unsupported_reason(wx.device)
        if reason is None:
            return "cuda"
        _warn_once("cuda:" + reason, f"sLSTM CUDA kernels unavailable ({reason}); falling back to the torch loop")
        return "torch"
    if wx.device.type == "cpu":
        if backend == "cuda":
            hint = "move the model with model.to('cuda')" if torch.cuda.is_available() else "CUDA is not available here"
            _warn_once("cuda-on-cpu", f"sLSTM backend 'cuda' was requested for CPU tensors ({hint}); using the CPU path")
        if torch.is_grad_enabled() and wx.requires_grad:
            return "torch"  # the CPU kernel has no backward; autograd runs through the torch loop
        lib, error, chosen = _load_cpu_kernel()
        if lib is not None:
            return "cpu"
        if not chosen:  # the torch loop by choice (TIREX_CPU_KERNEL=0, or faster on this CPU) is no fallback
            _warn_once("cpu:" + str(error), f"compiled CPU sLSTM kernel unavailable ({error}); falling back to the "
                       "(slower) torch loop")
    return "torch"

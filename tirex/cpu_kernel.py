"""The compiled CPU kernels (sLSTM recurrence, RMSNorm, SwiGLU activation, and on AVX2 CPUs without
AVX-512 the weight matmuls), loaded with ctypes. They share one persistent thread pool.

Built from ``_cpu_kernel/slstm_cpu.cpp`` on first use and cached.

The kernel has a plain C ABI and includes no torch headers, so a build takes about a second with
``g++ -O3 -march=native``. The shared library is cached under ``$TIREX_CACHE_DIR`` (default
``~/.cache/tirex/kernels``), keyed by the source, the compiler flags and this CPU, so later processes
only load it. Set ``TIREX_CPU_KERNEL=0`` to never build or use it.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

SOURCE = Path(__file__).with_name("_cpu_kernel") / "slstm_cpu.cpp"  # package data of tirex
FLAGS = ["-O3", "-march=native", "-ffp-contract=off", "-fno-math-errno", "-fno-trapping-math", "-fopenmp-simd",
         "-fPIC", "-shared", "-std=c++17", "-pthread"]
if platform.machine().lower() in ("x86_64", "amd64"):
    FLAGS.append("-mprefer-vector-width=512")  # full AVX-512 width where the CPU has it; ignored otherwise

_lock = threading.Lock()
_library: ctypes.CDLL | None = None
_error: str | None = None


def cache_dir() -> Path:
    root = os.environ.get("TIREX_CACHE_DIR") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "tirex"
    return Path(root) / "kernels"


def _cpu_fingerprint() -> str:
    # -march=native code must not be reused on a different CPU (a shared home folder on a cluster)
    info = platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "flags", "Features")):
                info += line
                if line.startswith(("flags", "Features")):
                    break
    except OSError:
        pass
    return info


def _compiler() -> str | None:
    return os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")


def _build(cxx: str) -> Path:
    source = SOURCE.read_bytes()
    key = hashlib.sha256(source + " ".join([cxx, *FLAGS, _cpu_fingerprint()]).encode()).hexdigest()[:16]
    target = cache_dir() / f"slstm_cpu_{key}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        tmp_lib = Path(tmp) / target.name
        proc = subprocess.run([cxx, *FLAGS, str(SOURCE), "-o", str(tmp_lib)], capture_output=True, text=True,
                              timeout=120)
        if proc.returncode != 0:
            raise RuntimeError(f"{cxx} failed: {proc.stderr.strip()[-2000:]}")
        os.replace(tmp_lib, target)  # atomic: concurrent builders never see a half-written library
    return target


def load() -> ctypes.CDLL | None:
    """The kernel library, building it on first use; None (and ``error()`` says why) if unavailable."""
    global _library, _error
    if _library is not None or _error is not None:
        return _library
    with _lock:
        if _library is not None or _error is not None:
            return _library
        if os.environ.get("TIREX_CPU_KERNEL", "1").lower() in ("0", "false", "no", "off"):
            _error = "disabled by TIREX_CPU_KERNEL=0"
            return None
        cxx = _compiler()
        if not SOURCE.is_file():
            _error = f"kernel source {SOURCE} is missing from this installation"
            return None
        if cxx is None:
            _error = "no C++ compiler found (install g++ or set CXX)"
            return None
        try:
            lib = ctypes.CDLL(str(_build(cxx)))
            ptr, i32, i64, f32 = ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_float
            lib.tirex_slstm_forward.restype = i32
            lib.tirex_slstm_forward.argtypes = [ptr, i32] + [ptr] * 7 + [f32] + [i32] * 7
            lib.tirex_has_bf16_dot.restype = i32
            lib.tirex_has_bf16_dot.argtypes = []
            lib.tirex_uses_bf16_pairs.restype = i32
            lib.tirex_uses_bf16_pairs.argtypes = []
            lib.tirex_bf16_pairs_block.restype = i32
            lib.tirex_bf16_pairs_block.argtypes = []
            lib.tirex_has_gemm.restype = i32
            lib.tirex_has_gemm.argtypes = []
            lib.tirex_gemm.restype = i32
            lib.tirex_gemm.argtypes = [ptr, i64, ptr, ptr, i64, ptr, ptr, i64] + [i32] * 5
            lib.tirex_rms_norm.restype = None
            lib.tirex_rms_norm.argtypes = [ptr] * 3 + [i32, i32, f32, i32, i32, i32]
            lib.tirex_silu_mul.restype = None
            lib.tirex_silu_mul.argtypes = [ptr] * 3 + [i32] * 3
            lib.tirex_silu_mul_bf16.restype = None
            lib.tirex_silu_mul_bf16.argtypes = [ptr] * 3 + [i64, i32]
            lib.tirex_add_bf16.restype = None
            lib.tirex_add_bf16.argtypes = [ptr] * 2 + [i64, i32]
            _library = lib
        except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
            _error = str(exc)
    return _library


def error() -> str | None:
    """Why the kernel is unavailable (None if it loaded or was never tried)."""
    return _error

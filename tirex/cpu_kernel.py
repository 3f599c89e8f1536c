"""The compiled CPU kernels (sLSTM recurrence, norms, activations, weight matmuls), loaded with ctypes,
and the choice of which build runs on this CPU.

One source (``_cpu_kernel/slstm_cpu.cpp``, plain C ABI, no torch headers) is compiled per
instruction-set level with explicit compiler flags. ``LEVELS`` is the table from what the CPU reports to
what runs; the highest level the CPU supports is chosen once, at the first use:

===========  =====================================  =====================================================
level        needs (CPU flags)                      recurrence and weight matmuls
===========  =====================================  =====================================================
portable     nothing (any CPU, ARM included)        plain C++ (std::fma chains). Where the build has no FMA
                                                    instruction (x86 without AVX2 + FMA) each std::fma is a
                                                    library call: there the torch loop runs by default
                                                    (``SLOWER_THAN_TORCH``); forced: torch's matmuls
avx2         avx2, fma                              256-bit kernels, recurrent product from bf16 pairs
avx512       avx512f/bw/dq/vl (+ avx2, fma)         512-bit kernels, recurrent product from bf16 pairs
===========  =====================================  =====================================================

Every level computes each matmul output as the same FMA chain and every reduction in a fixed order, so
forecasts do not depend on the batch and all levels give the same bits. Native bfloat16 (AVX512-BF16,
AMX-BF16) is used by the opt-in fast mode only, whose bfloat16 weight matmuls run in torch (oneDNN:
AMX tiles where present, else AVX512-BF16 dot products): the exact mode's float32 arithmetic has no AMX
form, and the AVX512-BF16 recurrent product lost to the AVX-512 one (see the kernel source).

Forcing a level (tests, benchmarks, a CPU that misreports): ``TIREX_CPU_ISA=portable|avx2|avx512``
before the first use, or ``select("avx2")`` at run time (forecasts started afterwards use it).
``TIREX_CPU_GEMM=0`` (or ``select(matmuls="torch")``) leaves the weight matmuls to torch.
``TIREX_CPU_KERNEL=0`` disables the kernels (the torch loop runs the recurrence).

Emulation (tests): ``select("avx512", emulate=True)`` runs the 512-bit kernels on a CPU that has AVX2 + FMA
but not AVX-512, their intrinsics implemented by the SIMDe headers (Debian/Ubuntu ``libsimde-dev``, or any
directory in ``CPATH``) as pairs of native 256-bit instructions, so every lane computes what the AVX-512
hardware computes, FMA included: the tests cross-check the AVX-512 code bit for bit on AVX2 machines.
``emulatable_levels()`` lists what this machine can emulate.

The compiler is ``$CXX``, else ``g++`` / ``c++`` / ``clang++``, else (none installed, or it fails) zig's from
the PyPI package ``ziglang`` (``_compilers``). Each build takes 1-4 s on first use and is cached under
``$TIREX_CACHE_DIR`` (default ``~/.cache/tirex/kernels``), keyed by the source, the compiler and the flags;
where that folder cannot be written, in a private folder of the temp directory (``build_dir``). Where the
folder's file system forbids executable mappings (a ``noexec`` mount: a hardened ``/tmp``, home or container
volume), the library is loaded from an anonymous in-memory copy instead (``open_library``; Linux).
"""

from __future__ import annotations

import ctypes
import getpass
import hashlib
import importlib.util
import itertools
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

SOURCE = Path(__file__).with_name("_cpu_kernel") / "slstm_cpu.cpp"  # package data of tirex
COMMON_FLAGS = ["-O3", "-ffp-contract=off", "-fno-math-errno", "-fno-trapping-math", "-fopenmp-simd", "-fPIC",
                "-shared", "-std=c++17", "-pthread"]
_AVX2 = ["-mavx2", "-mfma"]
_AVX512 = _AVX2 + ["-mavx512f", "-mavx512bw", "-mavx512dq", "-mavx512vl", "-mprefer-vector-width=512"]


@dataclass(frozen=True)
class Level:
    name: str
    number: int  # TIREX_LEVEL in the source
    needs: tuple[str, ...]  # /proc/cpuinfo flags
    flags: tuple[str, ...]  # compiler flags besides COMMON_FLAGS
    x86_only: bool = True


LEVELS: dict[str, Level] = {level.name: level for level in (
    Level("portable", 0, (), (), x86_only=False),
    Level("avx2", 1, ("avx2", "fma"), tuple(_AVX2)),
    Level("avx512", 2, ("avx2", "fma", "avx512f", "avx512bw", "avx512dq", "avx512vl"), tuple(_AVX512)),
)}
OFF = ("0", "false", "no", "off")

_lock = threading.Lock()  # building and loading libraries
_select_lock = threading.Lock()  # deciding the dispatch
_libraries: dict[str, ctypes.CDLL] = {}
_errors: dict[str, str] = {}
_simde_error: str | None = None  # "" once the SIMDe headers were found (emulated levels)
_build_notes: dict[str, str] = {}  # level key -> how its library was built, where not by the first compiler


def cache_dir() -> Path | None:
    """The kernel cache: ``$TIREX_CACHE_DIR/kernels``, else ``$XDG_CACHE_HOME/tirex/kernels``, else
    ``~/.cache/tirex/kernels``; None where there is no home folder to put it in (HOME unset and a user id
    without a passwd entry, as containers run under an arbitrary id have): builds then go to a private temp
    folder (``build_dir``)."""
    if os.environ.get("TIREX_CACHE_DIR"):
        return Path(os.environ["TIREX_CACHE_DIR"]) / "kernels"
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]) / "tirex" / "kernels"
    try:
        return Path.home() / ".cache" / "tirex" / "kernels"
    except (RuntimeError, KeyError, OSError):  # "Could not determine home directory"
        return None


_build_dirs: dict[Path | None, Path] = {}  # cache_dir() -> where builds go when it is not writable
_build_dir_notes: dict[Path | None, str] = {}


def _private_dir(path: Path) -> bool:
    """Whether ``path`` is a directory of this user that nobody else can write (so no one else's library
    can be planted there for us to load)."""
    try:
        st = path.lstat()
    except OSError:
        return False
    owner = os.getuid() if hasattr(os, "getuid") else st.st_uid
    return path.is_dir() and not path.is_symlink() and st.st_uid == owner and not st.st_mode & 0o022


def build_dir() -> Path:
    """Where new builds go: ``cache_dir()``, or, where that cannot be created or written (a read-only home,
    a container's read-only file system), a private folder in the temp directory (``tempfile.gettempdir()``,
    this user's only: a folder there that someone else could write is never used). ``build_dir_note()``
    says when the fallback was taken."""
    preferred = cache_dir()
    if preferred in _build_dirs:
        return _build_dirs[preferred]
    try:
        if preferred is None:
            raise OSError("no home folder (HOME is unset and this user id has no passwd entry)")
        preferred.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=preferred, prefix=".write-test-")  # really writable (also for root)
        probe.close()
        chosen = preferred
    except OSError as exc:
        user = os.getuid() if hasattr(os, "getuid") else getpass.getuser()
        chosen = Path(tempfile.gettempdir()) / f"tirex-kernels-{user}"
        try:
            chosen.mkdir(mode=0o700, exist_ok=True)
        except OSError:
            pass
        if not _private_dir(chosen):
            chosen = Path(tempfile.mkdtemp(prefix="tirex-kernels-"))  # this process's own
        what = "no kernel cache" if preferred is None else f"kernel cache {preferred} is not writable"
        _build_dir_notes[preferred] = (f"{what} ({exc.strerror or exc}): built in {chosen}; set TIREX_CACHE_DIR to a "
                                       "writable folder to keep builds")
    _build_dirs[preferred] = chosen
    return chosen


def build_dir_note() -> str | None:
    """Why builds went to a temp folder instead of ``cache_dir()``, if they did."""
    return _build_dir_notes.get(cache_dir())


def is_x86() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64", "i686", "i386")


CPUINFO = Path("/proc/cpuinfo")


def _torch_flags() -> set[str]:
    """The x86 flags our levels need, from the vector level torch chose for this CPU (its own CPUID check,
    OS support for the registers included): where the OS does not say (no /proc/cpuinfo: Windows, some
    sandboxes)."""
    try:
        import torch

        capability = torch.backends.cpu.get_cpu_capability()
    except Exception:  # noqa: BLE001 - an old or odd torch: nothing known
        return set()
    flags = {"avx2", "fma"} if capability in ("AVX2", "AVX512") else set()
    return flags | ({"avx512f", "avx512bw", "avx512dq", "avx512vl"} if capability == "AVX512" else set())


def _sysctl(name: str) -> str:
    """``sysctl -n name`` (macOS), "" where that fails (another OS, an unknown name)."""
    try:
        return subprocess.run(["sysctl", "-n", name], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


# Apple silicon lists its features as sysctl switches (1: present), named as Linux names them on ARM.
DARWIN_ARM_FLAGS = {"hw.optional.AdvSIMD": "asimd", "hw.optional.arm.FEAT_BF16": "bf16"}


def cpu_flags() -> set[str]:
    """The CPU's feature flags as Linux reports them (/proc/cpuinfo; on macOS sysctl; elsewhere on x86 what
    torch's vector level implies); empty if unknown."""
    try:
        for line in CPUINFO.read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    if platform.system() == "Darwin" and not is_x86():
        return {flag for name, flag in DARWIN_ARM_FLAGS.items() if _sysctl(name) == "1"}
    if platform.system() == "Darwin":
        names = {word.lower().replace(".", "_") for word in
                 (_sysctl("machdep.cpu.features") + " " + _sysctl("machdep.cpu.leaf7_features")).split()}
        renamed = {"avx2_0": "avx2", "avx512bf16": "avx512_bf16"}  # sysctl spells a few differently
        if names:
            return {renamed.get(n, n) for n in names}
    return _torch_flags() if is_x86() else set()


# The flags that decide the kernel level and the fast mode (x86 and ARM): what reports and benchmarks record.
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512_bf16", "avx512_fp16",
             "amx_bf16", "amx_tile", "amx_int8", "asimd", "sve", "bf16")


def isa_flags(flags: set[str] | None = None) -> list[str]:
    """Which of ``ISA_FLAGS`` this CPU reports (``cpu_flags``), sorted."""
    flags = cpu_flags() if flags is None else flags
    return sorted(flags & set(ISA_FLAGS))


# ARM CPUs by the implementer and part numbers of their main ID register, as Linux's /proc/cpuinfo gives them
# ("CPU implementer", "CPU part"; it has no "model name" there): the cores of the common ARM servers and
# boards (AWS Graviton 2/3/4: Neoverse N1/V1/V2, Ampere Altra: N1, NVIDIA Grace: V2, Raspberry Pi 4/5:
# Cortex-A72/A76). Others are named by their numbers.
ARM_IMPLEMENTERS = {"0x41": "ARM", "0x46": "Fujitsu", "0x48": "HiSilicon", "0x4e": "NVIDIA", "0x51": "Qualcomm",
                    "0x61": "Apple", "0xc0": "Ampere"}
ARM_PARTS = {("0x41", "0xd03"): "Cortex-A53", ("0x41", "0xd05"): "Cortex-A55", ("0x41", "0xd07"): "Cortex-A57",
             ("0x41", "0xd08"): "Cortex-A72", ("0x41", "0xd09"): "Cortex-A73", ("0x41", "0xd0b"): "Cortex-A76",
             ("0x41", "0xd0c"): "Neoverse-N1", ("0x41", "0xd40"): "Neoverse-V1", ("0x41", "0xd41"): "Cortex-A78",
             ("0x41", "0xd44"): "Cortex-X1", ("0x41", "0xd49"): "Neoverse-N2", ("0x41", "0xd4f"): "Neoverse-V2",
             ("0x41", "0xd84"): "Neoverse-V3", ("0x41", "0xd8e"): "Neoverse-N3", ("0x46", "0x001"): "A64FX",
             ("0x48", "0xd01"): "Kunpeng-920"}


def cpu_model() -> str:
    """The CPU's name for reports and benchmark records: Linux's "model name" (x86), the core named by
    its implementer and part numbers (ARM), macOS's brand string (Apple M1 ...), Windows' processor name,
    else what ``platform`` knows."""
    fields: dict[str, str] = {}
    try:
        for line in CPUINFO.read_text().splitlines():
            if not line.strip() and fields:  # the end of the first CPU's block
                break
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    if fields.get("model name"):
        return fields["model name"]
    implementer, part = fields.get("CPU implementer", "").lower(), fields.get("CPU part", "").lower()
    if implementer:
        name = ARM_PARTS.get((implementer, part))
        vendor = ARM_IMPLEMENTERS.get(implementer, f"implementer {implementer}")
        return f"{vendor} {name}" if name else f"{vendor} (ARM part {part or '?'})"
    if platform.system() == "Darwin":
        brand = _sysctl("machdep.cpu.brand_string")
        if brand:
            return brand
    if platform.system() == "Windows":
        try:
            import winreg

            with winreg.OpenKey(winreg.HKEY_LOCAL_MACHINE, r"HARDWARE\DESCRIPTION\System\CentralProcessor\0") as key:
                return str(winreg.QueryValueEx(key, "ProcessorNameString")[0]).strip()
        except (ImportError, OSError):
            pass
    processor = platform.processor()
    return processor if processor and processor != "unknown" else platform.machine()


def runnable_levels(flags: set[str] | None = None) -> list[str]:
    """The levels this CPU can run, lowest first (always at least "portable")."""
    flags = cpu_flags() if flags is None else flags
    return [name for name, level in LEVELS.items()
            if (is_x86() or not level.x86_only) and all(f in flags for f in level.needs)]


def best_level(flags: set[str] | None = None) -> str:
    return runnable_levels(flags)[-1]


NO_COMPILER = "no C++ compiler found (install g++, set CXX, or pip install ziglang: a compiler from PyPI)"
# The zig toolchain's C++ compiler (clang, with its own C++ library) from the PyPI package ``ziglang``: where
# no system compiler is installed (a slim container image, Windows, macOS without the command line tools).
# It targets the CPU it runs on unless told otherwise: baseline, so that each level's flags alone decide.
ZIG = ("-m", "ziglang", "c++", "-mcpu=baseline")


def _compilers() -> list[list[str]]:
    """The C++ compilers to try, each as a command, in order: ``$CXX`` alone where it is set (split as a shell
    would, e.g. "ccache g++"); else the first of ``g++``, ``c++``, ``clang++`` on the PATH, then zig's from the
    ``ziglang`` package where it is installed - also after a system compiler that fails (macOS without the
    command line tools has a ``clang++`` that only asks to install them; an old g++ without AVX-512)."""
    if os.environ.get("CXX", "").strip():
        return [shlex.split(os.environ["CXX"])]
    found = [[path] for path in map(shutil.which, ("g++", "c++", "clang++")) if path][:1]
    if importlib.util.find_spec("ziglang") is not None:
        found.append([sys.executable, *ZIG])
    return found


def _compiler() -> list[str] | None:
    """The first compiler to try (``_compilers``); None if there is none."""
    return next(iter(_compilers()), None)


def _is_zig(cxx: list[str]) -> bool:
    return tuple(cxx[1:]) == ZIG


def compile_command(level: str, cxx: list[str], output: Path, emulate: bool = False) -> list[str]:
    spec = LEVELS[level]
    flags = [*_AVX2, "-DTIREX_EMULATE"] if emulate else list(spec.flags)  # emulated: 512-bit ops as 256-bit pairs
    return [*cxx, *COMMON_FLAGS, *flags, f"-DTIREX_LEVEL={spec.number}", str(SOURCE), "-o", str(output)]


def build(level: str, cxx: list[str] | None = None, emulate: bool = False) -> Path:
    """Compile ``level`` (whether or not this CPU can run it; ``emulate``: with SIMDe for an AVX2 CPU) into
    the cache with ``cxx``, else with the first of ``_compilers()`` that succeeds (a library one of them built
    before is used as it is: a compiler that fails is not tried again in every process); return its path.
    Where a compiler after the first built it, ``_build_notes`` says which (and why)."""
    candidates = [cxx] if cxx else _compilers()
    if not candidates:
        raise RuntimeError(NO_COMPILER)
    names = [_library_name(level, candidate, emulate) for candidate in candidates]
    _build_notes.pop(_key(level, emulate), None)
    for n, (candidate, name) in enumerate(zip(candidates, names)):
        found = _built(name)
        if found is not None:
            if n > 0:
                _build_notes[_key(level, emulate)] = f"built with {shlex.join(candidate)}"
            return found
    failures = []
    for candidate, name in zip(candidates, names):
        try:
            path = _compile(level, candidate, emulate, name)
        except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
            failures.append(f"{shlex.join(candidate)}: {exc}" if isinstance(exc, OSError) else str(exc))
            continue
        if failures:
            _build_notes[_key(level, emulate)] = f"built with {shlex.join(candidate)} ({'; '.join(failures)[-600:]})"
        return path
    raise RuntimeError("; ".join(failures))


def _library_name(level: str, cxx: list[str], emulate: bool) -> str:
    """The library's file name: keyed by the source and the whole compile command."""
    command = compile_command(level, cxx, Path("x"), emulate)
    key = hashlib.sha256(SOURCE.read_bytes() + " ".join(command).encode()).hexdigest()[:16]
    return f"slstm_cpu_{level}{'_emulated' if emulate else ''}_{key}.so"


def _built(name: str) -> Path | None:
    """The library of that name built before, if any: in the cache (also a read-only one, e.g. baked into an
    image) or where builds go when the cache cannot be written."""
    cache = cache_dir()
    if cache is not None and (cache / name).exists():  # build_dir() only where it is not: it may set up a temp folder
        return cache / name
    built = build_dir() / name
    return built if built.exists() else None


def _compile(level: str, cxx: list[str], emulate: bool, name: str) -> Path:
    target = build_dir() / name
    env = None
    if _is_zig(cxx):  # zig's own cache (the C++ library it builds once, 1-2 minutes) beside the kernels
        env = {**os.environ, "ZIG_GLOBAL_CACHE_DIR": os.environ.get("ZIG_GLOBAL_CACHE_DIR") or str(target.parent / "zig")}
        if not (Path(env["ZIG_GLOBAL_CACHE_DIR"]) / "o").is_dir():
            print("tirex: building the CPU kernels with zig (ziglang); its first build on this machine takes 1-2 "
                  "minutes", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        tmp_lib = Path(tmp) / target.name
        proc = subprocess.run(compile_command(level, cxx, tmp_lib, emulate), capture_output=True, text=True,
                              timeout=900, env=env)
        if proc.returncode != 0:
            raise RuntimeError(f"{shlex.join(cxx)} failed for level {level}: {proc.stderr.strip()[-2000:]}")
        os.replace(tmp_lib, target)  # atomic: concurrent builders never see a half-written library
    return target


def _declare(lib: ctypes.CDLL) -> None:
    ptr, i32, i64, f32 = ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_float
    lib.tirex_slstm_forward.restype = i32
    lib.tirex_slstm_forward.argtypes = [ptr, i32] + [ptr] * 7 + [f32] + [i32] * 7 + [ptr, i32]
    for name in ("tirex_level", "tirex_native_fma", "tirex_has_bf16_dot", "tirex_uses_bf16_pairs",
                 "tirex_bf16_pairs_block", "tirex_has_gemm"):
        getattr(lib, name).restype = i32
        getattr(lib, name).argtypes = []
    lib.tirex_gemm.restype = i32
    lib.tirex_gemm.argtypes = [ptr, i64, ptr, ptr, i64, ptr, ptr, i64] + [i32] * 5
    lib.tirex_gemm_heads.restype = i32
    lib.tirex_gemm_heads.argtypes = [ptr, i64, i64, ptr, i64, i64, ptr, i64, i64] + [i32] * 6
    lib.tirex_rms_norm.restype = None
    lib.tirex_rms_norm.argtypes = [ptr] * 3 + [i32, i32, f32, i32, i32, i32]
    lib.tirex_silu_mul.restype = None
    lib.tirex_silu_mul.argtypes = [ptr] * 3 + [i32] * 3
    lib.tirex_silu_mul_bf16.restype = None
    lib.tirex_silu_mul_bf16.argtypes = [ptr] * 3 + [i64, i32]
    lib.tirex_add_bf16.restype = None
    lib.tirex_add_bf16.argtypes = [ptr] * 2 + [i64, i32]
    lib.tirex_blocks_forward.restype = i32
    lib.tirex_blocks_forward.argtypes = [ptr, i32] + [ptr] * 8 + [i32] * 6 + [f32, i32, i32]


def _disabled() -> bool:
    return os.environ.get("TIREX_CPU_KERNEL", "1").strip().lower() in OFF


def _emulation_error(level: str) -> str | None:
    """Why ``level`` cannot be emulated here (None: it can)."""
    if level in runnable_levels():
        return f"this CPU runs level {level!r} natively: nothing to emulate"
    if LEVELS[level].number < 2 or not is_x86() or "avx2" not in runnable_levels():
        return "only the AVX-512 level can be emulated, and only on an x86 CPU that runs the avx2 level"
    global _simde_error
    if _simde_error is None:
        cxx = _compiler()
        if cxx is None:
            _simde_error = NO_COMPILER
        else:
            with tempfile.TemporaryDirectory() as tmp:
                probe = Path(tmp) / "probe.cpp"
                probe.write_text("#include <simde/x86/avx512.h>\nint main() { return 0; }\n")
                try:
                    proc = subprocess.run([*cxx, "-fsyntax-only", *_AVX2, str(probe)], capture_output=True, text=True,
                                          timeout=120)
                    found = proc.returncode == 0
                except (OSError, subprocess.SubprocessError):
                    found = False
            _simde_error = "" if found else ("the SIMDe headers (simde/x86/avx512.h) are not installed: "
                                             "apt install libsimde-dev, or put them on CPATH")
    return _simde_error or None


def emulatable_levels() -> list[str]:
    """The levels this CPU cannot run that it can run emulated (``select(level, emulate=True)``, tests)."""
    return [name for name in LEVELS if _emulation_error(name) is None]


def _key(level: str, emulate: bool) -> str:
    return f"{level} (emulated)" if emulate else level


_memory_copies: dict[str, tuple[int, str]] = {}  # library path -> (its memfd, why), open while the process runs


def open_library(path: Path) -> ctypes.CDLL:
    """Load the library at ``path``. Where that fails although the file is there - its file system forbids
    executable mappings (a ``noexec`` mount; the loader says "failed to map segment from shared object") -
    load a copy from an anonymous in-memory file (Linux ``memfd_create``), which no mount option covers.
    The memory file stays open while the process runs: the loader knows a library by its path
    (``/proc/self/fd/N``), and a number given back could name another library later."""
    if str(path) in _memory_copies:  # copied before (the dispatch decided again): the same library
        return ctypes.CDLL(f"/proc/self/fd/{_memory_copies[str(path)][0]}")
    try:
        return ctypes.CDLL(str(path))
    except OSError as exc:
        if not hasattr(os, "memfd_create") or not path.is_file():
            raise
        first = exc
    fd = -1
    try:
        fd = os.memfd_create(path.name, os.MFD_CLOEXEC)  # not inherited by child processes
        with os.fdopen(os.dup(fd), "wb") as copy:
            copy.write(path.read_bytes())
        lib = ctypes.CDLL(f"/proc/self/fd/{fd}")
    except OSError as exc:
        if fd >= 0:
            os.close(fd)
        raise OSError(f"{first}; loading a copy from memory failed too: {exc}") from exc
    _memory_copies[str(path)] = (fd, f"{path.parent} does not let libraries be loaded from it ({first}): "
                                     "loaded from a copy in memory")
    return lib


def memory_note(lib: ctypes.CDLL | None) -> str | None:
    """Why ``lib`` was loaded from a copy in memory, if it was."""
    for fd, why in _memory_copies.values():
        if lib is not None and lib._name == f"/proc/self/fd/{fd}":
            return why
    return None


# Run in a child process before a vector level is loaded here: a small matmul and SwiGLU through the
# library. A CPU or VM that reports instructions it cannot run then kills the child (SIGILL), not us.
PROBE = """
import ctypes, os, sys
try:
    lib = ctypes.CDLL(sys.argv[1])
except OSError:  # a noexec file system: from a copy in memory, as open_library does
    fd = os.memfd_create("probe")
    with os.fdopen(os.dup(fd), "wb") as copy, open(sys.argv[1], "rb") as original:
        copy.write(original.read())
    lib = ctypes.CDLL(f"/proc/self/fd/{fd}")
F, M, N, K = ctypes.c_float, 6, 64, 32
a, b, bias, c = (F * (M * K))(*[0.5] * (M * K)), (F * (K * N))(*[0.25] * (K * N)), (F * N)(), (F * (M * N))()
P, L = ctypes.c_void_p, ctypes.c_long
lib.tirex_gemm.argtypes = [P, L, P, P, L, P, P, L] + [ctypes.c_int] * 5
lib.tirex_gemm(a, K, b, None, N, bias, c, N, M, N, K, 0, 1)
lib.tirex_silu_mul(c, c, c, M, N, 1)
assert c[M * N - 1] != 0 and abs(c[0] - 4.0 * 4.0 / (1 + 2.718281828459045 ** -4.0)) < 1e-4, list(c[:4])
print("ok")
"""


# Windows ends a process that executes an illegal instruction with STATUS_ILLEGAL_INSTRUCTION as its exit code
# (no signal, so no negative return code): unsigned as Python reports it there, and as a signed 32-bit value.
ILLEGAL_INSTRUCTION_EXIT = (0xC000001D, 0xC000001D - 2**32)


def check_runs(path: Path, level: str) -> None:
    """Raise RuntimeError if the library at ``path`` does not run here: ``PROBE`` in a child process dies of
    a signal (SIGILL: the CPU or VM reports instructions it cannot execute) or computes wrong values. A check
    that cannot run at all (no Python interpreter to start, e.g. an embedded one) trusts the CPU's flags, as
    without the check. Passing is remembered per library and CPU next to the library, where that can be
    written."""
    cpu = hashlib.sha256((cpu_model() + " " + " ".join(sorted(cpu_flags()))).encode()).hexdigest()[:12]
    marker = path.with_name(f"{path.name}.runs-{cpu}")
    if marker.exists():
        return
    try:
        proc = subprocess.run([sys.executable, "-I", "-c", PROBE, str(path)], capture_output=True, text=True,
                              timeout=120)
    except (OSError, subprocess.SubprocessError):
        return
    if proc.returncode in ILLEGAL_INSTRUCTION_EXIT:
        how = f"exit code {proc.returncode % 2**32:#x}"
    elif proc.returncode < 0:
        how = f"signal {-proc.returncode}"
    else:
        how = None
    if how:
        raise RuntimeError(f"level {level} does not run on this CPU ({how} in a check): the CPU "
                           "or VM reports instructions it cannot execute")
    if "AssertionError" in proc.stderr:
        raise RuntimeError(f"level {level} computes wrong values here: {proc.stderr.strip().splitlines()[-1][-300:]}")
    if proc.stdout.strip() != "ok":
        return
    try:
        marker.touch()
    except OSError:
        pass  # a read-only cache: checked again by the next process


def load_level(level: str, emulate: bool = False) -> ctypes.CDLL | None:
    """The library of ``level``, building it on first use; None (``level_error(level, emulate)`` says why) if
    this CPU cannot run it (``emulate``: cannot emulate it) or it cannot be built."""
    if level not in LEVELS:
        raise ValueError(f"unknown CPU kernel level {level!r}; choose one of {list(LEVELS)}")
    name = _key(level, emulate)
    if name in _libraries or name in _errors:
        return _libraries.get(name)
    with _lock:
        if name in _libraries or name in _errors:
            return _libraries.get(name)
        if emulate and _emulation_error(level):
            _errors[name] = f"level {level!r} cannot be emulated here: {_emulation_error(level)}"
        elif not emulate and level not in runnable_levels():
            _errors[name] = f"this CPU cannot run level {level!r} (it needs {', '.join(LEVELS[level].needs)})"
        elif not SOURCE.is_file():
            _errors[name] = f"kernel source {SOURCE} is missing from this installation"
        elif _compiler() is None:
            _errors[name] = NO_COMPILER
        else:
            try:
                path = build(level, emulate=emulate)
                if level != "portable":
                    check_runs(path, level)
                lib = open_library(path)
                _declare(lib)
                if lib.tirex_level() != LEVELS[level].number:
                    raise RuntimeError(f"library of level {name} reports level {lib.tirex_level()}")
                _libraries[name] = lib
            except (OSError, RuntimeError, AttributeError, subprocess.SubprocessError) as exc:
                _errors[name] = str(exc)
    return _libraries.get(name)


def level_error(level: str, emulate: bool = False) -> str | None:
    return _errors.get(_key(level, emulate))


# -- the active dispatch ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Dispatch:
    """What runs on this CPU: the kernel level (None: no kernel) and who does the weight matmuls."""

    level: str | None
    library: ctypes.CDLL | None = field(repr=False, compare=False)
    matmuls: str  # "compiled" or "torch"
    why: tuple[str, ...]  # one line per decision
    emulated: bool = False  # the level's intrinsics emulated on a lower one (tests: select(level, emulate=True))
    chosen: bool = False  # no kernel by choice (TIREX_CPU_KERNEL=0, or the torch loop is faster here), not for want of one


_active: Dispatch | None = None

# An x86 CPU without AVX2 + FMA (Sandy Bridge and older, Atom-class cores, VMs given a generic CPU model such
# as QEMU's qemu64 / x86-64-v2, Proxmox's default): the portable level's FMA chains (the same bits as every
# other level) are a library call per multiply-add there, which made a published-size forecast slower than
# the torch loop (AMD Zen 3 with the portable level forced: 0.48 s against 0.29 s at batch 1, 23.1 s against
# 4.2 s at batch 32; glibc's FMA without the instruction, under QEMU's Westmere model: 2.8x slower at batch 1).
SLOWER_THAN_TORCH = ("level portable has no FMA instruction on this CPU (each multiply-add of its FMA chains "
                     "would be a library call): the torch loop is faster here and runs instead (within the "
                     "parity bar, not bitwise batch-independent); TIREX_CPU_ISA=portable forces the level "
                     "(the other levels' bits; 1.7x slower at batch 1 and 5.5x at batch 32 on Zen 3)")


def _resolve(level: str | None, matmuls: str | None, emulate: bool = False) -> Dispatch:
    why = []
    best = best_level()
    if _disabled():
        return Dispatch(None, None, "torch", ("TIREX_CPU_KERNEL=0: no compiled kernels (torch loop and torch matmuls)",),
                        chosen=True)
    forced = level or os.environ.get("TIREX_CPU_ISA", "").strip().lower() or None
    if forced is not None and forced not in LEVELS:
        raise ValueError(f"TIREX_CPU_ISA / level must be one of {list(LEVELS)}, got {forced!r}")
    chosen = forced or best
    flags = sorted(set(cpu_flags()) & {f for lv in LEVELS.values() for f in lv.needs} | (
        set(cpu_flags()) & {"avx512_bf16", "amx_bf16", "amx_tile"}))
    why.append(f"CPU {cpu_model()!r} reports {' '.join(flags) or 'no vector extensions we use'}: best level {best}")
    if forced:
        why.append(f"level {forced} forced ({'select()' if level else 'TIREX_CPU_ISA'})")
    if emulate:
        why.append(f"level {chosen} emulated with SIMDe on AVX2 + FMA (tests: the {chosen} code on this CPU)")
    library = load_level(chosen, emulate)
    failed = []
    if library is None:
        failed = [(chosen, level_error(chosen, emulate))]
        # not forced: the next lower level this CPU runs (an AVX-512 build an old compiler refuses still
        # leaves the AVX2 kernels and their compiled matmuls), down to portable
        lower = [] if forced else [lv for lv in reversed(runnable_levels()) if LEVELS[lv].number < LEVELS[chosen].number]
        for chosen in lower:
            library = load_level(chosen)
            if library is not None:
                break
            failed.append((chosen, level_error(chosen)))
        # levels that failed for the same reason (no compiler, say): one line
        for error, group in itertools.groupby(failed, key=lambda item: item[1]):
            levels = [level for level, _ in group]
            why.append(f"level{'s' if len(levels) > 1 else ''} {', '.join(levels)} unavailable: {error}")
        if library is not None:
            why.append(f"level {chosen} instead")
    if library is None:
        return Dispatch(None, None, "torch", tuple(why))
    if chosen == "portable" and not forced and not library.tirex_native_fma():
        why.append(SLOWER_THAN_TORCH)  # after a higher level failed: a fallback, which warns (a fixable build)
        return Dispatch(None, None, "torch", tuple(why), chosen=not failed)
    if build_dir_note():
        why.append(build_dir_note())
    if memory_note(library):
        why.append(memory_note(library))
    if _key(chosen, emulate) in _build_notes:
        why.append(f"level {chosen} {_build_notes[_key(chosen, emulate)]}")
    wanted = matmuls or ("torch" if os.environ.get("TIREX_CPU_GEMM", "1").strip().lower() in OFF else "compiled")
    if wanted not in ("compiled", "torch"):
        raise ValueError(f"matmuls must be 'compiled' or 'torch', got {wanted!r}")
    if wanted == "torch":
        why.append("weight matmuls: torch (" + ("select(matmuls='torch')" if matmuls else "TIREX_CPU_GEMM=0") +
                   "): not bitwise batch-independent")
    elif not library.tirex_native_fma():
        wanted = "torch"
        why.append("weight matmuls: torch (no FMA instruction at this level: the compiled ones would emulate it)")
    else:
        why.append(f"weight matmuls: compiled ({chosen}): every output one FMA chain, independent of the batch")
    return Dispatch(chosen, library, wanted, tuple(why), emulate)


def active() -> Dispatch:
    """The dispatch in use (decided at the first call, or by the last ``select``)."""
    global _active
    if _active is None:
        with _select_lock:
            if _active is None:
                _active = _resolve(None, None)
    return _active


def select(level: str | None = None, matmuls: str | None = None, emulate: bool = False) -> Dispatch:
    """Switch the CPU kernel level ("portable", "avx2", "avx512"; None = ``TIREX_CPU_ISA``
    or the best this CPU runs) and who does the weight matmuls ("compiled", "torch"; None =
    ``TIREX_CPU_GEMM`` or compiled). Forecasts started afterwards use it; one already running keeps the
    kernels it started with. ``emulate=True`` runs a level this CPU cannot run through SIMDe (tests; see the
    module docstring). Raises ``RuntimeError`` if the level cannot run here. Returns the new dispatch."""
    global _active
    if level is not None and level not in LEVELS:
        raise ValueError(f"unknown CPU kernel level {level!r}; choose one of {list(LEVELS)}")
    if emulate and level is None:
        raise ValueError("emulate=True needs the level to emulate, e.g. select('avx512', emulate=True)")
    with _select_lock:
        dispatch = _resolve(level, matmuls, emulate)
        if level is not None and dispatch.level != level:
            reason = level_error(level, emulate) or "; ".join(dispatch.why)
            raise RuntimeError(f"CPU kernel level {level!r} unavailable: {reason}")
        _active = dispatch
    return dispatch


def reset() -> None:
    """Forget the decision and the loaded libraries: the next use decides (and builds or loads) again from
    the environment. Forwards already running keep the library they hold."""
    global _active
    with _select_lock, _lock:
        _active = None
        _errors.clear()
        _libraries.clear()
        _build_notes.clear()
        _build_dirs.clear()
        _build_dir_notes.clear()


def load() -> ctypes.CDLL | None:
    """The active kernel library; None (``error()`` says why) if there is none."""
    return active().library


def error() -> str | None:
    """Why there is no kernel library (None if there is one)."""
    dispatch = active()
    return None if dispatch.library is not None else "; ".join(dispatch.why)

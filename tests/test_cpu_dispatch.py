"""The CPU kernel's instruction-set dispatch: the table, every level built, every level this CPU runs
cross-checked against the others (bit for bit), the torch fallback and the parity fixture; batch
independence as the README states it; concurrent forecasts from several Python threads."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import head128_forward, run_at_once
from tirex import ModelConfig, TiRexModel, backends, cpu_kernel, load_model

RUNNABLE = cpu_kernel.runnable_levels()
# (level, emulated): every level this CPU runs, then those it runs only emulated (the AVX-512 code on an AVX2
# CPU through SIMDe, where its headers are installed: bit for bit what AVX-512 hardware computes)
LEVELS = [(level, False) for level in RUNNABLE] + [(level, True) for level in cpu_kernel.emulatable_levels()]
LEVEL_PARAMS = [pytest.param(level, emulated, id=f"{level}-emulated" if emulated else level, marks=pytest.mark.skipif(
                    cpu_kernel._disabled(), reason="TIREX_CPU_KERNEL=0: no kernels to force"))
                for level, emulated in LEVELS]
kernels = pytest.mark.skipif(cpu_kernel.load() is None, reason=f"CPU kernel unavailable: {cpu_kernel.error()}")


def _model(seed=0, embed=64, heads=2):
    torch.manual_seed(seed)
    model = TiRexModel(ModelConfig(embed_dim=embed, num_heads=heads, num_blocks=2, input_ff_dim=96,
                                   context_length=256)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def _series(n=7, seed=1):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=rng.integers(20, 400)).cumsum() for _ in range(n)]


# -- the table -----------------------------------------------------------------------------------------
AVX512 = {"avx2", "fma", "avx512f", "avx512bw", "avx512dq", "avx512vl"}


@pytest.mark.parametrize("flags, expected", [
    (set(), ["portable"]),
    ({"sse4_2", "avx"}, ["portable"]),
    ({"avx2"}, ["portable"]),  # AVX2 without FMA: not enough
    ({"avx2", "fma"}, ["portable", "avx2"]),
    ({"avx2", "fma", "avx512f"}, ["portable", "avx2"]),  # AVX-512 F alone (Knights Landing): not enough
    (AVX512, ["portable", "avx2", "avx512"]),
    (AVX512 | {"avx512_bf16", "amx_bf16", "amx_tile"}, ["portable", "avx2", "avx512"]),
])
def test_levels_follow_the_cpu_flags(monkeypatch, flags, expected):
    monkeypatch.setattr(cpu_kernel, "is_x86", lambda: True)
    assert cpu_kernel.runnable_levels(flags) == expected
    assert cpu_kernel.best_level(flags) == expected[-1]


def test_other_architectures_get_the_portable_level(monkeypatch):
    monkeypatch.setattr(cpu_kernel, "is_x86", lambda: False)
    assert cpu_kernel.runnable_levels({"asimd", "fp", "avx2", "fma"}) == ["portable"]


def test_forcing_an_unknown_or_unrunnable_level_is_a_clear_error(monkeypatch, restore_dispatch):
    with pytest.raises(ValueError, match="one of"):
        cpu_kernel.select("avx1024")
    monkeypatch.setattr(cpu_kernel, "cpu_flags", lambda: set())
    cpu_kernel.reset()
    if cpu_kernel.is_x86() and not cpu_kernel._disabled():
        with pytest.raises(RuntimeError, match="cannot run level 'avx2'"):
            cpu_kernel.select("avx2")


OLD_X86 = {"sse4_2", "avx"}  # an x86 CPU without AVX2 + FMA: Sandy Bridge, or a VM given a generic CPU model


@pytest.mark.skipif(not cpu_kernel.is_x86() or cpu_kernel._compiler() is None or cpu_kernel._disabled(),
                    reason="needs an x86 CPU and a C++ compiler")
def test_an_x86_cpu_without_fma_gets_the_faster_torch_loop(monkeypatch, tmp_path, restore_dispatch):
    """There the portable level's FMA chains are a library call per multiply-add (2-6x slower than the torch
    loop): the default is the torch loop, without a warning (nothing failed), with the reason; forcing the
    level still gives it, with the other levels' bits."""
    monkeypatch.setattr(cpu_kernel, "cpu_flags", lambda: set(OLD_X86))
    monkeypatch.setenv("TIREX_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("TIREX_CPU_ISA", raising=False)
    cpu_kernel.reset()
    dispatch = cpu_kernel.active()
    assert dispatch.level is None and dispatch.library is None and dispatch.matmuls == "torch", dispatch.why
    assert dispatch.chosen and dispatch.why[-1] == cpu_kernel.SLOWER_THAN_TORCH, dispatch.why
    model = _model()
    backends._warned.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the torch loop by choice is no fallback to warn about
        q, _ = model.forecast(_series(2), prediction_length=8, output_type="torch")
    info = model.backend_info()["cpu"]
    assert info["level"] is None and cpu_kernel.SLOWER_THAN_TORCH in info["why"]
    assert torch.isfinite(q).all()

    monkeypatch.setenv("TIREX_CPU_ISA", "portable")
    cpu_kernel.reset()
    assert cpu_kernel.active().level == "portable" and not cpu_kernel.active().library.tirex_native_fma()

    # an AVX2 CPU whose AVX2 build failed: the same torch loop, but as a fallback from a fixable failure,
    # which the warning reports
    monkeypatch.delenv("TIREX_CPU_ISA")
    monkeypatch.setattr(cpu_kernel, "cpu_flags", lambda: {"avx2", "fma"})
    real = cpu_kernel.load_level
    monkeypatch.setattr(cpu_kernel, "load_level", lambda level, emulate=False: None if level == "avx2" else real(level, emulate))
    cpu_kernel.reset()
    fallback = cpu_kernel.active()
    assert fallback.library is None and not fallback.chosen and fallback.why[-1] == cpu_kernel.SLOWER_THAN_TORCH
    with pytest.warns(RuntimeWarning, match="unavailable .*level avx2 unavailable"):
        model.forecast(_series(2), prediction_length=8, output_type="torch")


@pytest.mark.skipif(not cpu_kernel.is_x86() or shutil.which("g++") is None or "fma" not in cpu_kernel.cpu_flags()
                    or cpu_kernel._disabled(), reason="needs an x86 CPU with FMA and g++")
def test_a_portable_build_with_an_fma_instruction_keeps_the_level(monkeypatch, tmp_path, restore_dispatch):
    """The decision follows the build, not a guess from the architecture: a portable build whose compiler
    maps std::fma to the instruction (ARM; here g++ -mfma, as on a CPU with FMA but not AVX2) runs the level."""
    monkeypatch.setattr(cpu_kernel, "cpu_flags", lambda: {"fma", "avx"})
    monkeypatch.setenv("TIREX_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("CXX", "g++ -mfma")
    monkeypatch.delenv("TIREX_CPU_ISA", raising=False)
    monkeypatch.delenv("TIREX_CPU_GEMM", raising=False)  # the compiled matmuls are part of what is tested
    cpu_kernel.reset()
    dispatch = cpu_kernel.active()
    assert dispatch.level == "portable" and dispatch.matmuls == "compiled", dispatch.why
    assert dispatch.library.tirex_native_fma() and not dispatch.chosen


def test_emulation_is_only_for_levels_this_cpu_cannot_run(restore_dispatch):
    with pytest.raises(ValueError, match="needs the level"):
        cpu_kernel.select(None, emulate=True)
    if cpu_kernel._disabled():
        return
    with pytest.raises(RuntimeError, match="natively: nothing to emulate"):
        cpu_kernel.select("portable", emulate=True)
    for level in cpu_kernel.LEVELS:
        if level not in RUNNABLE and level != "avx512":
            with pytest.raises(RuntimeError, match="only the AVX-512 level can be emulated"):
                cpu_kernel.select(level, emulate=True)


@pytest.mark.skipif(not cpu_kernel.is_x86(), reason="the x86 levels are not built on other architectures")
def test_every_x86_level_runs_here_natively_or_emulated(restore_dispatch):
    """On an x86 CPU with AVX2 + FMA every level's code runs in these tests, natively or emulated; where the
    SIMDe headers are missing the skip says that the AVX-512 code was only compiled."""
    if "avx2" not in RUNNABLE or cpu_kernel._disabled():
        pytest.skip("this CPU runs neither the avx2 level nor an emulated avx512 one, or TIREX_CPU_KERNEL=0")
    missing = [level for level in cpu_kernel.LEVELS if (level, False) not in LEVELS and (level, True) not in LEVELS]
    reasons = {level: cpu_kernel._emulation_error(level) for level in missing}
    if any(reason and "SIMDe" in reason for reason in reasons.values()):
        pytest.skip(f"levels {missing} only compiled, not run: {reasons}")
    assert not missing, reasons
    for level, emulated in LEVELS:
        assert cpu_kernel.select(level, emulate=emulated).library.tirex_level() == cpu_kernel.LEVELS[level].number


# -- every level compiles, whether or not this CPU runs it ----------------------------------------------
@pytest.mark.skipif(cpu_kernel._compiler() is None, reason="no C++ compiler")
@pytest.mark.parametrize("level", list(cpu_kernel.LEVELS))
def test_every_level_compiles(level):
    if cpu_kernel.LEVELS[level].x86_only and not cpu_kernel.is_x86():
        pytest.skip("x86 level on another architecture")
    path = cpu_kernel.build(level)  # cached per source + compiler + flags: rebuilt after any source change
    assert path.is_file() and path.stat().st_size > 0


@pytest.mark.skipif(cpu_kernel._compiler() is None, reason="no C++ compiler")
def test_levels_refuse_missing_compiler_flags(tmp_path):
    """A level's source refuses to build without its instruction set (no silent scalar fallback)."""
    if not cpu_kernel.is_x86():
        pytest.skip("x86 levels")
    cmd = cpu_kernel.compile_command("avx512", cpu_kernel._compiler(), tmp_path / "x.so")
    cmd = [c for c in cmd if not c.startswith("-mavx512")]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode != 0 and "needs -mavx512f" in proc.stderr


@kernels
@pytest.mark.skipif(cpu_kernel._compiler() is None, reason="no C++ compiler")
def test_a_cpu_that_misreports_its_flags_gets_a_lower_level_not_a_crash(monkeypatch):
    """A VM that reports AVX-512 without running it: the real AVX-512 build is checked in a child process,
    which dies of SIGILL here (an AVX2-only CPU), and the dispatch takes the next lower level; before, loading
    and calling it would have killed this process."""
    if not cpu_kernel.is_x86() or "avx512" in cpu_kernel.runnable_levels() or "avx2" not in cpu_kernel.runnable_levels():
        pytest.skip("needs an x86 CPU with AVX2 and without AVX-512")
    # the decisions of this test stay in a copy of the module's error record (the real one is untouched)
    monkeypatch.setattr(cpu_kernel, "_errors", dict(cpu_kernel._errors))
    monkeypatch.setattr(cpu_kernel, "runnable_levels", lambda flags=None: ["portable", "avx2", "avx512"])
    monkeypatch.delenv("TIREX_CPU_ISA", raising=False)
    monkeypatch.delenv("TIREX_CPU_GEMM", raising=False)  # the compiled matmuls are part of what is tested
    cpu_kernel._errors.pop(cpu_kernel._key("avx512", False), None)
    chosen = cpu_kernel._resolve(None, None)
    assert chosen.level == "avx2" and chosen.matmuls == "compiled", chosen.why
    assert any("does not run on this CPU (signal 4" in line for line in chosen.why), chosen.why
    avx512 = cpu_kernel.build("avx512")
    assert not list(avx512.parent.glob(avx512.name + ".runs-*"))


def test_a_library_that_fails_its_check_is_not_loaded(monkeypatch, tmp_path):
    """The check itself: a library that computes wrong values is refused with the reason; a check that cannot
    run (here: a child that exits without an answer, as where sys.executable is not Python) trusts the flags;
    only a passed check is remembered."""
    path = tmp_path / "lib.so"
    path.write_bytes(b"")
    monkeypatch.setattr(cpu_kernel, "PROBE", "assert 1 + 1 == 3, 'wrong value'")
    with pytest.raises(RuntimeError, match="computes wrong values here: .*wrong value"):
        cpu_kernel.check_runs(path, "avx2")
    monkeypatch.setattr(cpu_kernel, "PROBE", "raise SystemExit(3)")
    cpu_kernel.check_runs(path, "avx2")
    assert not list(tmp_path.glob("lib.so.runs-*"))
    monkeypatch.setattr(cpu_kernel, "PROBE", "print('ok')")
    cpu_kernel.check_runs(path, "avx2")
    assert len(list(tmp_path.glob("lib.so.runs-*"))) == 1


@pytest.mark.parametrize("code", cpu_kernel.ILLEGAL_INSTRUCTION_EXIT)
def test_an_illegal_instruction_on_windows_fails_the_check(monkeypatch, tmp_path, code):
    """Windows reports a child killed by an illegal instruction as exit code 0xC000001D, not as a signal: the
    check refuses the level there too (it used to read as "the check could not run" and trust the flags)."""
    path = tmp_path / "lib.so"
    path.write_bytes(b"")
    monkeypatch.setattr(cpu_kernel.subprocess, "run",
                        lambda args, **kwargs: subprocess.CompletedProcess(args, code, "", ""))
    with pytest.raises(RuntimeError, match="does not run on this CPU .exit code"):
        cpu_kernel.check_runs(path, "avx512")
    assert not list(tmp_path.glob("lib.so.runs-*"))


def test_without_proc_cpuinfo_the_flags_come_from_torchs_vector_level(monkeypatch, tmp_path):
    """Where the OS does not list the flags (Windows, a sandbox without /proc/cpuinfo) an x86 CPU used to
    get the portable level (torch's matmuls); the vector level torch chose for it now gives the flags."""
    monkeypatch.setattr(cpu_kernel, "CPUINFO", tmp_path / "no-cpuinfo")
    monkeypatch.setattr(cpu_kernel.platform, "system", lambda: "Windows")
    monkeypatch.setattr(cpu_kernel, "is_x86", lambda: True)
    for capability, level in (("AVX512", "avx512"), ("AVX2", "avx2"), ("DEFAULT", "portable")):
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda c=capability: c)
        assert cpu_kernel.best_level() == level, capability
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: 1 / 0)
    assert cpu_kernel.cpu_flags() == set()
    assert cpu_kernel.cpu_model()  # still a name to report


@kernels
def test_a_level_that_cannot_be_built_falls_back_to_the_next_lower_one(monkeypatch):
    """An AVX-512 CPU whose compiler refuses the AVX-512 build (an old g++) keeps the AVX2 kernels and their
    compiled matmuls instead of dropping to the portable level (torch's matmuls on x86); a forced level
    does not fall back."""
    if not cpu_kernel.is_x86() or "avx2" not in cpu_kernel.runnable_levels():
        pytest.skip("needs an x86 CPU with AVX2")
    real = cpu_kernel.load_level

    def refuse_avx512(level, emulate=False):
        if level == "avx512" and not emulate:
            cpu_kernel._errors[cpu_kernel._key(level, emulate)] = "g++ failed for level avx512: (simulated)"
            return None
        return real(level, emulate)

    monkeypatch.setattr(cpu_kernel, "_errors", dict(cpu_kernel._errors))  # as in the test above
    monkeypatch.setattr(cpu_kernel, "runnable_levels", lambda flags=None: ["portable", "avx2", "avx512"])
    monkeypatch.setattr(cpu_kernel, "load_level", refuse_avx512)
    monkeypatch.delenv("TIREX_CPU_ISA", raising=False)
    monkeypatch.delenv("TIREX_CPU_GEMM", raising=False)  # the compiled matmuls are part of what is tested
    chosen = cpu_kernel._resolve(None, None)
    assert chosen.level == "avx2" and chosen.matmuls == "compiled", chosen.why
    assert any("avx512 unavailable" in line for line in chosen.why) and "level avx2 instead" in chosen.why
    forced = cpu_kernel._resolve("avx512", None)
    assert forced.level is None and forced.matmuls == "torch", forced.why


# In a process whose PATH has no compiler (and no CXX): which compiler the dispatch found, what it ran, and
# a forward of a model with the published head size through it
_NO_SYSTEM_COMPILER = """
import json, sys
sys.path.insert(0, sys.argv[1])
from conftest import head128_forward
from tirex import cpu_kernel
out = head128_forward()
dispatch = cpu_kernel.active()
print(json.dumps({"compiler": cpu_kernel._compiler(), "level": dispatch.level, "matmuls": dispatch.matmuls,
                  "why": dispatch.why, "out": out.flatten().tolist()}))
"""


@pytest.mark.skipif(importlib.util.find_spec("ziglang") is None, reason="pip install ziglang (the dev extras have it)")
@pytest.mark.parametrize("system", ["none", "failing"])
def test_without_a_system_compiler_zig_from_pypi_builds_the_same_kernels(system, tmp_path, request, kernel_level,
                                                                         restore_dispatch):
    """Where no C++ compiler is installed (a slim container image), or the one on the PATH only fails (macOS
    without the command line tools has a clang++ that asks to install them), there used to be no kernels:
    the torch loop, 5.9x slower at batch 1 (README). With the PyPI package ziglang the dispatch builds them
    with zig's compiler: the level this CPU runs best, the same bits as the system compiler's here."""
    env = {k: v for k, v in os.environ.items() if k not in ("CXX", "TIREX_CPU_GEMM")}
    cache = getattr(request.config, "cache", None)  # pytest's, kept between runs: zig builds its C++ library
    zig_cache = cache.mkdir("zig") if cache is not None else tmp_path / "zig"  # once (1-2 minutes)
    path = tmp_path / "bin"
    path.mkdir()
    if system == "failing":
        fake = path / "clang++"
        fake.write_text("#!/bin/sh\necho 'xcrun: error: invalid active developer path (/Library/Developer/"
                        "CommandLineTools), missing xcrun' >&2\nexit 1\n")
        fake.chmod(0o755)
    env.update(PATH=str(path), TIREX_CACHE_DIR=str(tmp_path / "cache"), ZIG_GLOBAL_CACHE_DIR=str(zig_cache))
    proc = subprocess.run([sys.executable, "-c", _NO_SYSTEM_COMPILER, str(Path(__file__).parent)], capture_output=True,
                          text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    child = json.loads(proc.stdout.strip().splitlines()[-1])
    assert child["level"] == kernel_level, child["why"]
    if system == "none":
        assert child["compiler"][1:] == list(cpu_kernel.ZIG), child["compiler"]
    else:
        assert child["compiler"] == [str(path / "clang++")]
        assert any("built with" in line and "ziglang" in line and "xcrun" in line for line in child["why"]), child["why"]
    assert list((tmp_path / "cache" / "kernels").glob(f"slstm_cpu_{child['level']}_*.so"))
    if cpu_kernel._compiler() is None:
        return  # nothing to compare with
    cpu_kernel.select(kernel_level, child["matmuls"])  # the same path here, built by the system compiler
    here = head128_forward()
    assert torch.equal(torch.tensor(child["out"]), here.flatten())


@pytest.mark.slow  # zig compiles the SIMDe-emulated AVX-512 source in about 100 s on 2 cores
@pytest.mark.skipif(importlib.util.find_spec("ziglang") is None or "avx512" not in cpu_kernel.emulatable_levels(),
                    reason="needs ziglang and an AVX2 CPU that can emulate the AVX-512 level (SIMDe)")
def test_zig_builds_the_avx512_level_with_the_same_bits(restore_dispatch):
    """Where zig builds the kernels on an AVX-512 CPU (no system compiler), its AVX-512 level gives the bits of
    g++'s: checked on the emulated AVX-512 code, which computes what the hardware computes."""
    zig = [sys.executable, *cpu_kernel.ZIG]
    cpu_kernel.build("avx512", cxx=zig)  # the real AVX-512 build compiles too (this CPU cannot run it)
    zig_lib = cpu_kernel.open_library(cpu_kernel.build("avx512", cxx=zig, emulate=True))
    cpu_kernel._declare(zig_lib)
    outputs = []
    for lib in (cpu_kernel.select("avx512", emulate=True).library, zig_lib):
        cpu_kernel._active = cpu_kernel.Dispatch("avx512", lib, "compiled", ("test",), True)
        outputs.append(head128_forward())
    assert torch.equal(*outputs)


@pytest.mark.skipif(cpu_kernel._compiler() is None, reason="no C++ compiler")
def test_portable_level_uses_no_x86_intrinsics():
    """What the portable level compiles is plain C++ (so ARM and any other CPU get the same code)."""
    proc = subprocess.run([*cpu_kernel._compiler(), "-E", "-std=c++17", "-DTIREX_LEVEL=0", str(cpu_kernel.SOURCE)],
                          capture_output=True, text=True, check=True)
    for marker in ("immintrin", "__m256", "__m512", "_mm256_", "_mm512_", "_mm_prefetch"):
        assert marker not in proc.stdout, marker


@pytest.mark.parametrize("cross", ["aarch64-linux-gnu-g++", "clang++"])
def test_portable_level_compiles_for_arm(cross, tmp_path):
    """Where a cross compiler is installed, the portable level compiles for 64-bit ARM (object file only)."""
    cxx = shutil.which(cross)
    if cxx is None:
        pytest.skip(f"{cross} not installed")
    target = ["--target=aarch64-linux-gnu"] if cross == "clang++" else []
    flags = [f for f in cpu_kernel.COMMON_FLAGS if f not in ("-shared",)]
    proc = subprocess.run([cxx, *target, *flags, "-c", "-DTIREX_LEVEL=0", str(cpu_kernel.SOURCE), "-o",
                           str(tmp_path / "k.o")], capture_output=True, text=True)
    if proc.returncode != 0 and "fatal error" in proc.stderr and ".h" in proc.stderr:
        pytest.skip("no ARM C++ headers for this cross compiler")
    assert proc.returncode == 0, proc.stderr[-2000:]


# -- the portable level built for 64-bit ARM gives this machine's bits (under qemu-user) -----------------
HARNESS = Path(__file__).with_name("kernel_harness.cpp")
ARM_CALLS = [  # (function, integer arguments as tests/kernel_harness.cpp reads them)
    ("gemm", (13, 300, 512, 0, 2, 1)), ("gemm", (70, 130, 77, 1, 1, 1)), ("gemm", (9, 512, 1408, 3, 2, 0)),
    ("gemm", (100, 96, 64, 2, 1, 1)), ("gemm", (9, 64, 200, 4, 1, 1)), ("gemm", (450, 72, 200, 3, 2, 0)),
    ("slstm", (2, 5, 7, 16, 1, 1, 1, 2)),   # fresh, bfloat16-emulating, group norm + residual, two threads
    ("slstm", (3, 9, 6, 64, 0, 0, 0, 1)),   # continued from a state, float32 (the 4 x 64 register blocks elsewhere)
    ("slstm", (1, 2, 5, 40, 0, 1, 1, 1)),
    ("rms_norm", (10, 64, 2, 0)), ("rms_norm", (33, 96, 1, 1)), ("silu_mul", (7, 100)),
    ("blocks", (3, 2, 3, 5, 16, 48, 1, 1, 1, 2)),  # every block in one call, the last one on the last token
    ("blocks", (2, 2, 2, 4, 8, 40, 4, 0, 0, 1)),   # continued from states, float32 recurrence
]


def _harness_input(fn, args, rng):
    """The arrays the harness reads for one call, as bytes (values kept in ranges that give finite results)."""
    normal = lambda *n: rng.normal(size=int(np.prod(n))).astype(np.float32)  # noqa: E731
    if fn == "gemm":
        m, n, k, mode, _, has_bias = args
        parts = [normal(m, k), normal(k, n), *([normal(k, n)] if mode == 3 else []), *([normal(n)] if has_bias else []),
                 normal(m, n)]
    elif fn == "slstm":
        h, b, t, d, _, _, norm, _ = args
        state = np.stack([normal(h, b, d), normal(h, b, d), np.abs(normal(h, b, d)) + 0.5, normal(h, b, d)])
        parts = [normal(h, b, t, 4 * d) * 1.5, normal(h, d, 4 * d) * (0.5 / d**0.5), normal(h, 4 * d), state.ravel(),
                 *([normal(h, d), normal(b, t, h, d)] if norm else [])]
    elif fn == "rms_norm":
        rows, dim, _, _ = args
        parts = [normal(rows, dim) * 3, normal(dim)]
    elif fn == "blocks":
        blocks, h, b, t, d, f = args[:6]
        e = h * d
        parts = [normal(b, t, e)]
        for _ in range(blocks):
            state = np.stack([normal(h, b, d), normal(h, b, d), np.abs(normal(h, b, d)) + 0.5, normal(h, b, d)])
            parts += [1 + 0.1 * normal(e), normal(h, d, 4 * d) * d**-0.5, normal(h, d, 4 * d) * (0.5 / d**0.5),
                      normal(h, 4 * d), 0.1 * normal(e), 1 + 0.1 * normal(e), normal(e, f) * e**-0.5,
                      normal(e, f) * e**-0.5, normal(f, e) * f**-0.5, state.ravel()]
    else:
        rows, hidden = args
        parts = [normal(rows, hidden) * 4, normal(rows, hidden)]
    return b"".join(part.astype(np.float32).tobytes() for part in parts)


def _build_harness(cxx: list[str], output, extra=()):
    flags = [f for f in cpu_kernel.COMMON_FLAGS if f not in ("-shared", "-fPIC")]
    proc = subprocess.run([*cxx, *flags, *extra, "-DTIREX_LEVEL=0", "-include", str(cpu_kernel.SOURCE), str(HARNESS),
                           "-o", str(output)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return output


def test_portable_level_on_arm_gives_the_same_bits(tmp_path):
    """The portable level compiled for 64-bit ARM (the code ARM servers and Apple silicon run) and run under
    qemu-user gives, call for call, the bits the portable level gives on this machine, which every level here
    gives too (tests above): weight matmuls of every epilogue and thread count, the recurrence (bfloat16 and
    float32, fresh and continued, with the fused group norm), RMSNorm, SwiGLU, all blocks in one call. Needs
    g++-aarch64-linux-gnu and qemu-user (``.ci/run`` installs them when it can)."""
    cxx, qemu = shutil.which("aarch64-linux-gnu-g++"), shutil.which("qemu-aarch64") or shutil.which("qemu-aarch64-static")
    if cxx is None or qemu is None or cpu_kernel._compiler() is None:
        pytest.skip("needs aarch64-linux-gnu-g++ and qemu-aarch64 (apt install g++-aarch64-linux-gnu qemu-user)")
    arm = _build_harness([cxx], tmp_path / "harness_arm", ["-static"])
    here = _build_harness(cpu_kernel._compiler(), tmp_path / "harness_here")
    rng = np.random.default_rng(7)
    for fn, args in ARM_CALLS:
        data = _harness_input(fn, args, rng)
        outputs = []
        for command in ([qemu, str(arm)], [str(here)]):
            proc = subprocess.run([*command, fn, *map(str, args)], input=data, capture_output=True, timeout=300)
            assert proc.returncode == 0, (fn, args, proc.stderr[-2000:])
            outputs.append(proc.stdout)
        arm_out, here_out = outputs
        dtype = np.uint16 if (fn == "gemm" and args[3] == 4) or (fn == "rms_norm" and args[3]) else np.float32
        values = np.frombuffer(here_out, dtype=dtype)
        assert values.size > 0 and (dtype == np.uint16 or np.isfinite(values).all()), (fn, args)
        assert arm_out == here_out, (fn, args, np.flatnonzero(np.frombuffer(arm_out, dtype=dtype) != values)[:10])


# -- the levels this CPU runs agree with each other, bit for bit -----------------------------------------
@kernels
@pytest.mark.parametrize("recurrence", ["bfloat16", "float32"])
def test_every_level_gives_the_same_forecast(restore_dispatch, recurrence):
    model = _model(embed=128, heads=2)  # head_dim 64: the bfloat16-pair product applies
    model.set_recurrence_dtype(recurrence)
    series = _series()
    compiled, torch_mm = {}, {}  # by the level's recurrence: with the compiled matmuls, with torch's
    for level, emulated in LEVELS:
        cpu_kernel.select(level, "compiled", emulated)
        if model.backend_info()["cpu"]["matmuls"] == "compiled":  # not the portable level on x86 (no FMA there)
            compiled[level, emulated], _ = model.forecast(series, prediction_length=40, batch_size=4)
        cpu_kernel.select(level, "torch", emulated)
        torch_mm[level, emulated], _ = model.forecast(series, prediction_length=40, batch_size=4)
    # the same matmuls around every level's recurrence: the same bits
    for group in (compiled, torch_mm):
        first = next(iter(group.values()), None)
        for level, q in group.items():
            assert torch.equal(q, first), f"{level} differs from {next(iter(group))}"
    # torch's matmuls instead of the compiled ones, and the torch fallback (loop + torch matmuls): the same
    # values up to float32 rounding noise
    cpu_kernel.select(None, "torch")
    model.set_backend("torch")
    fallback, _ = model.forecast(series, prediction_length=40, batch_size=4)
    scale = torch.tensor([np.std(s[-256:]) for s in series], dtype=torch.float32).view(-1, 1, 1)
    reference = torch_mm["portable", False]
    for other in [fallback, *compiled.values()]:
        err = (other - reference).abs() / scale
        assert err.max() < 1e-2 and err.mean() < 5e-4


@kernels
@pytest.mark.parametrize("dh", [48, 40, 8])  # 4 x dh columns: multiples of 64 / of 32 and 16 / of 32 only
@pytest.mark.parametrize("emulate_bf16", [False, True])
def test_every_level_runs_the_same_recurrence(dh, emulate_bf16, restore_dispatch):
    """The compiled recurrence alone, bit for bit on every level: the float32 recurrent product (vector
    register blocks on AVX2 / AVX-512 where the columns allow, the generic loop elsewhere and on the portable
    level), rows in blocks of 4 and single rows, fresh and continued from a state."""
    from tirex.slstm import _recurrence_cpu_kernel

    def run(wx, r, b, state):
        y, new_state = _recurrence_cpu_kernel(wx, r, b, state, emulate_bf16)
        assert y is not None, "the kernel did not take this shape"
        return y, new_state

    g = torch.Generator().manual_seed(dh)
    results = {}
    for batch in (1, 5, 9):
        wx = torch.randn(3, batch, 11, 4 * dh, generator=g) * 1.5
        r = torch.randn(3, dh, 4 * dh, generator=g) * (0.5 / dh**0.5)
        b = torch.randn(3, 4 * dh, generator=g)
        for level, emulated in LEVELS:
            cpu_kernel.select(level, "compiled", emulated)
            y, state = run(wx, r, b, None)
            y2, _ = run(wx, r, b, state)  # continued from a state
            results[level, emulated, batch] = torch.cat([y.flatten(), y2.flatten(), *(s.flatten() for s in state)])
        for level, emulated in LEVELS:
            assert torch.equal(results[level, emulated, batch], results["portable", False, batch]), (level, batch)


@kernels
@pytest.mark.parametrize("level, emulated", LEVEL_PARAMS)
def test_compiled_matmuls_of_every_level_match_and_rows_are_independent(level, emulated, restore_dispatch):
    """Every level gives the portable level's bits; a row alone, or among a few, equals the same row of a
    larger product; a one-row product gives the same bits on one thread and split across two (the three
    9-row cases are large enough to be split: they stream the weights on both cores); the whole product
    gives the same bits on one thread and on two (the last two cases span several row chunks, an odd count)."""
    lib = cpu_kernel.load_level(level, emulated)
    reference = cpu_kernel.load_level("portable")
    g = torch.Generator().manual_seed(5)
    for rows, k, n, mode in [(13, 512, 300, 3), (70, 130, 77, 1), (4, 64, 200, 0), (100, 96, 64, 2),
                             (9, 512, 2048, 2), (9, 512, 1408, 3), (9, 2048, 288, 1),
                             (450, 72, 200, 3), (401, 100, 130, 1)]:
        a = torch.randn(rows, k, generator=g)
        w0, w1 = torch.randn(k, n, generator=g), torch.randn(k, n, generator=g)
        bias = None if mode == 3 else torch.randn(n, generator=g)
        base = torch.randn(rows, n, generator=g)

        def run(library, m, threads):
            out = base[:m].clone()
            library.tirex_gemm(a.data_ptr(), k, w0.data_ptr(), w1.data_ptr(), n,
                               None if bias is None else bias.data_ptr(), out.data_ptr(), n, m, n, k, mode, threads)
            return out

        full = run(lib, rows, 2)
        assert torch.equal(full, run(reference, rows, 1)), (level, rows, k, n, mode)
        assert torch.equal(run(lib, 1, 1)[0], full[0])
        assert torch.equal(run(lib, 1, 2), run(lib, 1, 1)), (level, k, n, mode)
        assert torch.equal(run(lib, min(7, rows), 2), full[:7])
        assert torch.equal(run(lib, rows, 1), full), (level, rows, k, n, mode)  # any thread count, same bits


@kernels
@pytest.mark.parametrize("level, emulated", LEVEL_PARAMS)
@pytest.mark.parametrize("mode", [0, 4])  # float32 store, bfloat16 store
def test_head_wise_matmuls_in_one_job_equal_one_matmul_per_head(level, emulated, mode, restore_dispatch):
    """tirex_gemm_heads (all heads' items in one thread-pool job) gives each head's tirex_gemm bits, for
    any row count and thread count, and matches torch's batched product."""
    lib = cpu_kernel.load_level(level, emulated)
    g = torch.Generator().manual_seed(11 + mode)
    heads, k, n = 4, 128, 512
    weight = torch.randn(heads, k, n, generator=g)
    for rows in (1, 7, 64):
        x = torch.randn(heads, rows, k, generator=g)
        dtype = torch.bfloat16 if mode == 4 else torch.float32
        per_head = torch.empty(heads, rows, n, dtype=dtype)
        for h in range(heads):
            lib.tirex_gemm(x[h].data_ptr(), k, weight[h].data_ptr(), None, n, None, per_head[h].data_ptr(), n,
                           rows, n, k, mode, 1)
        for threads in (1, 2):
            joint = torch.full((heads, rows, n), float("nan")).to(dtype)
            assert lib.tirex_gemm_heads(x.data_ptr(), k, rows * k, weight.data_ptr(), n, k * n, joint.data_ptr(), n,
                                        rows * n, heads, rows, n, k, mode, threads) == 0
            assert torch.equal(joint, per_head), (level, mode, rows, threads)
        torch.testing.assert_close(per_head.float(), torch.bmm(x, weight), rtol=1e-2 if mode == 4 else 1e-4,
                                   atol=1e-2 if mode == 4 else 1e-3)
    out = torch.empty(heads, 1, n)  # only the store epilogues have a head-wise form: status 1 for the others
    assert lib.tirex_gemm_heads(x.data_ptr(), k, k, weight.data_ptr(), n, k * n, out.data_ptr(), n, n, heads,
                                1, n, k, 1, 1) == 1


# -- the parity fixture on every level -------------------------------------------------------------------
@kernels
@pytest.mark.parametrize("level, emulated", LEVEL_PARAMS)
def test_parity_fixture_on_every_level(level, emulated, fixture_dir, restore_dispatch):
    from test_parity import CASES, _denominators

    cases = torch.load(fixture_dir / "cases.pt", weights_only=True)["cases"]
    model = load_model(fixture_dir / "official" / "model.ckpt")
    cpu_kernel.select(level, "compiled", emulated)
    assert model.backend_info()["cpu"]["level"] == level and model.backend_info()["cpu"]["emulated"] == emulated
    for name in CASES:
        case = cases[name]
        kwargs = dict(case["kwargs"])
        rollout = kwargs.pop("max_accelerated_rollout_steps", 1)
        q, _ = model.forecast(case["context"], rollout_steps=rollout, output_type="torch", **kwargs)
        reference = case["quantiles"].double().sort(dim=-1).values  # forecast's quantiles are sorted (test_parity)
        err = (q.double() - reference).abs() / _denominators(case["context"], model.config.context_length)
        assert err.max() <= 1e-2 and err.mean() <= 5e-4, (level, name, err.max().item(), err.mean().item())


# -- batch independence, as stated in the README ---------------------------------------------------------
def _batch_runs(model, series):
    a, _ = model.forecast(series, prediction_length=20, batch_size=7)
    b, _ = model.forecast(series, prediction_length=20, batch_size=3)
    c, _ = model.forecast(series[::-1], prediction_length=20, batch_size=1)
    return a, b, c.flip(0)


@kernels
@pytest.mark.parametrize("level, emulated", LEVEL_PARAMS)
def test_compiled_paths_are_batch_independent_bit_for_bit(level, emulated, restore_dispatch):
    model = _model()
    cpu_kernel.select(level, "compiled", emulated)
    info = model.backend_info()["cpu"]
    a, b, c = _batch_runs(model, _series())
    if info["batch_independent_bitwise"]:
        assert torch.equal(a, b) and torch.equal(a, c)
    else:  # the portable level on an x86 CPU leaves the matmuls to torch (no FMA instruction there)
        assert info["matmuls"] == "torch"


def test_torch_matmuls_stay_within_the_parity_bar_of_each_other(restore_dispatch):
    """With torch's matmuls (TIREX_CPU_GEMM=0, no kernel) a series' forecast may move with the batch by
    float32 rounding noise, which the bfloat16 recurrence can amplify: bounded by the spec's parity bar."""
    model = _model()
    cpu_kernel.select(None, "torch")
    assert not model.backend_info()["cpu"]["batch_independent_bitwise"]
    series = _series()
    a, b, c = _batch_runs(model, series)
    scale = torch.tensor([np.std(s[-256:]) for s in series], dtype=torch.float32).view(-1, 1, 1)
    for other in (b, c):
        err = (a - other).abs() / scale
        assert err.max() <= 1e-2 and err.mean() <= 5e-4


# -- forcing by environment, reported by backend_info ----------------------------------------------------
@kernels
def test_environment_forces_the_level_and_backend_info_says_so():
    level = RUNNABLE[0]  # portable: every CPU runs it
    code = ("import json, tirex; from tirex import ModelConfig, TiRexModel;"
            "m = TiRexModel(ModelConfig(embed_dim=32, num_heads=2, num_blocks=1, input_ff_dim=32, context_length=64));"
            "print(json.dumps(m.backend_info()))")
    env = {**__import__("os").environ, "TIREX_CPU_ISA": level, "TIREX_CPU_GEMM": "0"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    info = json.loads(out.stdout.strip().splitlines()[-1])
    assert info["cpu"]["level"] == level and info["cpu"]["matmuls"] == "torch"
    assert any("TIREX_CPU_ISA" in line for line in info["cpu"]["why"])
    assert any("TIREX_CPU_GEMM=0" in line for line in info["cpu"]["why"])
    env["TIREX_CPU_ISA"] = "sse9"
    bad = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert bad.returncode != 0 and "TIREX_CPU_ISA" in bad.stderr


# -- concurrency -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("matmuls", ["compiled", "torch"])
def test_concurrent_forecasts_equal_sequential_ones(matmuls, restore_dispatch):
    """Forecasts from several Python threads at once (different batch sizes, so different small/large
    paths) give bitwise the results of the same forecasts one after another."""
    if cpu_kernel.load() is not None:
        cpu_kernel.select(None, matmuls)
    elif matmuls == "compiled":
        pytest.skip("no CPU kernel")
    model = _model()
    model.prepare_inference()
    jobs = [(_series(n, seed), h) for n, seed, h in [(1, 2, 20), (9, 3, 40), (3, 4, 70), (16, 5, 10)]]
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        sequential = [model.forecast(s, prediction_length=h, output_type="torch")[0] for s, h in jobs]
        results = run_at_once([lambda s=s, h=h: model.forecast(s, prediction_length=h, output_type="torch")[0]
                               for s, h in jobs * 2])
        assert torch.get_num_threads() == 2
        for i, q in enumerate(results):
            assert torch.equal(q, sequential[i % len(jobs)]), i
    finally:
        torch.set_num_threads(before)


GRAVITON2_CORE = """BogoMIPS\t: 243.75
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp ssbs
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x3
CPU part\t: 0xd0c
CPU revision\t: 1
"""
GRAVITON2_CPUINFO = "\n".join(f"processor\t: {cpu}\n{GRAVITON2_CORE}" for cpu in range(2))  # a block per CPU


def test_an_arm_cpu_is_named_by_its_core(monkeypatch, tmp_path):
    """Linux on ARM has no "model name" in /proc/cpuinfo: benchmark records and backend_info() said only
    "aarch64". The core now comes from the implementer and part numbers (an AWS Graviton2's here), an unknown
    part by its numbers; the ARM flags are recorded and only the portable level is offered."""
    cpuinfo = tmp_path / "cpuinfo"
    monkeypatch.setattr(cpu_kernel, "CPUINFO", cpuinfo)
    monkeypatch.setattr(cpu_kernel, "is_x86", lambda: False)
    cpuinfo.write_text(GRAVITON2_CPUINFO)
    assert cpu_kernel.cpu_model() == "ARM Neoverse-N1"
    assert cpu_kernel.isa_flags() == ["asimd"]
    assert cpu_kernel.runnable_levels() == ["portable"]
    cpuinfo.write_text(GRAVITON2_CPUINFO.replace("0xd0c", "0xdff").replace("0x41", "0x6d"))
    assert cpu_kernel.cpu_model() == "implementer 0x6d (ARM part 0xdff)"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: ARMv7 Processor rev 3 (v7l)\nFeatures\t: half thumb neon\n")
    assert cpu_kernel.cpu_model() == "ARMv7 Processor rev 3 (v7l)"


def test_macos_and_other_systems_name_the_cpu_and_its_flags(monkeypatch, tmp_path):
    """Without /proc/cpuinfo: macOS on Apple silicon reports its brand string and its ARM features (sysctl), an
    Intel Mac its x86 flags; where sysctl fails, an x86 CPU's flags still come from torch; platform's
    "unknown" processor is no name."""
    monkeypatch.setattr(cpu_kernel, "CPUINFO", tmp_path / "no-cpuinfo")
    monkeypatch.setattr(cpu_kernel.platform, "system", lambda: "Darwin")
    monkeypatch.setattr(cpu_kernel, "is_x86", lambda: False)
    answers = {"machdep.cpu.brand_string": "Apple M2 Pro", "hw.optional.AdvSIMD": "1", "hw.optional.arm.FEAT_BF16": "1"}
    monkeypatch.setattr(cpu_kernel, "_sysctl", lambda name: answers.get(name, ""))
    assert cpu_kernel.cpu_model() == "Apple M2 Pro"
    assert cpu_kernel.isa_flags() == ["asimd", "bf16"]
    answers["hw.optional.arm.FEAT_BF16"] = "0"  # an M1
    assert cpu_kernel.isa_flags() == ["asimd"]
    monkeypatch.setattr(cpu_kernel, "is_x86", lambda: True)
    answers.update({"machdep.cpu.features": "FPU SSE4.2 AVX1.0 FMA", "machdep.cpu.leaf7_features": "AVX2 AVX512F"})
    assert {"avx2", "fma", "avx512f"} <= cpu_kernel.cpu_flags()
    answers.clear()  # sysctl fails: torch's vector level gives the x86 flags
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    assert cpu_kernel.cpu_flags() == {"avx2", "fma"}
    monkeypatch.setattr(cpu_kernel.platform, "system", lambda: "Linux")
    monkeypatch.setattr(cpu_kernel.platform, "processor", lambda: "unknown")
    monkeypatch.setattr(cpu_kernel.platform, "machine", lambda: "riscv64")
    assert cpu_kernel.cpu_model() == "riscv64"

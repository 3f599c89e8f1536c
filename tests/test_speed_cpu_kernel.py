"""The compiled CPU sLSTM kernel and the no-grad fast path agree with the torch loop, and fall back cleanly."""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import pytest
import torch

from conftest import tiny_model
from tirex import backends, cpu_kernel
from tirex.config import ModelConfig
from tirex.model import TiRexModel
from tirex.slstm import slstm_recurrence

needs_kernel = pytest.mark.skipif(cpu_kernel.load() is None, reason=f"CPU kernel unavailable: {cpu_kernel.error()}")


def _inputs(heads, batch, steps, dh, seed=0):
    g = torch.Generator().manual_seed(seed)
    wx = torch.randn(heads, batch, steps, 4 * dh, generator=g) * 1.5
    r = torch.randn(heads, dh, 4 * dh, generator=g) * (0.5 / dh**0.5)
    b = torch.randn(heads, 4 * dh, generator=g)
    return wx, r, b


SHAPES = [(4, 1, 64, 128), (4, 13, 17, 128), (2, 5, 9, 32), (1, 8, 3, 64), (3, 2, 4, 8)]


@needs_kernel
@pytest.mark.parametrize("shape", SHAPES)
def test_float32_recurrence_matches_torch_loop(shape):
    wx, r, b = _inputs(*shape)
    y_ref, s_ref = slstm_recurrence(wx, r, b, None, False, "torch")
    y, s = slstm_recurrence(wx, r, b, None, False, "cpu")
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
    for a, c in zip(s, s_ref):
        torch.testing.assert_close(a, c, atol=1e-5, rtol=1e-5)
    # a continued stream starts from the given state (no first-step stabiliser reset)
    y2_ref, _ = slstm_recurrence(wx, r, b, s_ref, False, "torch")
    y2, _ = slstm_recurrence(wx, r, b, s_ref, False, "cpu")
    torch.testing.assert_close(y2, y2_ref, atol=1e-5, rtol=1e-5)


@needs_kernel
@pytest.mark.parametrize("shape", SHAPES)
def test_bf16_recurrence_matches_torch_loop_up_to_rounding_flips(shape):
    """Identical op sequence: only rare one-ulp bfloat16 flips (from float32 summation order) may differ."""
    wx, r, b = _inputs(*shape, seed=3)
    y_ref, s_ref = slstm_recurrence(wx, r, b, None, True, "torch")
    y, s = slstm_recurrence(wx, r, b, None, True, "cpu")
    assert (y == y_ref).float().mean() > 0.98
    assert (y - y_ref).abs().mean() < 1e-3
    assert torch.equal(y, y.to(torch.bfloat16).float()), "outputs must be bfloat16 values"
    assert torch.equal(s.m, s.m.to(torch.bfloat16).float())


@needs_kernel
def test_bf16_kernel_is_exact_on_a_small_case():
    """Small sums have no float32 reordering error: the kernel then reproduces the loop bit for bit."""
    wx, r, b = _inputs(4, 3, 20, 8, seed=5)
    y_ref, s_ref = slstm_recurrence(wx, r, b, None, True, "torch")
    y, s = slstm_recurrence(wx, r, b, None, True, "cpu")
    assert torch.equal(y, y_ref)
    for a, c in zip(s, s_ref):
        assert torch.equal(a, c)


@needs_kernel
def test_grad_mode_uses_the_differentiable_torch_loop():
    wx, r, b = _inputs(2, 2, 5, 8)
    wx.requires_grad_(True)
    y, _ = slstm_recurrence(wx, r, b, None, False, "auto")
    y.sum().backward()
    assert wx.grad is not None and torch.isfinite(wx.grad).all()


@pytest.fixture
def fresh_dispatch():
    """Let a test decide the kernel dispatch from its own environment; restore the default afterwards."""
    cpu_kernel.reset()
    yield
    cpu_kernel.reset()


def test_disabled_kernel_runs_the_torch_loop_without_a_warning(monkeypatch, fresh_dispatch):
    """Switched off on purpose: the torch loop, and the reason in the dispatch, but no warning (nothing failed)."""
    monkeypatch.setenv("TIREX_CPU_KERNEL", "0")
    backends._warned.clear()
    wx, r, b = _inputs(2, 2, 5, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y, _ = slstm_recurrence(wx, r, b, None, True, "auto")
    ref, _ = slstm_recurrence(wx, r, b, None, True, "torch")
    assert torch.equal(y, ref)
    assert cpu_kernel.active().chosen and "TIREX_CPU_KERNEL=0" in cpu_kernel.error()


def test_failed_build_falls_back(monkeypatch, tmp_path, fresh_dispatch):
    monkeypatch.delenv("TIREX_CPU_KERNEL", raising=False)  # the reason tested here, not the switch
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv("TIREX_CACHE_DIR", str(tmp_path))
    backends._warned.clear()
    wx, r, b = _inputs(2, 2, 5, 8)
    with pytest.warns(RuntimeWarning, match="falling back"):
        slstm_recurrence(wx, r, b, None, True, "auto")
    assert cpu_kernel.error()


def test_no_compiler_is_said_once_with_how_to_get_one(monkeypatch, tmp_path, fresh_dispatch):
    """Without any compiler every level fails for the same reason: the dispatch says it once, for all levels,
    with the ways to get a compiler (the warning used to repeat it per level)."""
    monkeypatch.setattr(cpu_kernel, "_compilers", lambda: [])
    monkeypatch.setenv("TIREX_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("TIREX_CPU_ISA", raising=False)
    monkeypatch.delenv("TIREX_CPU_KERNEL", raising=False)
    dispatch = cpu_kernel.active()
    assert dispatch.library is None
    lines = [line for line in dispatch.why if "no C++ compiler" in line]
    levels = ", ".join(reversed(cpu_kernel.runnable_levels()))
    assert lines == [f"level{'s' if ',' in levels else ''} {levels} unavailable: {cpu_kernel.NO_COMPILER}"], dispatch.why
    assert "pip install ziglang" in lines[0]


@pytest.mark.skipif(shutil.which("g++") is None or shutil.which("env") is None, reason="needs g++ and env")
def test_cxx_with_a_launcher_and_arguments_builds(monkeypatch, tmp_path, kernel_level, fresh_dispatch):
    """CXX holding a command line (a launcher such as ccache, or arguments) is split as a shell would:
    it used to be taken as one program name, the build failed and the torch loop ran."""
    monkeypatch.setenv("CXX", "env TIREX_TEST_LAUNCHER=1 g++")
    monkeypatch.setenv("TIREX_CACHE_DIR", str(tmp_path))
    assert cpu_kernel._compiler()[:2] == ["env", "TIREX_TEST_LAUNCHER=1"]
    assert cpu_kernel.build("portable").parent == tmp_path / "kernels"
    assert cpu_kernel.active().level == kernel_level, cpu_kernel.active().why


@pytest.mark.skipif(cpu_kernel._compiler() is None, reason="no C++ compiler")
def test_an_unwritable_kernel_cache_builds_in_a_private_temp_folder(monkeypatch, tmp_path, kernel_level,
                                                                   fresh_dispatch):
    """A read-only home or file system (a container) used to leave no kernels at all (the slow torch loop);
    builds now go to a private folder in the temp directory, and the dispatch says so."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("TIREX_CACHE_DIR", str(blocker / "cache"))  # cannot be created, also not by root
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    path = cpu_kernel.build("portable")
    assert path.parent.parent == temp and path.parent.name.startswith("tirex-kernels-")
    assert path.parent.stat().st_mode & 0o777 == 0o700
    dispatch = cpu_kernel.active()
    assert dispatch.level == kernel_level and any("is not writable" in line for line in dispatch.why), dispatch.why

    # a folder of that name that someone else could write is never used: this process gets one of its own
    cpu_kernel.reset()
    shutil.rmtree(path.parent)
    path.parent.mkdir()
    path.parent.chmod(0o777)
    second = cpu_kernel.build("portable")
    assert second.parent != path.parent and second.parent.parent == temp and not list(path.parent.iterdir())

    # a library already in the cache folder is used as it is, also where nothing can be written there
    baked = tmp_path / "baked"
    (baked / "kernels").mkdir(parents=True)
    shutil.copy(second, baked / "kernels" / second.name)
    monkeypatch.setenv("TIREX_CACHE_DIR", str(baked))
    monkeypatch.setattr(cpu_kernel, "build_dir", lambda: pytest.fail("nothing to build"))
    assert cpu_kernel.build("portable") == baked / "kernels" / second.name


@pytest.mark.skipif(cpu_kernel._compiler() is None, reason="no C++ compiler")
def test_without_a_home_folder_kernels_build_in_a_private_temp_folder(monkeypatch, tmp_path, kernel_level,
                                                                         fresh_dispatch):
    """HOME unset and a user id without a passwd entry (a container run under an arbitrary user id):
    ``Path.home()`` raises, which used to leave no kernels at all (the torch loop). Builds now go to a
    private temp folder, and the dispatch says why."""
    for name in ("TIREX_CACHE_DIR", "XDG_CACHE_HOME", "HOME"):
        monkeypatch.delenv(name, raising=False)

    def no_home(cls=None):
        raise RuntimeError("Could not determine home directory.")

    monkeypatch.setattr(Path, "home", classmethod(no_home))
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    assert cpu_kernel.cache_dir() is None
    dispatch = cpu_kernel.active()
    assert dispatch.level == kernel_level, dispatch.why
    assert any(line.startswith("no kernel cache (no home folder") for line in dispatch.why), dispatch.why
    assert cpu_kernel.build_dir().parent == temp and cpu_kernel.build_dir().stat().st_mode & 0o777 == 0o700


# In a private mount namespace: a noexec tmpfs as the kernel cache, then a forecast of a small model there
_NOEXEC_CHILD = """
import ctypes, json, sys, torch
sys.path.insert(0, sys.argv[1])
from conftest import tiny_model
from tirex import cpu_kernel
dispatch = cpu_kernel.active()
built = sorted(cpu_kernel.cache_dir().glob("slstm_cpu_*.so"))
try:
    ctypes.CDLL(str(built[0]))
    direct = True
except OSError:
    direct = False
with torch.no_grad():
    out = tiny_model()(torch.randn(2, 5, 16, generator=torch.Generator().manual_seed(1)))[0]
print(json.dumps({"level": dispatch.level, "direct": direct, "why": dispatch.why, "out": out.flatten().tolist()}))
"""


@pytest.mark.skipif(cpu_kernel._compiler() is None or shutil.which("unshare") is None or not sys.platform.startswith(
    "linux"), reason="needs a C++ compiler and unshare (Linux)")
def test_kernels_run_from_a_noexec_file_system(tmp_path, kernel_level, fresh_dispatch):
    """A kernel cache on a file system mounted noexec (a hardened /tmp or home, a container volume) used to
    leave no kernels at all: they were built, but the loader may not map them ("failed to map segment"), so
    every forecast ran the slow torch loop. They are now loaded from a copy in memory: the same level and
    bits as here, and the dispatch says why."""
    cache = tmp_path / "noexec"
    cache.mkdir()
    root = [] if os.geteuid() == 0 else ["--map-root-user"]
    script = 'mount -t tmpfs -o noexec tmpfs "$1" || exit 77; exec "$2" -c "$3" "$4"'
    env = {**os.environ, "TIREX_CACHE_DIR": str(cache)}
    proc = subprocess.run(["unshare", *root, "--mount", "sh", "-c", script, "sh", str(cache), sys.executable,
                           _NOEXEC_CHILD, str(Path(__file__).parent)], capture_output=True, text=True, env=env,
                          timeout=600)
    if proc.returncode == 77 or (proc.returncode != 0 and "unshare" in proc.stderr and not proc.stdout):
        pytest.skip(f"cannot mount a noexec file system here: {proc.stderr.strip()[-300:]}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    child = json.loads(proc.stdout.strip().splitlines()[-1])
    if child["direct"]:
        pytest.skip("the noexec mount did not stop libraries from loading here")
    assert child["level"] == kernel_level, child["why"]
    assert any("loaded from a copy in memory" in line for line in child["why"]), child["why"]
    with torch.no_grad():
        here = tiny_model()(torch.randn(2, 5, 16, generator=torch.Generator().manual_seed(1)))[0]
    assert torch.equal(torch.tensor(child["out"]), here.flatten())


def test_unknown_backend_is_rejected():
    model = TiRexModel(ModelConfig(embed_dim=32, num_heads=4, num_blocks=1, input_ff_dim=64, context_length=128))
    with pytest.raises(ValueError, match="choose one of"):
        model.set_backend("tpu")


def _small_model(seed=0):
    torch.manual_seed(seed)
    model = TiRexModel(ModelConfig(embed_dim=64, num_heads=4, num_blocks=2, input_ff_dim=128, context_length=256))
    with torch.no_grad():
        for block in model.blocks:
            block.slstm.recurrent.normal_(0, 0.1)
            block.slstm.bias.normal_(0, 0.5)
    return model.eval()


def test_no_grad_fast_path_matches_training_path():
    """forward() under no_grad (chunked, in place, compiled kernel) equals the autograd path."""
    model = _small_model()
    model.set_recurrence_dtype("float32")
    tokens = torch.randn(3, 8, 64)
    with torch.no_grad():
        fast = model(tokens)
    slow = model(tokens).detach()
    torch.testing.assert_close(fast, slow, atol=1e-4, rtol=1e-4)
    with torch.no_grad():
        last = model(tokens, last_tokens=2)
    torch.testing.assert_close(last, fast[:, -2:])


def test_fast_mode_is_close_and_reversible():
    model = _small_model()
    ctx = torch.randn(4, 300).cumsum(-1)
    q_exact, _ = model.forecast(ctx, prediction_length=40, output_type="torch")
    assert model.set_fast_mode(True, force=True)
    q_fast, _ = model.forecast(ctx, prediction_length=40, output_type="torch")
    model.set_fast_mode(False)
    q_again, _ = model.forecast(ctx, prediction_length=40, output_type="torch")
    scale = ctx[:, -256:].std(dim=1).view(-1, 1, 1)
    err = ((q_fast - q_exact).abs() / scale)
    assert 0 < err.mean() < 2e-2
    torch.testing.assert_close(q_again, q_exact)


def test_fast_mode_is_skipped_with_a_warning_without_native_bfloat16(monkeypatch):
    from tirex import inference

    model = _small_model()
    monkeypatch.setattr(inference, "cpu_has_fast_bf16", lambda: False)
    with pytest.warns(RuntimeWarning, match="no native bfloat16"):
        assert model.set_fast_mode(True) is False
    assert all(block.slstm.matmul_dtype == torch.float32 for block in model.blocks)
    monkeypatch.setattr(inference, "cpu_has_fast_bf16", lambda: True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert model.set_fast_mode(True) is True
    assert all(block.slstm.matmul_dtype == torch.bfloat16 for block in model.blocks)
    assert model.set_fast_mode(False) is False


def test_stacked_rollout_passes_equal_sequential_passes(monkeypatch):
    """Passes that read no prediction run as one stacked batch; results match one pass at a time."""
    import tirex.inputs as inputs_module
    from tirex.rollout import independent_passes

    model = _small_model()
    model.set_recurrence_dtype("float32")
    ctx = torch.randn(3, 300).cumsum(-1)
    stacked = model.rollout(ctx, prediction_length=150, rollout_steps=1)  # 5 passes, the last 1 fills in
    monkeypatch.setattr(inputs_module, "STACKED_ROWS", 1)
    sequential = model.rollout(ctx, prediction_length=150, rollout_steps=1)
    torch.testing.assert_close(stacked, sequential, atol=1e-4, rtol=1e-4)
    assert independent_passes(0, 1, 5, 1, 4, 3) == [0]  # STACKED_ROWS = 1: no stacking
    monkeypatch.setattr(inputs_module, "STACKED_ROWS", 128)
    assert independent_passes(0, 1, 5, 1, 4, 3) == [0, 1, 2, 3, 4]
    assert independent_passes(0, 1, 5, 1, 2, 3) == [0, 1, 2]  # from pass 3 on predictions are filled in
    assert independent_passes(0, 2, 5, 2, None, 3) == [0, 2]  # the last pass predicts 1 patch, not 2


def test_missing_kernel_source_falls_back(monkeypatch, tmp_path, fresh_dispatch):
    monkeypatch.delenv("TIREX_CPU_KERNEL", raising=False)  # the reason tested here, not the switch
    monkeypatch.setattr(cpu_kernel, "SOURCE", tmp_path / "absent.cpp")
    backends._warned.clear()
    wx, r, b = _inputs(2, 2, 5, 8)
    with pytest.warns(RuntimeWarning, match="missing from this installation"):
        y, _ = slstm_recurrence(wx, r, b, None, True, "auto")
    assert torch.equal(y, slstm_recurrence(wx, r, b, None, True, "torch")[0])


@needs_kernel
@pytest.mark.parametrize("batch", [1, 5, 9])  # single rows, blocks of 4 rows plus single rows
def test_bf16_pairs_give_bitwise_the_float32_product(monkeypatch, batch):
    """On the AVX2 and AVX-512 levels the kernel reads R as bfloat16 pairs and widens them; the products
    and their summation order are those of the float32 loop, so every output and state is bitwise equal."""
    from tirex import slstm

    lib = cpu_kernel.load()
    if not lib.tirex_uses_bf16_pairs():
        pytest.skip("kernel level without the bfloat16-pair product")
    wx, r, b = _inputs(3, batch, 21, 64, seed=3)
    y_pairs, s_pairs = slstm_recurrence(wx, r, b, None, True, "cpu")
    calls = []
    monkeypatch.setattr(slstm, "bf16_pairs", lambda recurrent, block=0: calls.append(1))  # None: the float32 product
    y_f32, s_f32 = slstm_recurrence(wx, r, b, None, True, "cpu")
    assert calls, "the float32 product was not forced"
    assert torch.equal(y_pairs, y_f32)
    for a, c in zip(s_pairs, s_f32):
        assert torch.equal(a, c)
    # and both still follow the reference's bfloat16 emulation (the torch loop)
    y_loop, _ = slstm_recurrence(wx, r, b, None, True, "torch")
    assert (y_pairs == y_loop).float().mean() > 0.98


@needs_kernel
def test_forwards_never_change_the_thread_count(monkeypatch):
    """The kernels take torch's thread count as it is (small forwards included) and results do not depend
    on it; no forward calls torch.set_num_threads (process-wide: another thread's forecast would see it)."""
    from tirex import inference

    model = _small_model()
    seen = []
    original = inference.kernel_threads
    monkeypatch.setattr(inference, "kernel_threads", lambda: seen.append(original()) or seen[-1])
    before = torch.get_num_threads()
    ctx = torch.randn(1, 300).cumsum(-1)
    try:
        torch.set_num_threads(2)
        calls = []
        monkeypatch.setattr(torch, "set_num_threads", lambda n: calls.append(n))
        q2, _ = model.forecast(ctx, prediction_length=20)
        assert seen and set(seen) == {2}
        monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
        seen.clear()
        q1, _ = model.forecast(ctx, prediction_length=20)
        assert set(seen) == {1}
        assert torch.equal(q1, q2)
        assert calls == []
    finally:
        monkeypatch.undo()
        torch.set_num_threads(before)


needs_gemm = pytest.mark.skipif(cpu_kernel.load() is None or cpu_kernel.active().matmuls != "compiled",
                                reason="the weight matmuls are torch's here")


@needs_gemm
@pytest.mark.parametrize("mode", [0, 1, 2, 3])  # store, accumulate, relu, swiglu
@pytest.mark.parametrize("k, n", [(512, 1408), (64, 100), (300, 77), (1408, 40)])
def test_compiled_matmuls_are_right_and_rows_do_not_depend_on_each_other(mode, k, n):
    """tirex_gemm against torch for every epilogue (edge panels, k blocks, both row paths), and each row of
    a 13-row product bitwise equal to the same row alone or among 3 (results do not depend on the batch)."""
    lib = cpu_kernel.load()
    g = torch.Generator().manual_seed(mode * 1000 + k + n)
    a = torch.randn(13, k, generator=g)
    w0, w1 = torch.randn(k, n, generator=g), torch.randn(k, n, generator=g)  # row-major (in, out)
    bias = None if mode == 3 else torch.randn(n, generator=g)
    base = torch.randn(13, n, generator=g)

    def run(rows, threads):
        out = base[:rows].clone()
        lib.tirex_gemm(a.data_ptr(), k, w0.data_ptr(), w1.data_ptr(), n, None if bias is None else bias.data_ptr(),
                       out.data_ptr(), n, rows, n, k, mode, threads)
        return out

    full = run(13, 2)
    b = 0 if bias is None else bias
    expected = {0: a @ w0 + b, 1: base + a @ w0 + b, 2: torch.relu(a @ w0 + b),
                3: torch.nn.functional.silu(a @ w0) * (a @ w1)}[mode]
    torch.testing.assert_close(full, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())
    assert torch.equal(run(3, 1), full[:3])
    assert torch.equal(run(1, 1)[0], full[0])


@needs_gemm
def test_compiled_matmuls_in_the_model_match_torch_matmuls(monkeypatch):
    model = _small_model()
    ctx = torch.randn(5, 300).cumsum(-1)
    q_gemm, _ = model.forecast(ctx, prediction_length=40)
    monkeypatch.setenv("TIREX_CPU_GEMM", "0")
    q_torch, _ = model.forecast(ctx, prediction_length=40)
    scale = ctx[:, -256:].std(dim=1).view(-1, 1, 1)
    assert ((q_gemm - q_torch).abs() / scale).max() < 1e-2  # float32 rounding order, through the bf16 recurrence
    monkeypatch.setenv("TIREX_CPU_GEMM", "1")
    model.set_recurrence_dtype("float32")
    tokens = torch.randn(2, 8, 64)
    with torch.no_grad():
        fast = model(tokens)  # no grad: the inference path (compiled matmuls)
    slow = model(tokens).detach()  # grad enabled: the plain modules
    torch.testing.assert_close(fast, slow, atol=1e-4, rtol=1e-4)


def test_inference_stores_linear_weights_column_major_without_changing_anything_else(tmp_path):
    from tirex import load_model

    model = _small_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ctx = torch.randn(2, 300).cumsum(-1)
    q1, _ = model.forecast(ctx, prediction_length=40, output_type="torch")
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all(m.weight.t().is_contiguous() for m in linears)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    model.save_pretrained(tmp_path / "m")
    reloaded = load_model(tmp_path / "m")
    q2, _ = reloaded.forecast(ctx, prediction_length=40, output_type="torch")
    torch.testing.assert_close(q2, q1, atol=0, rtol=0)
    # Training still works on the converted parameters (same Parameter objects).
    params = list(model.parameters())
    opt = torch.optim.SGD(params, lr=1e-3)
    model.train()
    loss = model(torch.randn(2, 8, 64)).square().mean()
    loss.backward()
    weight_before_step = linears[0].weight.detach().clone()
    opt.step()
    assert linears[0].weight.grad is not None
    assert not torch.equal(linears[0].weight, weight_before_step)


@pytest.mark.parametrize("runtime", ["torch", "lite"])
def test_repeated_small_forecasts_do_not_fault_their_memory_in_again(runtime):
    """The allocator keeps a small forecast's freed temporaries (``kernel_forward.HEAP_KEPT``): with glibc returning
    them to the OS every batch-1 forecast of the bundled model took ~560 page faults to get them back."""
    import platform
    import subprocess
    import sys

    if platform.system() != "Linux" or not platform.libc_ver()[0] == "glibc":
        pytest.skip("the allocator settings are for glibc")
    script = (
        "import resource, numpy as np\n"
        f"from tirex{'.lite' if runtime == 'lite' else ''} import load_model\n"
        "m = load_model(); x = np.random.default_rng(0).normal(size=(1, 2048)).cumsum(1)\n"
        "for _ in range(5): m.forecast(x, 32)\n"
        "r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
        "for _ in range(20): m.forecast(x, 32)\n"
        "print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0) / 20)\n")
    faults = float(subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                                  timeout=300).stdout.split()[-1])
    assert faults < 100, f"{faults} page faults per forecast"

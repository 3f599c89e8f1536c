import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("TIREX_SHARED", ROOT.parent / "shared"))
FIXTURE = SHARED / "fixtures" / "tirex_reference_small"


@pytest.fixture
def restore_dispatch():
    """Back to the CPU kernel dispatch the environment gives, after a test that forced a level."""
    from tirex import cpu_kernel

    yield
    cpu_kernel.reset()


@pytest.fixture(scope="session")
def default_level():
    """The kernel level the dispatch picks here in an ordinary environment (no TIREX_CPU_ISA or
    TIREX_CPU_KERNEL; None: the torch loop, as on an x86 CPU without AVX2 + FMA): what a process in an
    unusual one (no home folder, a noexec cache, no system compiler) must get too."""
    from tirex import cpu_kernel

    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("TIREX_CPU_ISA", raising=False)
        patch.delenv("TIREX_CPU_KERNEL", raising=False)
        return cpu_kernel._resolve(None, None).level


@pytest.fixture
def kernel_level(default_level, monkeypatch):
    """For a test of how kernels are built and loaded: the level the dispatch loads in it, the default one,
    or, where the default is the torch loop (an x86 CPU without AVX2 + FMA), the portable level, forced with
    TIREX_CPU_ISA (also for child processes started with this environment)."""
    from tirex import cpu_kernel

    if cpu_kernel._disabled():
        pytest.skip("TIREX_CPU_KERNEL=0: no kernels to build or load")
    monkeypatch.delenv("TIREX_CPU_ISA", raising=False)
    if default_level is None:
        monkeypatch.setenv("TIREX_CPU_ISA", "portable")
    return default_level or "portable"


@pytest.fixture(scope="session")
def fixture_dir() -> Path:
    if not FIXTURE.is_dir():
        pytest.skip(f"reference fixture not found at {FIXTURE}")
    return FIXTURE


def batch_bitwise() -> bool:
    """Whether forecasts here are bitwise independent of the batch and the process (the compiled matmuls:
    every CPU kernel level), or only within the spec's parity bar (torch's matmuls: no kernel, as on an x86
    CPU without AVX2 + FMA or without a compiler, TIREX_CPU_GEMM=0). README "Every path gives the same bits"."""
    from tirex import backends

    return backends.backend_info()["cpu"]["batch_independent_bitwise"]


def assert_forecasts_agree(got, expected, groups=None) -> None:
    """The same series forecast in other batches or other processes agree as the README promises: to 1e-6
    where that is bitwise, else within the parity bar relative to each series' spread (max 1e-2, mean 5e-4;
    ``groups``: the series of each row, default one series per row). NaN in the same places."""
    import numpy as np

    got, expected = np.asarray(got, dtype=float), np.asarray(expected, dtype=float)
    assert got.shape == expected.shape, (got.shape, expected.shape)
    if batch_bitwise():
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
        return
    assert (np.isnan(got) == np.isnan(expected)).all()
    rows = expected.reshape(len(expected), -1)
    groups = np.arange(len(expected)) if groups is None else np.asarray(groups)
    scale = np.empty(len(expected))
    for group in np.unique(groups):
        values = rows[groups == group]
        scale[groups == group] = max(np.nanstd(values), 1e-6 * (1 + np.nanmax(np.abs(values), initial=0)))
    assert_within_parity_bar(np.abs(got.reshape(rows.shape) - rows) / scale[:, None])


def assert_within_parity_bar(err) -> None:
    """Errors in units of each series' spread within the spec's parity bar: max 1e-2, mean 5e-4 (NaN ignored)."""
    import numpy as np

    err = np.asarray(err, dtype=float)
    assert np.nanmax(err, initial=0) <= 1e-2 and np.nanmean(err) <= 5e-4, (np.nanmax(err), np.nanmean(err))


def tiny_model(num_blocks: int = 2, noise: float = 0.05, seed: int = 0):
    """A small TiRex model (patch 8, context 64, embedding 16) with its initial weights perturbed by
    ``noise`` so that every block matters (an untrained model, e.g. with crossing quantiles)."""
    import torch

    from tirex import ModelConfig, TiRexModel

    torch.manual_seed(seed)
    model = TiRexModel(ModelConfig(patch_size=8, context_length=64, embed_dim=16, num_heads=2, num_blocks=num_blocks,
                                   input_ff_dim=32)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * noise)
    return model


def head128_forward():
    """The output of a seeded 2-block model with the published head size (128; embedding 256, 2 heads) on a
    seeded input, through whatever kernels the dispatch holds: one call for comparing two builds."""
    import torch

    from tirex import ModelConfig, TiRexModel

    torch.manual_seed(0)
    model = TiRexModel(ModelConfig(patch_size=8, context_length=64, embed_dim=256, num_heads=2, num_blocks=2,
                                   input_ff_dim=512)).eval()
    with torch.no_grad():
        return model(torch.randn(3, 6, 16, generator=torch.Generator().manual_seed(1)))[0]


def run_at_once(calls):
    """Run each of ``calls`` (no-argument callables) in a thread of its own, all released together by a
    barrier; their results in order. Fails with every exception a thread raised."""
    import threading

    results, errors = [None] * len(calls), []
    start = threading.Barrier(len(calls))

    def work(i):
        try:
            start.wait()
            results[i] = calls[i]()
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    return results

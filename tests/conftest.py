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
    """The kernel level the dispatch picks here in an ordinary environment (no TIREX_CPU_ISA; None: the torch
    loop, as on an x86 CPU without AVX2 + FMA): what a process in an unusual one (no home folder, a noexec
    cache, no system compiler) must get too."""
    from tirex import cpu_kernel

    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("TIREX_CPU_ISA", raising=False)
        return cpu_kernel._resolve(None, None).level


@pytest.fixture(scope="session")
def fixture_dir() -> Path:
    if not FIXTURE.is_dir():
        pytest.skip(f"reference fixture not found at {FIXTURE}")
    return FIXTURE


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

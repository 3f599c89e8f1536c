"""The fused CUDA sLSTM kernels: the sources compile with nvcc; on a GPU they match the torch path."""

import shutil
import subprocess
import warnings

import pytest
import torch

from tirex import backends
from tirex.cuda_backend import source_dir
from tirex.slstm import SLSTMState, slstm_recurrence, slstm_recurrence_torch

NVCC = shutil.which("nvcc")
HAS_GPU = torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 8


@pytest.mark.skipif(NVCC is None, reason="nvcc not installed")
def test_kernel_sources_compile_with_nvcc(tmp_path):
    """The kernels (no torch headers) compile to an sm_80 object file."""
    src = source_dir() / "slstm_kernels.cu"
    out = tmp_path / "slstm_kernels.o"
    proc = subprocess.run([NVCC, "-c", "-O3", "-arch=sm_80", str(src), "-o", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert out.stat().st_size > 0


def test_cuda_sources_are_shipped():
    folder = source_dir()
    assert (folder / "slstm_kernels.cu").is_file() and (folder / "slstm_binding.cpp").is_file()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU fallback")
def test_cuda_backend_without_gpu_falls_back_with_one_warning():
    backends._warned.clear()
    wx = torch.randn(2, 3, 5, 4 * 8)
    r, b = torch.randn(2, 8, 32) * 0.1, torch.randn(2, 32)
    with pytest.warns(RuntimeWarning, match="CUDA"):
        y, _ = slstm_recurrence(wx, r, b, None, True, "cuda")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        slstm_recurrence(wx, r, b, None, True, "cuda")  # warned once only
    ref, _ = slstm_recurrence_torch(wx.permute(2, 0, 1, 3), r, b, None, True)
    assert y.shape == (3, 5, 2, 8)
    assert torch.allclose(y, ref.permute(2, 0, 1, 3), atol=0.05)


def _inputs(heads, batch, steps, dh, device="cuda", seed=0):
    g = torch.Generator().manual_seed(seed)
    wx = torch.randn(heads, batch, steps, 4 * dh, generator=g) * 1.5
    r = torch.randn(heads, dh, 4 * dh, generator=g) * (0.5 / dh**0.5)
    b = torch.randn(heads, 4 * dh, generator=g)
    return wx.to(device), r.to(device), b.to(device)


SHAPES = [(4, 1, 64, 128), (4, 33, 17, 128), (2, 5, 9, 32), (1, 8, 3, 64)]


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_GPU, reason="needs a CUDA GPU of compute capability >= 8.0")
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("emulate_bf16", [True, False])
def test_forward_matches_torch_path(shape, emulate_bf16):
    wx, r, b = _inputs(*shape)
    y_ref, s_ref = slstm_recurrence(wx, r, b, None, emulate_bf16, "torch")
    y, s = slstm_recurrence(wx, r, b, None, emulate_bf16, "cuda")
    if emulate_bf16:  # chaotic at the bfloat16 level: a few elements may differ by an ulp or so
        assert ((y - y_ref).abs() > 1e-2).float().mean() < 0.02
        assert (y - y_ref).abs().mean() < 2e-3
    else:
        torch.testing.assert_close(y, y_ref, atol=2e-5, rtol=1e-4)
        for a, c in zip(s, s_ref):
            torch.testing.assert_close(a, c, atol=2e-5, rtol=1e-4)
    # continuing from a given state
    y2_ref, _ = slstm_recurrence(wx, r, b, s_ref, emulate_bf16, "torch")
    y2, _ = slstm_recurrence(wx, r, b, s_ref, emulate_bf16, "cuda")
    if not emulate_bf16:
        torch.testing.assert_close(y2, y2_ref, atol=2e-5, rtol=1e-4)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_GPU, reason="needs a CUDA GPU of compute capability >= 8.0")
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("given_state", [False, True])
def test_gradients_match_autograd(shape, given_state):
    wx, r, b = _inputs(*shape, seed=1)
    heads, batch, _, dh = shape[0], shape[1], shape[2], shape[3]
    state = None
    if given_state:
        g = torch.Generator().manual_seed(2)
        y0 = torch.randn(heads, batch, dh, generator=g).cuda() * 0.3
        c0 = torch.randn(heads, batch, dh, generator=g).cuda()
        n0 = torch.rand(heads, batch, dh, generator=g).cuda() + 0.5
        m0 = torch.randn(heads, batch, dh, generator=g).cuda()
        state = SLSTMState(y0, c0, n0, m0)

    def run(backend):
        leaves = [t.clone().requires_grad_(True) for t in (wx, r, b)]
        st = None if state is None else SLSTMState(*[t.clone().requires_grad_(True) for t in state])
        y, final = slstm_recurrence(*leaves, st, False, backend)
        weights = torch.linspace(-1, 1, y.numel(), device=y.device).view_as(y)
        loss = (y * weights).sum() + final.c.sum() * 0.1 + final.y.square().sum()
        loss.backward()
        grads = [t.grad for t in leaves] + ([] if st is None else [t.grad for t in st])
        return y, grads

    y_ref, g_ref = run("torch")
    y, g = run("cuda")
    torch.testing.assert_close(y, y_ref, atol=2e-5, rtol=1e-4)
    for a, c in zip(g, g_ref):
        torch.testing.assert_close(a, c, atol=1e-4, rtol=1e-3)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_GPU, reason="needs a CUDA GPU of compute capability >= 8.0")
def test_model_forecast_same_on_cuda_backend_and_torch():
    from tirex.config import ModelConfig
    from tirex.model import TiRexModel

    torch.manual_seed(0)
    model = TiRexModel(ModelConfig(embed_dim=128, num_heads=4, num_blocks=2, input_ff_dim=256,
                                   context_length=512)).cuda().eval()
    ctx = torch.randn(4, 700).cumsum(-1)
    model.set_backend("torch")
    q_ref, _ = model.forecast(ctx, prediction_length=40, output_type="torch")
    model.set_backend("cuda")
    q, _ = model.forecast(ctx, prediction_length=40, output_type="torch")
    scale = ctx[:, -512:].std(dim=1).view(-1, 1, 1)
    assert ((q - q_ref).abs() / scale).mean() < 5e-4

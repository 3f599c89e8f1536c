"""Shared empty starts: a batch's leading tokens that hold no data in any series (left padding of short
series, missing starts) are not stepped through per series; the forward starts from the states after that
many empty tokens, computed once per model (``TiRexModel.empty_prefix_states``). Same bits as the full
forward on the compiled CPU paths, the same values up to rounding noise elsewhere; the states follow every
change of the weights and numerics; ``forecast`` groups series of similar length and keeps the input order."""

import numpy as np
import pytest
import torch

from tirex import cpu_kernel
from tirex.inputs import plan_batches
from tirex.rollout import empty_prefix_length
from tirex.scaling import fit_scale, patch_tokens, window

from conftest import run_at_once
from test_cpu_dispatch import LEVEL_PARAMS
from test_cpu_dispatch import _model as _dispatch_model


def _model(seed=0):
    return _dispatch_model(seed, embed=128)  # context 256: 8 tokens of 32; head_dim 64 (bfloat16 pairs)


@torch.no_grad()
def full_forward(model, context, num_patches=1):
    """``predict_patches`` as it was before: every token of the window through every block."""
    cfg = model.config
    x = window(context.float(), cfg.context_length)
    loc, scale = fit_scale(x)
    tokens = patch_tokens((x - loc) / scale, cfg.patch_size)
    if num_patches > 1:
        tokens = torch.cat([tokens, tokens.new_zeros(tokens.shape[0], num_patches - 1, tokens.shape[2])], dim=1)
    return model(tokens, last_tokens=num_patches) * scale.view(-1, 1, 1, 1) + loc.view(-1, 1, 1, 1)


def _contexts(seed=0):
    """Batches whose shared empty start is 0 to 7 tokens of the 8, including missing starts and all-NaN."""
    rng = np.random.default_rng(seed)
    out = []
    for lengths in ([20], [100, 70], [255, 40, 33], [256], [400, 10], [64, 64, 64]):
        width = max(lengths)
        ctx = torch.full((len(lengths), width), float("nan"))
        for i, n in enumerate(lengths):
            ctx[i, width - n:] = torch.tensor(rng.normal(size=n).cumsum(), dtype=torch.float32)
        out.append(ctx)
    missing_start = torch.tensor(rng.normal(size=(2, 300)).cumsum(1), dtype=torch.float32)
    missing_start[:, :200] = float("nan")  # data only in the last 100 values: 4 of 8 tokens hold data
    out.append(missing_start)
    out.append(torch.full((2, 50), float("nan")))  # nothing observed at all
    return out


def _assert_matches(model, a, b):
    if model.backend_info()["cpu"]["batch_independent_bitwise"]:
        assert torch.equal(a, b)
    else:
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3)


def test_empty_prefix_length():
    t = torch.zeros(3, 6, 4)
    assert empty_prefix_length(t) == 6
    t[1, 4, 3] = 1.0  # a mask bit of series 1 in token 4
    assert empty_prefix_length(t) == 4
    t[2, 2, 0] = -0.5
    assert empty_prefix_length(t) == 2
    t[0, 0, 1] = 2.0
    assert empty_prefix_length(t) == 0


@pytest.mark.parametrize("level, emulated", LEVEL_PARAMS)
@pytest.mark.parametrize("num_patches", [1, 3])
def test_starting_after_the_shared_empty_tokens_equals_the_full_forward(level, emulated, num_patches,
                                                                        restore_dispatch):
    model = _model()
    cpu_kernel.select(level, "compiled", emulated)
    for ctx in _contexts():
        _assert_matches(model, model.predict_patches(ctx, num_patches), full_forward(model, ctx, num_patches))
    # the prefix states of the lengths met were computed and kept (the path above really skipped tokens)
    assert set(model._prefix_cache[1]) >= {0, 4, 7}


def test_the_forward_skips_the_shared_empty_tokens():
    model = _model()
    calls = []  # (rows, tokens) of each forward through the first block
    model.blocks[0].register_forward_hook(lambda module, args, out: calls.append(tuple(args[0].shape[:2])))
    ctx = torch.tensor(np.random.default_rng(0).normal(size=(3, 70)), dtype=torch.float32)  # 3 of 8 tokens hold data
    model.predict_patches(ctx)
    # a new empty-start length at a small batch: one forward over the window, its states after the 5 empty
    # tokens kept from that same forward (no forward of their own)
    assert calls == [(3, 8)] and 5 in model._prefix_cache[1]
    model.predict_patches(ctx)
    assert calls[-1] == (3, 3)
    model.predict_patches(ctx, 2)  # one more (empty) token appended for the second patch, the same 5 lead
    assert calls[-1] == (3, 4)
    ctx2 = ctx[:, 30:]  # 40 values: 2 tokens hold data, 6 empty ones lead, a new length
    model.predict_patches(ctx2)
    assert calls[-1] == (3, 8) and 6 in model._prefix_cache[1]
    model.predict_patches(ctx2)
    assert calls[-1] == (3, 2)


def test_a_large_batch_computes_a_new_empty_start_on_its_own():
    """Where running the empty tokens for every row costs more than a forward of its own, the states of a new
    length come from a batch-1 forward of the empty tokens (continued from the longest known shorter one)."""
    model = _model()  # 8 tokens: a forward's fixed cost is 4 windows, 32 token rows
    calls = []
    model.blocks[0].register_forward_hook(lambda module, args, out: calls.append(tuple(args[0].shape[:2])))
    ctx = torch.tensor(np.random.default_rng(1).normal(size=(40, 64)), dtype=torch.float32)  # 6 empty tokens
    out = model.predict_patches(ctx)
    assert calls == [(1, 6), (40, 2)]  # 39 x 6 extra rows > 6 + 32
    assert torch.equal(out, full_forward(model, ctx))


@pytest.mark.parametrize("backend", ["torch", "auto"])
def test_states_kept_from_a_forward_equal_those_of_a_forward_of_their_own(backend):
    model = _model()
    model.set_backend(backend)  # torch: the recurrence in two calls (before and after the snapshot)
    tokens = torch.zeros(2, 8, 64)
    tokens[:, 5:] = torch.randn(2, 3, 64)
    out, snapshot = model(tokens, last_tokens=1, snapshot_at=5)
    torch.testing.assert_close(out, model(tokens, last_tokens=1), rtol=0, atol=0)
    _, own = model(tokens[:1, :5], return_states=True, last_tokens=1)
    for kept, alone in zip(snapshot, own):
        for a, b in zip(kept, alone):
            assert torch.equal(a[:, :1], b)
    out, final, snapshot = model(tokens, return_states=True, snapshot_at=8)  # after the last token: the final states
    for kept, last in zip(snapshot, final):
        for a, b in zip(kept, last):
            assert torch.equal(a, b)
    with pytest.raises(ValueError, match="return_hidden"):
        model(tokens, snapshot_at=5, return_hidden=True)
    with pytest.raises(ValueError, match="snapshot_at must be in"):
        model.set_backend("torch")
        model(tokens, snapshot_at=9)


def test_the_states_follow_the_weights_and_numerics():
    model = _model()
    ctx = _contexts()[1]
    assert torch.equal(model.predict_patches(ctx), full_forward(model, ctx))  # fills the cache
    with torch.no_grad():  # in place, as an optimizer step does
        model.blocks[0].slstm.bias.add_(0.3)
        next(model.patch_embedding.parameters()).add_(0.1)
    assert torch.equal(model.predict_patches(ctx), full_forward(model, ctx))
    other = _model(seed=3)
    model.load_state_dict(other.state_dict())
    assert torch.equal(model.predict_patches(ctx), full_forward(other, ctx))
    model.set_recurrence_dtype("float32")
    other.set_recurrence_dtype("float32")
    assert torch.equal(model.predict_patches(ctx), full_forward(other, ctx))


def test_plan_batches_groups_series_by_the_tokens_that_hold_data():
    nan = float("nan")
    series = [torch.ones(256), torch.ones(250), torch.ones(40), torch.tensor([nan] * 250 + [1.0] * 30),
              torch.ones(5), torch.ones(300), torch.full((9,), nan)]
    # tokens of 32 holding data in the last 256 values: 8, 8, 2, 1, 1, 8, 0; most first, ties in input order
    order, bounds = plan_batches(series, 256, 32, batch_size=3)
    assert order == [0, 1, 5, 2, 3, 4, 6]
    assert bounds == [(0, 3), (3, 6), (6, 7)]  # full batches of 3: no cut saves more than a window (8 token rows)
    order, bounds = plan_batches(series, 256, 32, batch_size=10)
    assert bounds == [(0, 7)]  # an early cut needs MIN_EARLY_CUT series in the batch first
    assert plan_batches(series[:1], 256, 32, 10) == ([0], [(0, 1)])
    # 20 full windows, then 30 series of one token: (8 - 1) x 30 = 210 token rows saved > 4 windows (32)
    many = [torch.ones(300)] * 20 + [torch.ones(10)] * 30
    order, bounds = plan_batches(many, 256, 32, batch_size=256)
    assert order == list(range(50)) and bounds == [(0, 20), (20, 50)]
    assert plan_batches(many, 256, 32, batch_size=256, early_cuts=False)[1] == [(0, 50)]  # GPUs: full batches
    few = [torch.ones(300)] * 20 + [torch.ones(10)] * 4  # (8 - 1) x 4 = 28 <= 32: not worth a forward
    assert plan_batches(few, 256, 32, batch_size=256)[1] == [(0, 24)]


def test_forecast_over_several_batches_keeps_the_input_order():
    model = _model()
    rng = np.random.default_rng(2)
    series = [rng.normal(size=n).cumsum() for n in (30, 500, 12, 260, 90, 31, 200, 7)]
    series[2][:5] = np.nan  # a missing start
    q, mean = model.forecast(series, prediction_length=40, batch_size=3, output_type="torch")
    q_all, _ = model.forecast(series, prediction_length=40, output_type="torch")  # one batch of 256 at most, cut by length
    _assert_matches(model, q, q_all)
    for i, s in enumerate(series):
        q_one, mean_one = model.forecast(s, prediction_length=40, output_type="torch")
        _assert_matches(model, q[i : i + 1], q_one)
        _assert_matches(model, mean[i : i + 1], mean_one)


def test_a_stream_starts_after_the_shared_empty_tokens():
    model = _model()
    steps = []
    model.blocks[0].register_forward_hook(lambda module, args, out: steps.append(args[0].shape[1]))
    ctx = torch.tensor(np.random.default_rng(4).normal(size=(2, 70)).cumsum(1), dtype=torch.float32)
    stream = model.stream(ctx)
    assert steps[-1] == 3  # 3 of the window's 8 tokens hold data
    q_stream, _ = stream.forecast(32)
    q_fresh, _ = model.forecast(ctx, prediction_length=32, output_type="torch")
    _assert_matches(model, q_stream, q_fresh)
    stream.update(torch.ones(2, 40))
    assert torch.isfinite(stream.forecast(20)[0]).all()


def test_threads_filling_the_cache_at_once_get_the_sequential_results():
    rng = np.random.default_rng(5)
    jobs = [[rng.normal(size=int(n)).cumsum() for n in rng.integers(5, 300, size=int(k))] for k in rng.integers(1, 5, 12)]
    reference = _model()
    sequential = [reference.forecast(s, prediction_length=40, output_type="torch")[0] for s in jobs]
    model = _model()  # the same weights, an empty cache that the threads fill concurrently
    # four threads, each forecasting every fourth job in turn
    strides = run_at_once([lambda k=k: [model.forecast(jobs[i], prediction_length=40, output_type="torch")[0]
                                        for i in range(k, len(jobs), 4)] for k in range(4)])
    results = [strides[i % 4][i // 4] for i in range(len(jobs))]
    for q, expected in zip(results, sequential):
        _assert_matches(model, q, expected)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("num_patches", [1, 3])
def test_the_shared_empty_start_on_cuda_matches_the_full_forward(num_patches):
    """On a GPU the forward after the shared empty tokens runs the CUDA kernels from the cached states (the
    path a stream continues on): the same values as the full forward there and as on CPU, up to float32
    rounding (the CUDA kernels' sums run in another order)."""
    cpu_model = _model()
    model = _model().cuda()
    assert model.backend_info()["backend"] in (["auto"], ["cuda"])
    for ctx in _contexts():
        fast = model.predict_patches(ctx.cuda(), num_patches).cpu()
        full = full_forward(model, ctx.cuda(), num_patches).cpu()
        torch.testing.assert_close(fast, full, rtol=1e-3, atol=1e-3)
        torch.testing.assert_close(fast, cpu_model.predict_patches(ctx, num_patches), rtol=1e-3, atol=1e-3)
    assert any(length > 0 for length in model._prefix_cache[1])  # the path above did skip tokens

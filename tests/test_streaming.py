"""Streaming updates: same first patch as a fresh forecast, constant memory, sensible after updates."""

import numpy as np
import pytest
import torch



@pytest.fixture(scope="module")
def model(fixture_dir):
    from tirex import load_model

    return load_model(fixture_dir / "official")


def series(n, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    return 5 + np.sin(2 * np.pi * t / 24) + 0.1 * rng.normal(size=n)


def test_first_patch_equals_fresh_forecast(model):
    ctx = np.stack([series(300, 0), series(300, 1)])
    stream = model.stream(ctx)
    q_stream, mean_stream = stream.forecast(32)
    q_fresh, _ = model.forecast(ctx, prediction_length=32, output_type="torch")
    torch.testing.assert_close(q_stream, q_fresh, rtol=0, atol=1e-5)
    assert mean_stream.shape == (2, 32)


def test_memory_does_not_grow_and_updates_track_the_series(model):
    full = series(2000)
    stream = model.stream(full[:300])
    sizes = []
    for start in range(300, 1900, 50):  # updates that do not align with patches
        stream.update(full[start:start + 50])
        sizes.append(sum(t.numel() for s in stream.states for t in s) + stream.partial.numel())
    assert max(sizes) <= sizes[0] + stream.patch_size
    assert stream.steps_seen == 1900
    q, mean = stream.forecast(40)
    assert q.shape == (1, 40, 9) and torch.isfinite(q).all()
    # an update shifts the forecast start: it must still follow the seasonal pattern of the data
    truth = full[1900:1940]
    naive_error = np.abs(truth - full[1900 - 24:1940 - 24]).mean()
    assert np.abs(mean[0].numpy() - truth).mean() < 10 * naive_error + 1.0


def test_partial_patch_forecast_starts_at_the_next_step(model):
    full = series(400)
    a = model.stream(full[:320])
    a.update(full[320:330])
    q_a, _ = a.forecast(5)
    assert q_a.shape == (1, 5, 9)
    with pytest.raises(ValueError, match="update expects"):
        a.update(np.ones((3, 4)))
    with pytest.raises(ValueError, match="positive integer"):
        a.forecast(0)

"""forecast(): input types, output shapes, quantile levels, batching, long horizons, bad input."""

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import assert_within_parity_bar
from tirex import ModelConfig, TiRexModel


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = TiRexModel(ModelConfig(embed_dim=32, num_heads=2, num_blocks=2, input_ff_dim=64, context_length=256)).eval()
    # non-trivial recurrent weights and biases so that every part of the state matters
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return m


def sine(n=300, period=24.0, phase=0.0):
    t = np.arange(n)
    return 10 + 3 * np.sin(2 * np.pi * t / period + phase)


def test_shapes_for_array_inputs(model):
    q, mean = model.forecast(sine(), prediction_length=40)
    assert isinstance(q, np.ndarray) and q.shape == (1, 40, 9) and mean.shape == (1, 40)
    q, mean = model.forecast(torch.tensor(np.stack([sine(), sine(phase=1)])), prediction_length=5)
    assert isinstance(q, torch.Tensor) and q.shape == (2, 5, 9)
    assert torch.equal(mean, q[..., 4])  # the point forecast is the median, as in the reference


def assert_batch_independent(model, a, b, series):
    """What the README promises: bitwise the same with the compiled matmuls (every CPU kernel level);
    with torch's matmuls (TIREX_CPU_GEMM=0, no kernel, fast mode) within the spec's parity bar."""
    if model.backend_info()["cpu"]["batch_independent_bitwise"]:
        assert torch.equal(a, b)
        return
    scale = torch.tensor([max(np.std(np.asarray(s)[-256:]), 1e-6) for s in series], dtype=a.dtype).view(-1, 1, 1)
    assert_within_parity_bar((a - b).abs() / scale)


def test_ragged_list_equals_individual_calls(model):
    series = [sine(50), sine(300, phase=2), sine(700, period=7)]
    q_all, _ = model.forecast(series, prediction_length=33, batch_size=2)
    q_one = torch.cat([model.forecast(s, prediction_length=33, output_type="torch")[0] for s in series])
    assert_batch_independent(model, q_all, q_one, series)


def test_results_do_not_depend_on_batch_composition(model):
    rng = np.random.default_rng(1)
    series = [rng.normal(size=rng.integers(20, 400)).cumsum() for _ in range(7)]
    a, _ = model.forecast(series, prediction_length=20, batch_size=7)
    b, _ = model.forecast(series, prediction_length=20, batch_size=3)
    c, _ = model.forecast(series[::-1], prediction_length=20, batch_size=1)
    assert_batch_independent(model, a, b, series)
    assert_batch_independent(model, a, c.flip(0), series)


def test_other_quantile_levels_are_monotone_and_consistent(model):
    levels = [0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99]
    q, _ = model.forecast(sine(), prediction_length=16, quantile_levels=levels, output_type="torch")
    base, _ = model.forecast(sine(), prediction_length=16, output_type="torch")
    assert q.shape == (1, 16, 9)
    assert (q.diff(dim=-1) >= -1e-6).all()
    srt = base.sort(dim=-1).values
    torch.testing.assert_close(q[..., 4], srt[..., 4])  # 0.5 is a model level
    torch.testing.assert_close(q[..., 3], (srt[..., 1] + srt[..., 2]) / 2)  # 0.25 halfway between 0.2 and 0.3


def test_pandas_series_and_long_dataframe(model):
    idx = pd.date_range("2024-01-01", periods=300, freq="h")
    out = model.forecast(pd.Series(sine(), index=idx), prediction_length=12)
    assert list(out.columns[:2]) == ["mean", "0.1"] and len(out) == 12
    assert out.index[0] == idx[-1] + pd.Timedelta(hours=1)

    df = pd.concat([
        pd.DataFrame({"item_id": "a", "timestamp": idx, "target": sine()}),
        pd.DataFrame({"item_id": "b", "timestamp": pd.date_range("2020-01-31", periods=60, freq="ME"), "target": sine(60, 12)}),
    ])
    res = model.forecast(df, prediction_length=6)
    assert set(res.columns) >= {"item_id", "timestamp", "mean", "0.5", "0.9"}
    assert len(res) == 12
    b = res[res.item_id == "b"]
    assert b.timestamp.iloc[0] == pd.Timestamp("2025-01-31")
    q, _ = model.forecast(sine(60, 12), prediction_length=6)
    np.testing.assert_allclose(b["0.9"].to_numpy(), q[0, :, 8], atol=1e-5)


def test_gluonts_dataset(model):
    pytest.importorskip("gluonts")
    from gluonts.dataset.common import ListDataset

    ds = ListDataset([{"start": "2024-01-01", "target": sine()}, {"start": "2024-02-01", "target": sine(100)}], freq="D")
    forecasts = model.forecast(ds, prediction_length=7)
    assert len(forecasts) == 2
    assert forecasts[0].quantile(0.5).shape == (7,)
    assert forecasts[1].start_date == pd.Period("2024-02-01", "D") + 100


def test_long_horizon_still_depends_on_the_data(model):
    L = model.config.context_length
    a, b = sine(400), sine(400, period=9)
    qa, _ = model.forecast(a, prediction_length=3 * L, output_type="torch")
    qb, _ = model.forecast(b, prediction_length=3 * L, output_type="torch")
    assert torch.isfinite(qa).all()
    assert (qa[0, -32:] - qb[0, -32:]).abs().max() > 1e-4  # beyond the window, different inputs still differ
    ra, _ = model.forecast(a, prediction_length=3 * L, max_masked_fraction=None, output_type="torch")
    rb, _ = model.forecast(b, prediction_length=3 * L, max_masked_fraction=None, output_type="torch")
    torch.testing.assert_close(ra[0, -32:], rb[0, -32:])  # the reference rollout collapses there


def test_feedback_rollout_equals_reference_up_to_half_window(model):
    L = model.config.context_length
    q1, _ = model.forecast(sine(), prediction_length=L // 2 + 32, output_type="torch")
    q2, _ = model.forecast(sine(), prediction_length=L // 2 + 32, max_masked_fraction=None, output_type="torch")
    torch.testing.assert_close(q1, q2, rtol=0, atol=0)


def test_extreme_and_degenerate_values_give_finite_results(model):
    big, _ = model.forecast(sine() * 1e30, prediction_length=8, output_type="torch")
    ref, _ = model.forecast(sine(), prediction_length=8, output_type="torch")
    assert torch.isfinite(big).all()
    torch.testing.assert_close(big / 1e30, ref, rtol=1e-4, atol=1e-4)  # scale equivariant
    tiny, _ = model.forecast(sine() * 1e-30, prediction_length=8, output_type="torch")
    torch.testing.assert_close(tiny / 1e-30, ref, rtol=1e-4, atol=1e-4)
    for s in (np.full(50, np.nan), np.zeros(50), np.full(50, 7.0), np.arange(100, dtype=np.int64)):
        q, _ = model.forecast(s, prediction_length=8, output_type="torch")
        assert torch.isfinite(q).all()
    with pytest.warns(UserWarning, match="inf"):
        q, _ = model.forecast(np.r_[sine(100), np.inf], prediction_length=4, output_type="torch")
    assert torch.isfinite(q).all()


@pytest.mark.parametrize(
    "context, kwargs, error, match",
    [
        (np.array([]), {}, ValueError, "empty"),
        ([np.ones(10), np.array([])], {}, ValueError, "series 1 is empty"),
        (np.zeros((2, 3, 4)), {}, ValueError, "3-D"),
        (np.array(["a", "b"]), {}, TypeError, "non-numeric"),
        (np.ones(10) + 1j, {}, TypeError, "complex"),
        ("hello", {}, TypeError, "not supported"),
        (np.ones(10), {"prediction_length": 0}, ValueError, "positive integer"),
        (np.ones(10), {"prediction_length": 2.5}, TypeError, "positive integer"),
        (np.ones(10), {"prediction_length": True}, TypeError, "positive integer"),
        (np.ones(10), {"quantile_levels": [0.5, 1.0]}, ValueError, "between 0 and 1"),
        (np.ones(10), {"quantile_levels": [0.0]}, ValueError, "between 0 and 1"),
        (np.ones(10), {"quantile_levels": []}, ValueError, "empty"),
        (np.ones(10), {"batch_size": 0}, ValueError, "batch_size"),
        (np.ones(10), {"rollout_steps": -1}, ValueError, "rollout_steps"),
    ],
)
def test_bad_input_is_named(model, context, kwargs, error, match):
    kwargs = {"prediction_length": 4, **kwargs}
    with pytest.raises(error, match=match):
        model.forecast(context, **kwargs)


def test_dataframe_bad_input(model):
    df = pd.DataFrame({"item_id": ["a"] * 3, "timestamp": ["2024-01-01", "2024-01-01", "2024-01-02"], "target": [1, 2, 3]})
    with pytest.raises(ValueError, match="duplicate"):
        model.forecast(df, prediction_length=2)
    df = pd.DataFrame({"item_id": ["a"] * 3, "timestamp": ["2024-01-01", "yesterday-ish", "2024-01-03"], "target": [1, 2, 3]})
    with pytest.raises(ValueError, match="not timestamps"):
        model.forecast(df, prediction_length=2)
    df = pd.DataFrame({"item_id": ["a"] * 3, "timestamp": pd.date_range("2024", periods=3, freq="D"), "target": ["a", "b", "c"]})
    with pytest.raises(TypeError, match="not numeric"):
        model.forecast(df, prediction_length=2)
    with pytest.raises(ValueError, match="no target column"):
        model.forecast(df.rename(columns={"target": "zzz"}), prediction_length=2)


# ---------------------------------------------------------------------------- issue 15: no silent wrong answers
def pinball(q, y, levels):
    """Summed pinball loss of quantiles q (..., levels) for outcomes y (...)."""
    diff = y[..., None] - q
    lv = torch.tensor(levels, dtype=q.dtype)
    return torch.maximum(lv * diff, (lv - 1) * diff).sum(-1)


def test_quantiles_are_monotone_and_sorting_never_worsens_the_loss(model):
    """Item 7: the model's own quantiles cross (these random weights cross everywhere); every output is sorted."""
    ctx = torch.tensor(np.stack([sine(), sine(phase=1) * 5]))
    raw = model.rollout(ctx.float(), 40)
    assert (raw.diff(dim=-1) < 0).any()  # the raw model output crosses ...
    q, mean = model.forecast(ctx, prediction_length=40)
    assert (q.diff(dim=-1) >= 0).all()  # ... the forecast never does
    torch.testing.assert_close(q, raw.sort(dim=-1).values)
    torch.testing.assert_close(mean, q[..., 4])
    for y in (torch.randn(2, 40) * 20 + 10, raw[..., 0] - 1, raw[..., -1] + 1):
        assert (pinball(q, y, model.config.quantile_levels) <= pinball(raw, y, model.config.quantile_levels) + 1e-4).all()
    stream_q, stream_mean = model.stream(ctx).forecast(40)
    assert (stream_q.diff(dim=-1) >= 0).all() and torch.equal(stream_mean, stream_q[..., 4])


def test_keep_sign_keeps_non_negative_series_non_negative(model):
    counts = np.abs(sine(200, period=7) - 10) * 3  # non-negative, often 0-ish
    q, mean = model.forecast(counts, prediction_length=40, output_type="torch")
    assert q.min() < 0  # this untrained model forecasts below zero ...
    kept, kept_mean = model.forecast(counts, prediction_length=40, output_type="torch", keep_sign=True)
    assert kept.min() >= 0 and kept_mean.min() >= 0  # ... keep_sign=True does not
    torch.testing.assert_close(kept, q.clamp(min=0))
    negative, _ = model.forecast(-counts, prediction_length=40, output_type="torch", keep_sign=True)
    assert negative.max() <= 0
    mixed, _ = model.forecast(counts - 5, prediction_length=40, output_type="torch", keep_sign=True)
    torch.testing.assert_close(mixed, model.forecast(counts - 5, prediction_length=40, output_type="torch")[0])


@pytest.mark.parametrize("values", [np.array([1.0, 2.0, 1e39] * 50), np.array([1.0, 2.0, 1e300] * 50),
                                    np.array([1.0, 2.0, 3.0] * 50) * 1e-300])
def test_values_beyond_float32_give_a_correct_float64_result(model, values):
    """Item 1: values beyond float32's range gave an all-inf forecast."""
    q, mean = model.forecast(values, prediction_length=8)
    assert q.dtype == np.float64 and np.isfinite(q).all() and np.isfinite(mean).all()
    scale = 2.0 ** np.floor(np.log2(np.abs(values).max()))
    reference, _ = model.forecast(values / scale, prediction_length=8)  # exact: a power-of-two rescaling
    np.testing.assert_allclose(q / scale, reference, rtol=1e-6, atol=1e-6 * np.abs(values / scale).max())
    stream_q, _ = model.stream(values).forecast(8)
    assert stream_q.dtype == torch.float64 and torch.isfinite(stream_q).all()
    q32, _ = model.forecast(values / scale, prediction_length=8)
    assert q32.dtype == np.float32  # ordinary values keep float32


def test_a_nan_forecast_raises_instead_of_being_returned():
    broken = TiRexModel(ModelConfig(embed_dim=16, num_heads=2, num_blocks=1, input_ff_dim=32, context_length=64)).eval()
    with torch.no_grad():
        broken.head.output.weight.fill_(float("nan"))
    with pytest.raises(RuntimeError, match="non-finite forecast"):
        broken.forecast(sine(100), prediction_length=4)


def test_long_dataframe_row_without_an_id_is_an_error(model):
    """Item 5: a row with a NaN id was dropped silently and that series' forecast started one step early."""
    idx = pd.date_range("2024-01-01", periods=40, freq="D")
    df = pd.DataFrame({"item_id": ["a"] * 40, "timestamp": idx, "target": sine(40)})
    df.loc[39, "item_id"] = np.nan
    with pytest.raises(ValueError, match="without a series id"):
        model.forecast(df, prediction_length=3)


def test_dataframe_gaps_are_filled_as_in_the_cli(model):
    """Item 9: the CLI filled a date gap with missing values, the API refused the same DataFrame."""
    idx = pd.date_range("2024-01-01", periods=60, freq="D")
    full = pd.DataFrame({"item_id": "a", "timestamp": idx, "target": sine(60)})
    gappy = full.drop(index=[20, 21])
    out = model.forecast(gappy, prediction_length=4)
    assert out["timestamp"].iloc[0] == idx[-1] + pd.Timedelta(days=1)
    q, _ = model.forecast(np.where(np.isin(np.arange(60), [20, 21]), np.nan, sine(60)), prediction_length=4)
    np.testing.assert_allclose(out["0.5"].to_numpy(), q[0, :, 4], atol=1e-5)
    wide = full.pivot(index="timestamp", columns="item_id", values="target")  # a DatetimeIndex, one column per series
    q_full, _ = model.forecast(sine(60), prediction_length=4)
    np.testing.assert_allclose(model.forecast(wide, prediction_length=4)["0.5"], q_full[0, :, 4], atol=1e-5)


def test_pandas_series_with_a_period_index_and_gaps(model):
    periods = pd.period_range("2020-01", periods=48, freq="M")
    out = model.forecast(pd.Series(sine(48, 12), index=periods).drop(periods[10]), prediction_length=3)
    assert list(out.index) == list(pd.period_range("2024-01", periods=3, freq="M"))
    steps = model.forecast(pd.Series(sine(30)), prediction_length=2)
    assert list(steps.index) == [30, 31]


def test_horizon_cap_linear_cost_warning_and_progress_bar(model, capsys):
    """Item 6: 10**5 or 10**7 steps ran for minutes with no warning, and the cost grew faster than linearly."""
    with pytest.raises(ValueError, match="maximum of 100,000"):
        model.forecast(sine(), prediction_length=10**7)
    widths = []
    original = model.predict_patches

    def recording(context, num_patches=1):
        widths.append(context.shape[1])
        return original(context, num_patches)

    model.predict_patches = recording
    try:
        model.forecast(sine(), prediction_length=40 * model.config.context_length, progress=True)
    finally:
        del model.predict_patches
    # every pass reads at most the last window of history, one window of filled-in medians and the masked future:
    # constant work per pass, so the cost is linear in the horizon (it used to read everything predicted so far)
    assert max(widths) <= 3 * model.config.context_length
    assert "forecast" in capsys.readouterr().err  # the progress bar, on stderr
    with pytest.warns(UserWarning, match="rollout passes"):
        model.forecast(sine(), prediction_length=2000 * model.config.patch_size)


@pytest.mark.parametrize("call, error, match", [
    (lambda m: m.forecast(np.zeros((0, 10)), 5), ValueError, "no series"),  # item 8: torch.cat(): expected a non-empty list
    (lambda m: m.stream(sine()).update("abc"), TypeError, "non-numeric"),  # item 8: torch's new(): invalid data type
    (lambda m: m.forecast(np.array(["1.5", "2.5"] * 10), 5), TypeError, "non-numeric"),  # item 9: numeric strings
    (lambda m: m.forecast(sine(), 5, quantile_levels=["0.1", "0.5"]), TypeError, "numbers"),  # item 9: levels as text
    (lambda m: m.forecast(sine(), "5"), TypeError, "positive integer"),
    (lambda m: m.forecast(sine(), 5, quantile_levels=[0.5, 0.5]), ValueError, "duplicates"),
    (lambda m: m.forecast(sine(), 5, output_type="pandas"), ValueError, "output_type"),
    (lambda m: m.forecast(sine(), 5, max_masked_fraction=0.0), ValueError, "max_masked_fraction"),
    (lambda m: m.forecast(sine(), 5, id_column="x"), TypeError, "only for pandas"),
    (lambda m: m.forecast({"a": sine()}, 5), TypeError, "dict"),
    (lambda m: m.forecast(np.array([1.7e308, -1.7e308] * 50), 8), ValueError, "overflows float64"),
])
def test_more_bad_input_is_named(model, call, error, match):
    with pytest.raises(error, match=match):
        call(model)


def test_object_arrays_of_numbers_and_json_nulls_are_accepted(model):
    """Item 9: the README now documents what happens with object arrays (numbers and None are accepted)."""
    values = sine(60).astype(object)
    values[5] = None
    q, _ = model.forecast(values, prediction_length=3)
    reference, _ = model.forecast(np.where(np.arange(60) == 5, np.nan, sine(60)), prediction_length=3)
    np.testing.assert_array_equal(q, reference)

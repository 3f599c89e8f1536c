"""The forecaster interface: baselines, our models, callables, and output validation."""

import importlib.util
import sys

import numpy as np
import pytest

from tirex_eval.forecasters import (
    QUANTILE_LEVELS, CallableForecaster, ForecastError, Forecaster, ModelForecaster, StatsForecaster, fill_missing,
    make_forecaster, validate_forecast,
)

LEVELS = list(QUANTILE_LEVELS)
needs_statsforecast = pytest.mark.skipif(importlib.util.find_spec("statsforecast") is None,
                                         reason="the baselines need statsforecast (pip install 'tirex[eval]')")


def test_a_baseline_without_statsforecast_is_an_error_not_a_repeated_last_value(monkeypatch):
    """Without statsforecast every fit failed into the fallback chain and each series got its last value
    repeated, scored as if it were the baseline; now the baseline refuses at once and says what to install."""
    monkeypatch.setitem(sys.modules, "statsforecast", None)  # import statsforecast -> ImportError
    with pytest.raises(ImportError, match=r"tirex\[eval\]"):
        StatsForecaster("auto_ets")


@needs_statsforecast
def test_seasonal_naive_repeats_the_last_season_at_every_level():
    y = np.arange(1.0, 13.0)  # 1..12, season 4 -> last season 9, 10, 11, 12
    quantiles, mean = StatsForecaster("seasonal_naive").predict_quantiles([y], 6, LEVELS, season_length=4)
    assert quantiles.shape == (1, 6, 9) and mean.shape == (1, 6)
    np.testing.assert_allclose(mean[0], [9, 10, 11, 12, 9, 10])
    np.testing.assert_allclose(quantiles[0], np.repeat(mean[0][:, None], 9, axis=1))


@needs_statsforecast
def test_naive_and_short_histories():
    quantiles, mean = StatsForecaster("naive").predict_quantiles([np.array([3.0, 5.0])], 3, LEVELS, season_length=12)
    np.testing.assert_allclose(mean, [[5, 5, 5]])
    _, mean = StatsForecaster("seasonal_naive").predict_quantiles([np.array([3.0, 5.0])], 3, LEVELS, 12)
    np.testing.assert_allclose(mean, [[5, 5, 5]])  # history shorter than a season -> season 1


@needs_statsforecast
def test_auto_ets_gives_monotone_quantiles_centred_on_the_mean():
    rng = np.random.default_rng(0)
    series = [10 + np.sin(np.arange(48) * np.pi / 6) + rng.normal(0, 0.3, 48) for _ in range(2)]
    quantiles, mean = StatsForecaster("auto_ets").predict_quantiles(series, 12, LEVELS, season_length=12)
    assert quantiles.shape == (2, 12, 9)
    assert np.all(np.diff(quantiles, axis=-1) > 0)
    np.testing.assert_allclose(quantiles[..., 4], mean)


@needs_statsforecast
def test_failing_model_falls_back_to_seasonal_naive(monkeypatch):
    import tirex_eval.forecasters as forecasters

    original = forecasters._statsforecast_model

    def broken(name, season_length):
        if name == "auto_arima":
            raise RuntimeError("fit failed")
        return original(name, season_length)

    monkeypatch.setattr(forecasters, "_statsforecast_model", broken)
    model = StatsForecaster("auto_arima")
    _, mean = model.predict_quantiles([np.arange(1.0, 9.0)], 4, LEVELS, season_length=4)
    np.testing.assert_allclose(mean, [[5, 6, 7, 8]])
    assert model.fallbacks == 1


def test_missing_values_are_filled_for_statistical_models():
    np.testing.assert_allclose(fill_missing(np.array([np.nan, 1.0, np.nan, 3.0])), [1, 1, 3])
    np.testing.assert_allclose(fill_missing(np.array([np.nan, np.nan])), [0.0])


def test_our_model_through_the_adapter():
    torch = pytest.importorskip("torch")
    from tirex import ModelConfig, TiRexModel

    torch.manual_seed(0)
    model = TiRexModel(ModelConfig(embed_dim=32, num_heads=2, num_blocks=1, input_ff_dim=64, context_length=128)).eval()
    forecaster = make_forecaster(model, name="tiny")
    assert isinstance(forecaster, ModelForecaster) and isinstance(forecaster, Forecaster)
    series = [np.sin(np.arange(n) / 3.0) for n in (40, 75)]
    series[1][10] = np.nan
    quantiles, mean = forecaster.predict_quantiles(series, 20, LEVELS, season_length=1)
    quantiles, mean = validate_forecast(quantiles, mean, 2, 20, LEVELS)
    assert quantiles.shape == (2, 20, 9) and mean.shape == (2, 20)


@needs_statsforecast
def test_make_forecaster_dispatch():
    assert isinstance(make_forecaster("Seasonal-Naive"), StatsForecaster)
    fn = CallableForecaster("x", lambda s, h, q, m: None)
    assert make_forecaster(fn) is fn
    assert isinstance(make_forecaster(lambda s, h, q, m: None), CallableForecaster)
    with pytest.raises(TypeError, match="cannot build a forecaster"):
        make_forecaster(42)
    with pytest.raises(ValueError, match="unknown baseline"):
        StatsForecaster("prophet")


def test_validation_messages():
    q = np.zeros((2, 3, 9))
    with pytest.raises(ForecastError, match=r"shape \(2, 3, 8\); expected \(2, 3, 9\)"):
        validate_forecast(q[..., :8], np.zeros((2, 3)), 2, 3, LEVELS, name="m")
    with pytest.raises(ForecastError, match=r"mean of shape"):
        validate_forecast(q, np.zeros((3, 3)), 2, 3, LEVELS)
    bad = q.copy()
    bad[1, 0, 0] = np.inf
    with pytest.raises(ForecastError, match="non-finite quantiles"):
        validate_forecast(bad, np.zeros((2, 3)), 2, 3, LEVELS)
    crossing = np.tile(np.arange(9.0)[::-1], (2, 3, 1))
    with pytest.raises(ForecastError, match="crossing"):
        validate_forecast(crossing, np.zeros((2, 3)), 2, 3, LEVELS, fix_crossing=False)
    with pytest.warns(UserWarning, match="crossing"):
        fixed, _ = validate_forecast(crossing, np.zeros((2, 3)), 2, 3, LEVELS)
    assert np.all(np.diff(fixed, axis=-1) >= 0)

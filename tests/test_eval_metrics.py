"""GIFT-Eval metrics and seasonalities agree with GluonTS's evaluation."""

import numpy as np
import pandas as pd
import pytest

from tirex_eval.gift_eval import load_configs
from tirex_eval.metrics import GIFT_METRICS, gift_eval_metrics, quantile_at, seasonal_error
from tirex_eval.seasonality import get_seasonality, split_freq

gluonts = pytest.importorskip("gluonts")
from gluonts.ev.metrics import (  # noqa: E402
    MAE, MAPE, MASE, MSE, MSIS, ND, NRMSE, RMSE, SMAPE, MeanWeightedSumQuantileLoss,
)
from gluonts.model.evaluation import evaluate_forecasts  # noqa: E402
from gluonts.model.forecast import QuantileForecast  # noqa: E402

LEVELS = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]


def gluonts_metrics():
    return [MSE(forecast_type="mean"), MSE(forecast_type=0.5), MAE(), MASE(), MAPE(), SMAPE(), MSIS(), RMSE(),
            NRMSE(), ND(), MeanWeightedSumQuantileLoss(quantile_levels=LEVELS)]


def test_seasonality_matches_the_config_table_for_all_97_configurations():
    configs = load_configs()
    assert len(configs) == 97
    for config in configs.values():
        assert get_seasonality(config.freq) == config.seasonality, config.name


@pytest.mark.parametrize("freq", ["S", "10S", "T", "5T", "10T", "15T", "H", "D", "W", "W-WED", "M", "Q", "A", "B"])
def test_seasonality_matches_gluonts(freq):
    from gluonts.time_feature import get_seasonality as gluonts_seasonality

    assert get_seasonality(freq) == gluonts_seasonality(freq)


def test_bad_frequency_is_rejected_with_a_clear_message():
    with pytest.raises(ValueError, match="cannot parse frequency"):
        split_freq("every tuesday")


def test_seasonal_error_falls_back_to_lag_one_for_short_histories():
    assert seasonal_error(np.array([1.0, 3.0, 2.0]), 12) == pytest.approx(1.5)
    assert seasonal_error(np.array([1.0, np.nan, 2.0, 5.0]), 1) == pytest.approx(3.0)


def _random_case(seed, n=7, horizon=5, nan_fraction=0.1):
    rng = np.random.default_rng(seed)
    history = [rng.normal(10, 3, size=rng.integers(3, 40)) for _ in range(n)]
    history[0] = np.full(15, 4.0)  # constant history: zero seasonal error
    history[2] = np.concatenate([history[2], [np.nan], rng.normal(10, 3, size=20)])  # a gap in the history
    labels = rng.normal(10, 3, size=(n, horizon))
    labels[rng.random(labels.shape) < nan_fraction] = np.nan
    labels[1, 0] = 0.0  # zero label: undefined percentage error
    median = labels + rng.normal(0, 2, size=labels.shape)
    median[np.isnan(median)] = 10.0
    spread = np.abs(rng.normal(1, 0.5, size=(n, horizon, 1))) * (np.asarray(LEVELS) - 0.5) * 4
    quantiles = median[..., None] + spread
    mean = median + rng.normal(0, 0.5, size=median.shape)
    return history, labels, quantiles, mean


def _gluonts_reference(history, labels, quantiles, mean, season):
    start = pd.Period("2020-01-01", freq="D")
    inputs = [{"target": h, "start": start} for h in history]
    label_entries = [{"target": y, "start": start + len(h)} for h, y in zip(history, labels)]
    forecasts = [QuantileForecast(np.concatenate([q.T, m[None]]), start_date=start + len(h),
                                  forecast_keys=[str(x) for x in LEVELS] + ["mean"])
                 for h, q, m in zip(history, quantiles, mean)]

    class TestData:
        input = inputs
        label = label_entries

    result = evaluate_forecasts(forecasts, test_data=TestData(), metrics=gluonts_metrics(), seasonality=season)
    return result.iloc[0].to_dict()


@pytest.mark.parametrize("seed,season", [(0, 1), (1, 4), (2, 12), (3, 24)])
def test_metrics_agree_with_gluonts_evaluate_forecasts(seed, season):
    history, labels, quantiles, mean = _random_case(seed)
    scales = np.array([seasonal_error(h, season) for h in history])
    ours = gift_eval_metrics(labels, quantiles, mean, scales, LEVELS)
    reference = _gluonts_reference(history, labels, quantiles, mean, season)
    assert set(ours) == set(GIFT_METRICS)
    for name in GIFT_METRICS:
        assert ours[name] == pytest.approx(reference[name], rel=1e-6), name


def test_tail_quantiles_match_gluonts_quantile_forecast():
    rng = np.random.default_rng(5)
    quantiles = np.sort(rng.normal(size=(6, len(LEVELS))), axis=-1).T  # (levels, horizon)
    forecast = QuantileForecast(quantiles, start_date=pd.Period("2020-01", freq="M"),
                                forecast_keys=[str(q) for q in LEVELS])
    for level in (0.01, 0.025, 0.05, 0.15, 0.5, 0.75, 0.95, 0.975):
        np.testing.assert_allclose(quantile_at(quantiles.T, LEVELS, level), forecast.quantile(level), rtol=1e-9)


def test_all_missing_labels_raise():
    history, labels, quantiles, mean = _random_case(0)
    with pytest.raises(ValueError, match="all labels are missing"):
        gift_eval_metrics(np.full_like(labels, np.nan), quantiles, mean, np.ones(len(labels)), LEVELS)

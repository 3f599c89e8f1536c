"""Fine-tuning: learns an unseen pattern, reloads identically, resumes exactly, rejects bad data early."""

import numpy as np
import pandas as pd
import pytest
import torch

pytest.importorskip("lightning")

from tirex import ModelConfig, TiRexModel, load_model  # noqa: E402
from tirex_pretraining.finetune import FinetuneError, finetune  # noqa: E402
from tirex_pretraining.module import init_tirex_weights  # noqa: E402

H = 32


def small_model():
    torch.manual_seed(0)
    cfg = ModelConfig(patch_size=16, context_length=128, embed_dim=32, num_heads=2, num_blocks=1, input_ff_dim=64,
                      recurrence_dtype="float32")
    return init_tirex_weights(TiRexModel(cfg)).eval()


def sawtooth_domain(n_series=12, length=260, seed=0):
    """A pattern no model has seen: asymmetric sawtooth with period 20, random phase and level."""
    rng = np.random.default_rng(seed)
    t = np.arange(length)
    return [50 + 10 * rng.random() + 8 * (((t + rng.integers(20)) % 20) / 20.0) ** 3 + 0.1 * rng.normal(size=length)
            for _ in range(n_series)]


FAST = dict(max_steps=60, val_every_n_steps=20, batch_size=16, learning_rate=3e-3, progress=False)


@pytest.fixture(scope="module")
def tuned_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ft")
    model = small_model()
    tuned, report = finetune(model, sawtooth_domain(), H, output_dir=out, **FAST)
    return model, tuned, report, out


def test_held_out_error_drops_clearly(tuned_run):
    _, _, report, out = tuned_run
    assert not report.kept_original
    assert report.val_loss_after < 0.6 * report.val_loss_before, str(report)
    assert (report.per_series["after"] < report.per_series["before"]).mean() >= 0.75
    assert (out / "finetune_report.csv").is_file()
    assert "series improved" in str(report)


def test_original_is_untouched_and_saved_model_reloads_identically(tuned_run, tmp_path):
    model, tuned, _, _ = tuned_run
    fresh = small_model()
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), fresh.state_dict().values()))
    tuned.save_pretrained(tmp_path / "m")
    again = load_model(tmp_path / "m")
    x = sawtooth_domain(3, seed=5)
    torch.testing.assert_close(tuned.forecast(x, H)[0], again.forecast(x, H)[0], rtol=0, atol=0)


def test_interrupted_finetune_resumes_to_the_same_result(tmp_path, monkeypatch):
    data = sawtooth_domain(6, seed=1)
    kw = dict(FAST, max_steps=40, val_every_n_steps=10)
    _, full = finetune(small_model(), data, H, output_dir=tmp_path / "a", **kw)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        finetune(small_model(), data, H, output_dir=tmp_path / "b", resume=True, **kw)
    finetune(small_model(), data, H, output_dir=tmp_path / "b", stop_after_step=20, **kw)
    from tirex_pretraining import finetune as ft

    steps, batch = [], ft.WindowSampler.batch
    monkeypatch.setattr(ft.WindowSampler, "batch", lambda self, step: steps.append(step) or batch(self, step))
    _, resumed = finetune(small_model(), data, H, output_dir=tmp_path / "b", resume=True, **kw)
    assert steps[0] == 20 and steps[-1] == 39  # continued where it stopped, did not start over
    assert resumed.steps == full.steps
    assert resumed.val_loss_after == pytest.approx(full.val_loss_after, rel=1e-5)


def test_head_only_mode_changes_only_the_head():
    model = small_model()
    tuned, report = finetune(model, sawtooth_domain(6), H, mode="head", **dict(FAST, max_steps=20))
    changed = {k for k, v in tuned.state_dict().items() if not torch.equal(v, model.state_dict()[k])}
    assert not report.kept_original
    assert changed and all(k.startswith(("head.", "out_norm.")) for k in changed)


def test_dataframe_input(tmp_path):
    rows = [pd.DataFrame({"item_id": f"s{i}", "timestamp": pd.date_range("2020-01-01", periods=len(s), freq="D"),
                          "target": s}) for i, s in enumerate(sawtooth_domain(4))]
    _, report = finetune(small_model(), pd.concat(rows), H, **dict(FAST, max_steps=10, val_every_n_steps=5))
    assert list(report.per_series["item_id"]) == ["s0", "s1", "s2", "s3"]


@pytest.mark.parametrize("data, horizon, kwargs, match", [
    ([np.ones(40)], H, {}, "too little for horizon"),
    ([np.ones(10)], 4, {}, "shorter than one patch"),
    ([np.full(100, np.nan)], H, {}, "all NaN"),
    ([np.r_[np.full(60, np.nan), np.ones(40)]], 40, {}, "no observed values before"),
    ([np.ones(400)], 200, {}, "longer than the model's context"),
    ([np.ones(100)], H, {"mode": "lora-xl"}, "mode must be"),
    ([np.ones(100)], H, {"max_steps": 0}, "max_steps"),
])
def test_bad_data_fails_before_training(data, horizon, kwargs, match):
    with pytest.raises(FinetuneError, match=match):
        finetune(small_model(), data, horizon, progress=False, **kwargs)

"""Pretraining end to end: a tiny model beats Seasonal Naive on held-out series, and a killed run resumes exactly.

The corpus is generated here and written in the Chronos-datasets parquet layout, so these tests
need neither the Hub nor the optional PyPI data packages.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

pytest.importorskip("lightning")

from tirex import load_model  # noqa: E402
from tirex_pretraining import train  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def write_chronos_corpus(path: Path, n_series: int = 240, seed: int = 0) -> Path:
    """Seasonal series with trends, level shifts and noise, as Chronos-datasets parquet."""
    rng = np.random.default_rng(seed)
    freqs = {"h": 24, "D": 7, "MS": 12}
    rows = {"id": [], "timestamp": [], "target": []}
    for i in range(n_series):
        freq, season = list(freqs.items())[i % 3]
        n = int(rng.integers(200, 700))
        t = np.arange(n)
        shape = rng.standard_normal(season)
        shape = np.convolve(np.tile(shape, 3), np.ones(3) / 3, mode="same")[season : 2 * season]
        y = 10 + rng.uniform(-0.02, 0.02) * t + rng.uniform(1, 3) * shape[t % season]
        y += np.cumsum(rng.normal(0, 0.05, n)) + rng.normal(0, rng.uniform(0.2, 0.6), n)
        y *= rng.lognormal(0, 1)
        start = np.datetime64("2020-01-01T00:00")
        step = {"h": np.timedelta64(1, "h"), "D": np.timedelta64(1, "D"), "MS": np.timedelta64(30, "D")}[freq]
        rows["id"].append(f"s{i}")
        rows["timestamp"].append(start + step * t)
        rows["target"].append(y.astype(np.float32))
    table = pa.table({
        "id": rows["id"],
        "timestamp": pa.ListArray.from_arrays(
            np.concatenate([[0], np.cumsum([len(ts) for ts in rows["timestamp"]])]).astype(np.int32),
            pa.array(np.concatenate(rows["timestamp"]).astype("datetime64[ms]")),
        ),
        "target": pa.array([list(map(float, y)) for y in rows["target"]], type=pa.list_(pa.float32())),
    })
    path.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path / "train-00000.parquet")
    return path


def tiny_config(corpus: Path, max_steps: int = 200) -> dict:
    return {
        "seed": 0,
        "model": {"patch_size": 16, "context_length": 128, "embed_dim": 48, "num_heads": 4, "num_blocks": 2,
                  "input_ff_dim": 96, "recurrence_dtype": "float32"},
        "data": {"sources": [{"type": "chronos", "path": str(corpus), "weight": 0.8},
                             {"type": "kernel_synth", "weight": 0.1}, {"type": "tsmixup", "weight": 0.1}],
                 "batch_size": 32, "val_fraction": 0.15, "num_workers": 0},
        "optim": {"lr": 3e-3, "warmup_steps": 10},
        "trainer": {"max_steps": max_steps, "val_every_n_steps": 50, "checkpoint_every_n_steps": 20,
                    "log_every_n_steps": 5, "accelerator": "cpu", "devices": 1, "num_threads": 1,
                    "slstm_backend": "torch"},
    }


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_chronos_corpus(tmp_path_factory.mktemp("chronos") / "synthetic_seasonal")


def losses(run_dir: Path) -> dict[int, float]:
    """Train loss by step; a re-run step (after a resume) overwrites the killed run's value."""
    out = {}
    for line in (run_dir / "losses.jsonl").read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by the kill
            continue
        out[rec["step"]] = rec["loss"]
    return out


def test_tiny_model_beats_seasonal_naive_on_held_out_series(corpus, tmp_path):
    start = time.perf_counter()
    summary = train(tiny_config(corpus, max_steps=200), tmp_path / "run", progress_bar=False)
    elapsed = time.perf_counter() - start
    assert elapsed < 120, f"tiny training took {elapsed:.0f}s"
    history = [json.loads(line) for line in (tmp_path / "run" / "validation.jsonl").read_text().splitlines()]
    first, last = history[0], history[-1]
    assert last["val_loss"] < first["val_loss"]
    assert last["val_loss"] < 0.75 * last["val_seasonal_naive_loss"], history  # measured about 0.56
    # The run's output is a model folder that load_model opens, and it forecasts.
    model = load_model(summary["model_dir"])
    assert model.config.context_length == 128
    q, mean = model.forecast(torch.sin(torch.arange(300.0) / 4).unsqueeze(0), prediction_length=20)
    assert q.shape == (1, 20, 9) and torch.isfinite(q).all()
    assert (tmp_path / "run" / "model_best" / "model.safetensors").is_file()


def test_interrupted_run_resumes_with_the_same_losses(corpus, tmp_path):
    config = tiny_config(corpus, max_steps=60)
    full = train(config, tmp_path / "full", progress_bar=False)
    assert full["global_step"] == 60
    train(config, tmp_path / "cut", stop_after_step=30, progress_bar=False)
    assert max(losses(tmp_path / "cut")) == 30
    resumed = train(config, tmp_path / "cut", resume=True, progress_bar=False)
    assert resumed["global_step"] == 60
    a, b = losses(tmp_path / "full"), losses(tmp_path / "cut")
    assert sorted(a) == sorted(b) == list(range(1, 61))
    np.testing.assert_allclose([b[s] for s in range(31, 61)], [a[s] for s in range(31, 61)], rtol=1e-5, atol=1e-6)
    ma, mb = load_model(full["model_dir"]), load_model(resumed["model_dir"])
    for (k, va), vb in zip(ma.state_dict().items(), mb.state_dict().values()):
        torch.testing.assert_close(va, vb, rtol=1e-4, atol=1e-5, msg=k)


def test_killed_subprocess_loses_only_steps_since_last_checkpoint(corpus, tmp_path):
    import yaml

    config = tiny_config(corpus, max_steps=400)
    config["trainer"]["checkpoint_every_n_steps"] = 10
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(config))
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "tirex_pretraining", "pretrain", "--config", str(cfg_path), "--output-dir", str(run), "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    try:
        deadline = time.time() + 90
        # kill between two checkpoints (at 20 and 30), at a random moment inside a step
        while time.time() < deadline and not ((run / "losses.jsonl").is_file() and max(losses(run)) >= 25):
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    killed_at = max(losses(run))
    assert 20 <= killed_at < 400
    from tirex_pretraining import find_checkpoint

    ckpt = find_checkpoint(run)
    step = torch.load(ckpt, map_location="cpu", weights_only=False)["global_step"]
    assert step >= 20 and killed_at - step < 10 + 5  # lost at most the steps since the last checkpoint (+ in flight)
    before = losses(run)
    out = train(config, run, max_steps=400, resume=True, stop_after_step=step + 10, progress_bar=False)
    after = losses(run)
    assert out["global_step"] == step + 10
    # the steps replayed after the resume reproduce the killed run's losses where it had them
    replayed = [s for s in range(step + 1, min(killed_at, step + 10) + 1)]
    assert replayed
    np.testing.assert_allclose([after[s] for s in replayed], [before[s] for s in replayed], rtol=1e-5, atol=1e-6)


def test_warm_start_continues_from_the_weights_of_an_earlier_run(corpus, tmp_path):
    config = tiny_config(corpus, max_steps=40)
    first = train(config, tmp_path / "first", progress_bar=False)
    first_losses = losses(tmp_path / "first")
    # Our Lightning checkpoint and the run's model folder both work as a starting point.
    for name, source in (("from_ckpt", tmp_path / "first" / "checkpoints" / "last.ckpt"), ("from_folder", first["model_dir"])):
        warm = dict(config, trainer=dict(config["trainer"], max_steps=2, init_from=str(source)))
        train(warm, tmp_path / name, stop_after_step=1, progress_bar=False)
        # The first step of the warm run sees a fresh batch, so compare with the level the first run reached,
        # far below where a fresh initialisation starts.
        assert losses(tmp_path / name)[1] < 0.8 * first_losses[1], (name, losses(tmp_path / name), first_losses[1])
    # The warm-started weights are the first run's weights before any step: a run stopped at step 0 is impossible,
    # so check the loader directly.
    from tirex_pretraining.module import TiRexPretrainModule
    from tirex_pretraining.train import load_initial_weights

    module = TiRexPretrainModule(config)
    load_initial_weights(module, first["model_dir"])
    expected = load_model(first["model_dir"]).state_dict()
    for key, value in module.model.state_dict().items():
        torch.testing.assert_close(value, expected[key], msg=key)


def test_warm_start_from_a_different_architecture_fails_before_training(corpus, tmp_path):
    from tirex_pretraining import ConfigError

    config = tiny_config(corpus, max_steps=10)
    first = train(config, tmp_path / "first", progress_bar=False)
    wider = dict(config, model=dict(config["model"], embed_dim=64),
                 trainer=dict(config["trainer"], init_from=first["model_dir"]))
    with pytest.raises(ConfigError, match="do not fit the model config"):
        train(wider, tmp_path / "wider", progress_bar=False)
    with pytest.raises(ConfigError, match="does not exist"):
        train(dict(config, trainer=dict(config["trainer"], init_from=str(tmp_path / "nope"))), tmp_path / "x",
              progress_bar=False)
    assert not (tmp_path / "x").exists()


def test_export_writes_a_checkpoint_as_a_model_folder(corpus, tmp_path, capsys):
    from tirex_pretraining import ConfigError
    from tirex_pretraining.cli import main
    from tirex_pretraining.train import export_checkpoint

    run = train(tiny_config(corpus, max_steps=12), tmp_path / "run", progress_bar=False)
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert main(["pretrain", "--export", str(last), str(tmp_path / "exported")]) == 0
    assert "exported" in capsys.readouterr().out
    exported, final = load_model(tmp_path / "exported"), load_model(run["model_dir"])
    assert exported.config == final.config
    for key, value in final.state_dict().items():  # the last checkpoint holds the final weights
        torch.testing.assert_close(exported.state_dict()[key], value, msg=key)
    context = torch.linspace(0, 3, 96).sin()
    for ours, theirs in zip(exported.forecast(context, 8), final.forecast(context, 8)):
        np.testing.assert_array_equal(np.asarray(ours), np.asarray(theirs))
    # A file that is not one of our checkpoints is refused with a message, not a KeyError.
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.ckpt")
    with pytest.raises(ConfigError, match="not a checkpoint of `tirex pretrain`"):
        export_checkpoint(tmp_path / "other.ckpt", tmp_path / "x")
    assert main(["pretrain", "--export", str(tmp_path / "missing.ckpt"), str(tmp_path / "y")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_lightning_noise_is_silenced_and_other_warnings_still_show(corpus, tmp_path):
    import warnings

    import yaml

    # In a real process (pytest's own capture hides what Lightning prints): a run, then its resumption.
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_config(corpus, max_steps=8)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "default"}
    printed = ""
    for extra in (["--max-steps", "4"], ["--resume"]):
        done = subprocess.run([sys.executable, "-m", "tirex_pretraining", "pretrain", "--config", str(config),
                               "--output-dir", str(tmp_path / "run"), "--no-progress", *extra],
                              capture_output=True, text=True, env=env, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        printed += done.stdout + done.stderr
    assert "LeafSpec" not in printed and "exists and is not empty" not in printed, printed
    assert "Tip" not in printed and "litlogger" not in printed, printed
    assert "GPU available" in printed  # Lightning's own information stays
    # The filters end with the run: a warning of the caller's own still shows.
    from tirex_pretraining.quiet import quiet_lightning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with quiet_lightning(resuming=True):
            warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated")
        warnings.warn("a warning of the caller's own", UserWarning)
        warnings.warn("Checkpoint directory x exists and is not empty", UserWarning)
    assert [str(w.message) for w in caught] == ["a warning of the caller's own", "Checkpoint directory x exists and is not empty"]

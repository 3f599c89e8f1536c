"""Training on a shared machine: thread defaults, progress bars on stderr, one losses.jsonl row per step (issue 15, item 12)."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

pytest.importorskip("lightning")

import lightning as L  # noqa: E402

from test_pretraining_train import losses, tiny_config, write_chronos_corpus  # noqa: E402
from tirex import ModelConfig, TiRexModel  # noqa: E402
from tirex.cli import main  # noqa: E402
from tirex.cpus import CpuBudget  # noqa: E402
from tirex_pretraining import threads, train  # noqa: E402
from tirex_pretraining.threads import training_threads  # noqa: E402


def test_thread_default_does_not_oversubscribe_a_busy_machine(monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: 16)
    monkeypatch.setattr(threads, "cpu_budget", lambda: CpuBudget(2, 2, None, None))
    assert training_threads() == 1  # small machine: one thread, whatever the load
    assert training_threads(2) == 2  # an explicit request wins
    monkeypatch.setattr(threads, "cpu_budget", lambda: CpuBudget(16, 16, None, None))
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (10.2, 0.0, 0.0))
    assert training_threads() == 5  # 16 CPUs, about 10 busy
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (40.0, 0.0, 0.0))
    assert training_threads() == 1
    assert training_threads(on_cpu=False) == 16  # a GPU run keeps torch's default
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    monkeypatch.setattr(threads, "cpu_budget", lambda: CpuBudget(3, 16, 3.5, "cpu.max"))
    assert training_threads() == 1  # a container of 16 visible cores with a quota of 3.5 CPUs: a small machine
    monkeypatch.setattr(threads, "cpu_budget", lambda: CpuBudget(8, 16, 8.0, "cpu.max"))
    assert training_threads() == 8


class RecordThreads(L.Callback):
    seen: list = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        RecordThreads.seen.append(torch.get_num_threads())


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_chronos_corpus(tmp_path_factory.mktemp("chronos") / "synthetic", n_series=60)


def test_pretraining_uses_the_default_and_journals_each_step_once(corpus, tmp_path, monkeypatch):
    monkeypatch.setattr(threads, "cpu_budget", lambda: CpuBudget(2, 2, None, None))
    import importlib

    train_module = importlib.import_module("tirex_pretraining.train")  # the package exports the function as .train

    original = train_module._callbacks
    monkeypatch.setattr(train_module, "_callbacks", lambda *a: original(*a) + [RecordThreads()])
    config = tiny_config(corpus, max_steps=20)
    config["trainer"]["num_threads"] = None
    config["trainer"]["checkpoint_every_n_steps"] = 5
    RecordThreads.seen.clear()
    summary = train(config, tmp_path / "run", stop_after_step=12, progress_bar=False)
    assert summary["num_threads"] == 1 and set(RecordThreads.seen) == {1}
    # a run killed at step 15 had journalled steps 13-15 after its last checkpoint (10, and 12 at the stop)
    journal = tmp_path / "run" / "losses.jsonl"
    with journal.open("a") as handle:
        for step in (13, 14, 15):
            handle.write(json.dumps({"step": step, "loss": 9.0}) + "\n")
        handle.write('{"step": 16, "lo')  # a line cut short by the kill
    train(config, tmp_path / "run", resume=True, progress_bar=False)
    steps = [json.loads(line)["step"] for line in journal.read_text().splitlines()]
    assert steps == list(range(1, 21))  # every step once, re-done steps not duplicated
    assert all(v != 9.0 for v in losses(tmp_path / "run").values())


def test_finetune_cli_no_progress_and_bars_on_stderr(tmp_path, capfd):
    model_dir = tmp_path / "model"
    TiRexModel(ModelConfig(patch_size=16, context_length=128, embed_dim=16, num_heads=2, num_blocks=1,
                           input_ff_dim=32, recurrence_dtype="float32")).save_pretrained(model_dir)
    t = np.arange(200)
    frame = pd.concat(pd.DataFrame({"item_id": k, "timestamp": pd.date_range("2024-01-01", periods=200, freq="h"),
                                    "target": np.sin(t / (3 + k)) + k}) for k in range(3))
    src = tmp_path / "data.csv"
    frame.to_csv(src, index=False)
    common = ["finetune", str(src), "--horizon", "16", "--model", str(model_dir), "--max-steps", "4",
              "--val-every", "2", "--batch-size", "4"]
    assert main(common + ["--output-dir", str(tmp_path / "a"), "--no-progress"]) == 0
    quiet = capfd.readouterr()
    assert "it/s" not in quiet.err + quiet.out and "Epoch" not in quiet.err + quiet.out
    assert main(common + ["--output-dir", str(tmp_path / "b")]) == 0
    loud = capfd.readouterr()
    assert "Epoch" not in loud.out  # the bar goes to stderr, stdout keeps the report
    assert "fine-tuning (full" in loud.out

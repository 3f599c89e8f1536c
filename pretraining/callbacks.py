"""Callbacks: throughput in the progress bar, a per-step loss journal, the best model folder, a stderr progress bar."""

from __future__ import annotations

import contextlib
import json
import sys
import time
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import TQDMProgressBar

from tirex import TiRexModel


def save_model_folder(trainer: L.Trainer, pl_module, directory: str | Path) -> None:
    """Write the module's model as a ``load_model`` folder; call on every rank (FSDP gathers shards)."""
    state = trainer.strategy.lightning_module_state_dict()
    if not trainer.is_global_zero:
        return
    model = TiRexModel(pl_module.config.model)
    model.load_state_dict({k.removeprefix("model."): v.detach().cpu().float() for k, v in state.items()})
    model.save_pretrained(directory)


class Throughput(L.Callback):
    """Logs series/s, tokens/s and the share of wall time spent waiting for data."""

    def __init__(self, batch_size: int, tokens_per_series: int) -> None:
        self.batch_size = batch_size
        self.tokens = tokens_per_series
        self._last_end = None
        self._start = None
        self.data_time = 0.0
        self.step_time = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        now = time.perf_counter()
        if self._last_end is not None:
            self.data_time += now - self._last_end
        self._start = now

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        now = time.perf_counter()
        wall = now - (self._last_end if self._last_end is not None else self._start)
        self.step_time += now - self._start
        self._last_end = now
        series = self.batch_size * trainer.world_size / max(wall, 1e-9)
        pl_module.log("series_per_s", series, prog_bar=True, on_step=True, logger=True)
        pl_module.log("tokens_per_s", series * self.tokens, prog_bar=False, on_step=True, logger=True)
        if self.step_time > 0:
            pl_module.log("data_wait_share", self.data_time / (self.data_time + self.step_time), on_step=True, logger=True)


class LossJournal(L.Callback):
    """Appends ``{"step", "loss"}`` per optimizer step to a JSON-lines file, flushed at once (survives a kill).

    One row per step: when a run resumes from a checkpoint at step s, the rows after s (steps the
    interrupted run did past its last checkpoint, about to be re-done) are removed first, and with
    gradient accumulation only the micro-batch that completes a step writes.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._last_step = -1

    def on_train_start(self, trainer, pl_module) -> None:
        self._last_step = trainer.global_step
        if not trainer.is_global_zero or not self.path.is_file():
            return
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by a kill
                continue
            if record.get("step", 0) <= trainer.global_step:
                kept.append(line)
        tmp = self.path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        tmp.replace(self.path)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not trainer.is_global_zero or outputs is None or trainer.global_step == self._last_step:
            return
        self._last_step = trainer.global_step
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        with self.path.open("a") as f:
            f.write(json.dumps({"step": trainer.global_step, "loss": float(loss.detach())}) + "\n")


class StderrProgressBar(TQDMProgressBar):
    """Lightning's progress bar on stderr, so that stdout carries only results (the JSON summary, the report)."""

    def init_sanity_tqdm(self):
        with contextlib.redirect_stdout(sys.stderr):
            return super().init_sanity_tqdm()

    def init_train_tqdm(self):
        with contextlib.redirect_stdout(sys.stderr):
            return super().init_train_tqdm()

    def init_validation_tqdm(self):
        with contextlib.redirect_stdout(sys.stderr):
            return super().init_validation_tqdm()

    def init_predict_tqdm(self):
        with contextlib.redirect_stdout(sys.stderr):
            return super().init_predict_tqdm()

    def init_test_tqdm(self):
        with contextlib.redirect_stdout(sys.stderr):
            return super().init_test_tqdm()


class BestModelFolder(L.Callback):
    """Saves ``<dir>/model_best`` (config.json + model.safetensors) whenever ``val_loss`` improves."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.best = float("inf")

    def on_validation_end(self, trainer, pl_module) -> None:
        value = trainer.callback_metrics.get("val_loss")  # synced across ranks, so every rank agrees
        if value is None or trainer.sanity_checking or float(value) >= self.best:
            return
        self.best = float(value)
        save_model_folder(trainer, pl_module, self.directory)
        if trainer.is_global_zero:
            record = {"step": trainer.global_step, "val_loss": self.best}
            ratio = trainer.callback_metrics.get("val_relative_to_seasonal_naive")
            if ratio is not None:
                record["val_relative_to_seasonal_naive"] = float(ratio)
            (self.directory / "val.json").write_text(json.dumps(record) + "\n")

    def state_dict(self):
        return {"best": self.best}

    def load_state_dict(self, state_dict) -> None:
        self.best = state_dict.get("best", float("inf"))


class StopAfter(L.Callback):
    """Stops the run after a given global step (simulates an interruption in tests)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step >= self.step:
            trainer.should_stop = True


class ValidationHistory(L.Callback):
    """Appends every validation result to a JSON-lines file."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        keys = ("val_loss", "val_seasonal_naive_loss", "val_relative_to_seasonal_naive")
        record = {"step": trainer.global_step, "time": time.time()}
        record.update({k: float(trainer.callback_metrics[k]) for k in keys if k in trainer.callback_metrics})
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")

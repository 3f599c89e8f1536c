"""tirex: a fast, open, TiRex-compatible time-series foundation model.

>>> from tirex import load_model
>>> model = load_model()                                  # the bundled default model
>>> quantiles, mean = model.forecast(series, prediction_length=24)

The names below are imported on first use (PEP 562), so that ``import tirex.lite`` - the torch-free
runtime - does not import torch through this package's ``__init__``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "CheckpointError": "config",
    "DEFAULT_QUANTILE_LEVELS": "config",
    "ModelConfig": "config",
    "bundled_model_dir": "config",
    "load_model": "loading",
    "push_to_hub": "loading",
    "save_pretrained": "loading",
    "TiRexModel": "model",
    "InputError": "validation",
    "InputTypeError": "validation",
    "MAX_PREDICTION_LENGTH": "validation",
}

__all__ = [*_EXPORTS, "__version__"]

if TYPE_CHECKING:
    from .config import DEFAULT_QUANTILE_LEVELS, CheckpointError, ModelConfig, bundled_model_dir
    from .loading import load_model, push_to_hub, save_pretrained
    from .model import TiRexModel
    from .validation import MAX_PREDICTION_LENGTH, InputError, InputTypeError


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value  # once
        return value
    if not name.startswith("__"):
        try:  # a submodule not imported yet (tirex.forecast, ...), as after an eager import
            return importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])

"""tirex: a fast, open, TiRex-compatible time-series foundation model.

>>> from tirex import load_model
>>> model = load_model()                                  # the bundled default model
>>> quantiles, mean = model.forecast(series, prediction_length=24)
"""

from .checkpoint import CheckpointError
from .config import DEFAULT_QUANTILE_LEVELS, ModelConfig
from .loading import bundled_model_dir, load_model, push_to_hub, save_pretrained
from .model import TiRexModel
from .validation import MAX_PREDICTION_LENGTH, InputError, InputTypeError

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "DEFAULT_QUANTILE_LEVELS",
    "InputError",
    "InputTypeError",
    "MAX_PREDICTION_LENGTH",
    "ModelConfig",
    "TiRexModel",
    "bundled_model_dir",
    "load_model",
    "push_to_hub",
    "save_pretrained",
    "__version__",
]

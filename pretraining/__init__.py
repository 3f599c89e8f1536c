"""Pretraining on pooled real and synthetic corpora with Lightning (installed as ``tirex_pretraining``).

>>> from tirex_pretraining import train
>>> summary = train("tiny_cpu.yaml", "runs/tiny", max_steps=300)   # returns {"model_dir": ..., "val_loss": ...}
"""

from .config import ConfigError, TrainConfig, load_config
from .datamodule import DataError, PretrainDataModule
from .module import TiRexPretrainModule, init_tirex_weights, pinball_loss
from .train import find_checkpoint, train

__all__ = [
    "ConfigError",
    "DataError",
    "PretrainDataModule",
    "TiRexPretrainModule",
    "TrainConfig",
    "find_checkpoint",
    "init_tirex_weights",
    "load_config",
    "pinball_loss",
    "train",
]

"""Classification training and evaluation: ``vision-mamba train`` / ``vision-mamba eval``."""
from .config import ConfigError, TrainConfig, resolve_config
from .evaluate import evaluate
from .model import EmaWeights, create_classifier
from .trainer import Trainer, TrainResult

__all__ = ["ConfigError", "TrainConfig", "resolve_config", "evaluate", "EmaWeights", "create_classifier",
           "Trainer", "TrainResult"]

"""Training engine: the training loop, evaluation, checkpoints, data-parallel runs."""

from .evaluate import evaluate

__all__ = ["evaluate"]

"""Training engine: the training loop, evaluation, checkpoints, data-parallel runs.

``train(cfg, stage, out_dir, init=None, resume=False)`` pre-trains UP-DETR ('pretrain') or
fine-tunes DETR ('finetune'); ``evaluate(model, loader, coco_gt)`` gives COCO box AP.
"""

from .checkpoint import CheckpointError, atomic_save, check_kind, load_checkpoint
from .evaluate import METRICS, evaluate
from .feature_cache import FeatureCacheError
from .train import NonFiniteLossError, TrainingError, train

__all__ = [
    "METRICS",
    "CheckpointError",
    "FeatureCacheError",
    "NonFiniteLossError",
    "TrainingError",
    "atomic_save",
    "check_kind",
    "evaluate",
    "load_checkpoint",
    "train",
]

"""Training engine: the training loop, evaluation, checkpoints, data-parallel runs.

``train(cfg, stage, out_dir, init=None, resume=False)`` pre-trains UP-DETR ('pretrain') or
fine-tunes DETR ('finetune'); ``evaluate(model, loader, coco_gt)`` gives COCO box AP.

train.py sets a run up and drives loop.py (the epoch loop); step.py is the one optimizer
step (also run by the bench and the demo trainer); train_data.py the loaders;
feature_cache.py the cached CNN maps (cached_datasets.py the datasets over them);
run_state.py, seeding.py and runlock.py what makes a stopped run resume exactly and safely;
checkpoint.py, distributed.py, inference.py.
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

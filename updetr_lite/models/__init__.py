"""DETR and UP-DETR models in plain PyTorch, the Hungarian matcher, the losses and weight
loading. The builders apply `updetr_lite.fastpath` afterwards (``model.fast_path``)."""

from .backbone import Backbone
from .build import (
    build_backbone,
    build_criterion,
    build_detr,
    build_transformer,
    build_updetr,
    cnn_trains,
)
from .criterion import SetCriterion
from .detr import DETR, MLP, Joiner
from .matcher import HungarianMatcher
from .position_encoding import PositionEmbeddingSine
from .transformer import Transformer
from .updetr import UPDETR, group_attention_mask, localize
from .weights import (
    LoadReport,
    WeightsError,
    init_detr_from_pretext,
    load_cnn_weights,
    parameter_counts,
)

__all__ = [
    "Backbone",
    "DETR",
    "HungarianMatcher",
    "Joiner",
    "LoadReport",
    "MLP",
    "PositionEmbeddingSine",
    "SetCriterion",
    "Transformer",
    "UPDETR",
    "WeightsError",
    "build_backbone",
    "build_criterion",
    "build_detr",
    "build_transformer",
    "build_updetr",
    "cnn_trains",
    "group_attention_mask",
    "init_detr_from_pretext",
    "load_cnn_weights",
    "localize",
    "parameter_counts",
]

"""Build the models and losses from a `updetr_lite.config.Config`.

The models are built in plain PyTorch; with ``model.fast_path`` (the default)
`updetr_lite.fastpath.enable` then swaps in the speed switches, state-dict keys unchanged.
"""

from __future__ import annotations

import logging
import os

from .. import fastpath
from ..config import RANDOM_CNN, Config, ConfigError
from .backbone import Backbone
from .criterion import SetCriterion
from .detr import DETR
from .matcher import HungarianMatcher
from .transformer import Transformer
from .updetr import UPDETR
from .weights import load_cnn_weights

log = logging.getLogger(__name__)


def cnn_trains(cfg: Config, stage: str) -> bool:
    """Whether any CNN weight trains in ``stage`` ('pretrain' or 'finetune'): the one rule the
    model builders, the engine, the bench and the feature cache follow.

    Pre-training keeps the paper's frozen CNN unless ``model.frozen_cnn=False`` and
    ``pretrain.lr_backbone > 0``; fine-tuning trains it when ``finetune.lr_backbone > 0``,
    then only DETR's layer2..layer4 (`Backbone`'s ``train_layers_from``). A CNN that does not
    train gets no gradient, no optimizer slot and (fast path) no autograd graph.
    """
    if stage == "pretrain":
        return cfg.pretrain.lr_backbone > 0 and not cfg.model.frozen_cnn
    if stage == "finetune":
        return cfg.finetune.lr_backbone > 0
    raise ValueError(f"stage must be 'pretrain' or 'finetune', not {stage!r}")


def build_backbone(cfg: Config, stage: str = "pretrain") -> Backbone:
    """The plain CNN of cfg.model for ``stage``, frozen unless `cnn_trains`. Loads
    cfg.model.backbone_weights when set (a local file; FileNotFoundError naming it if absent)."""
    cfg.validate()  # unknown backbone, N % M, ... -> ConfigError with a one-line message
    m = cfg.model
    weights = None if m.backbone_weights == RANDOM_CNN else m.backbone_weights
    if weights and not os.path.isfile(weights):
        raise FileNotFoundError(f"model.backbone_weights: no such file: {weights}")
    backbone = Backbone(m.backbone, m.backbone_layer, frozen_cnn=not cnn_trains(cfg, stage))
    if weights:
        # kept on the CNN: the training loop prints it and writes it to log.jsonl
        backbone.weights_report = load_cnn_weights(backbone, weights)
        log.info("%s", backbone.weights_report)
    return backbone


def build_transformer(cfg: Config) -> Transformer:
    m = cfg.model
    return Transformer(
        d_model=m.hidden_dim,
        nhead=m.nheads,
        num_encoder_layers=m.enc_layers,
        num_decoder_layers=m.dec_layers,
        dim_feedforward=m.dim_feedforward,
        dropout=m.dropout,
        normalize_before=m.pre_norm,
        pos_in_values=m.pos_in_values,
        enc_layer_scale=m.enc_layer_scale,
    )


def _fast(model, cfg: Config):
    return fastpath.enable(model, cfg.model.cnn_bf16) if cfg.model.fast_path else model


def build_detr(cfg: Config) -> DETR:
    """The detector, num_classes = cfg.model.num_classes (+ no-object). Its CNN trains per
    `cnn_trains` (cfg, 'finetune'); the fast path is on per cfg.model.fast_path."""
    backbone = build_backbone(cfg, "finetune")
    m = cfg.model
    detr = DETR(backbone, build_transformer(cfg), m.num_classes, m.num_queries, m.aux_loss)
    return _fast(detr, cfg)


def build_updetr(cfg: Config) -> UPDETR:
    """The pretext model (2 classes + no-object). Its CNN trains per `cnn_trains` (cfg,
    'pretrain'); the fast path is on per cfg.model.fast_path."""
    backbone = build_backbone(cfg, "pretrain")
    m, p = cfg.model, cfg.pretext
    updetr = UPDETR(
        backbone,
        build_transformer(cfg),
        num_classes=2,
        num_queries=m.num_queries,
        aux_loss=m.aux_loss,
        num_patches=p.num_patches,
        attention_mask=p.attention_mask,
        query_shuffle=p.query_shuffle,
        patch_dropout=p.patch_dropout,
        patch_feature=p.patch_feature,
        patch_init_gain=p.patch_init_gain,
    )
    return _fast(updetr, cfg)


def build_criterion(cfg: Config, pretext: bool) -> SetCriterion:
    """SetCriterion with cfg.loss weights, the same weights for every aux decoder layer.
    Pretext: 2 classes, reconstruction per cfg.pretext.reconstruction, no-object weight M/N
    when cfg.loss.eos_from_groups (the paper's balance), else cfg.loss.eos_coef."""
    cfg.validate()
    lc, m = cfg.loss, cfg.model
    if lc.eos_coef < 0:
        raise ConfigError(f"loss.eos_coef must be >= 0, not {lc.eos_coef}")
    matcher = HungarianMatcher(lc.cost_class, lc.cost_bbox, lc.cost_giou)
    weights = {"loss_ce": lc.ce, "loss_bbox": lc.bbox, "loss_giou": lc.giou}
    reconstruction = pretext and cfg.pretext.reconstruction
    if reconstruction:
        weights["loss_rec"] = lc.rec
    if m.aux_loss:
        base = dict(weights)
        for i in range(m.dec_layers - 1):
            weights.update({f"{k}_{i}": v for k, v in base.items()})
    if pretext:
        eos = cfg.pretext.num_patches / m.num_queries if lc.eos_from_groups else lc.eos_coef
        num_classes = 2
    else:
        eos, num_classes = lc.eos_coef, m.num_classes
    return SetCriterion(num_classes, matcher, weights, eos, reconstruction)

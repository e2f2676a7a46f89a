"""Build the models and losses from a `updetr_lite.config.Config`."""

from __future__ import annotations

import logging
import os

from ..config import RANDOM_CNN, Config, ConfigError
from .backbone import Backbone
from .criterion import SetCriterion
from .detr import DETR
from .matcher import HungarianMatcher
from .transformer import Transformer
from .updetr import UPDETR
from .weights import load_cnn_weights

log = logging.getLogger(__name__)


def build_backbone(cfg: Config, frozen: bool | None = None) -> Backbone:
    """The CNN of cfg.model; ``frozen`` defaults to cfg.model.frozen_cnn. Loads
    cfg.model.backbone_weights when set (a local file; FileNotFoundError naming it if absent)."""
    cfg.validate()  # unknown backbone, N % M, ... -> ConfigError with a one-line message
    m = cfg.model
    weights = None if m.backbone_weights == RANDOM_CNN else m.backbone_weights
    if weights and not os.path.isfile(weights):
        raise FileNotFoundError(f"model.backbone_weights: no such file: {weights}")
    frozen = m.frozen_cnn if frozen is None else frozen
    backbone = Backbone(m.backbone, m.backbone_layer, frozen, fast=m.fast_path)
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
        fast=m.fast_path,
        enc_layer_scale=m.enc_layer_scale,
    )


def build_detr(cfg: Config) -> DETR:
    """The detector, num_classes = cfg.model.num_classes (+ no-object). Its CNN is frozen (no
    gradient, no graph) when cfg.finetune.lr_backbone == 0, else layer2..layer4 train."""
    backbone = build_backbone(cfg, frozen=cfg.finetune.lr_backbone == 0)
    m = cfg.model
    return DETR(backbone, build_transformer(cfg), m.num_classes, m.num_queries, m.aux_loss)


def build_updetr(cfg: Config) -> UPDETR:
    """The pretext model (2 classes + no-object). Its CNN is frozen when cfg.model.frozen_cnn
    or cfg.pretrain.lr_backbone == 0 (a CNN that never steps need not build a graph)."""
    frozen = cfg.model.frozen_cnn or cfg.pretrain.lr_backbone == 0
    backbone = build_backbone(cfg, frozen=frozen)
    m, p = cfg.model, cfg.pretext
    return UPDETR(
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

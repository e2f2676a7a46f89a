"""Loading a model for inference from a checkpoint file: this kit's (``kind``, ``config``,
``model``; engine/checkpoint.py) or the authors' DETR / UP-DETR releases (``{'model':
state_dict}`` with their key names), whose settings are read from the tensor shapes on top
of a preset (default ``paper``)::

    model, cfg = load_model("runs/ft/best.pth")                   # DETR, eval mode
    model, cfg = load_model("runs/pre/last.pth", kind="pretext")  # UP-DETR pretext model
"""

from __future__ import annotations

import dataclasses
import os

import torch
from torch import nn

from ..config import Config, get_config
from ..models.weights import kit_names
from .checkpoint import (
    CheckpointError,
    check_finite_state,
    check_kind,
    infer_kind,
    load_checkpoint,
    model_state,
)

RESNET_BY_BLOCKS = {  # (bottleneck blocks?, blocks in layer3) -> torchvision ResNet
    (False, 2): "resnet18",
    (False, 6): "resnet34",
    (True, 6): "resnet50",
    (True, 23): "resnet101",
}


def config_from_state(state: dict, base: Config) -> Config:
    """``base`` with the model settings that the tensor shapes of a DETR / UP-DETR state dict
    (kit key names) fix: CNN, width, N, layer counts, FFN width, pre-/post-norm, classes.
    LayerScale on the encoder blocks from its gains' presence. Not in the shapes: nheads, M (kept from ``base``; M falls back to 1 if it does not
    divide N) and the patch feature (the authors' release: 'crop')."""
    prefix = "backbone.0.body."
    if "query_embed.weight" not in state or "class_embed.weight" not in state:
        raise CheckpointError("not a DETR / UP-DETR state dict: no query_embed / class_embed")
    n, d = state["query_embed.weight"].shape
    bottleneck = any(k.startswith(prefix + "layer1.0.conv3.") for k in state)
    blocks3 = len({k.split(".")[4] for k in state if k.startswith(prefix + "layer3.")})
    backbone = RESNET_BY_BLOCKS.get((bottleneck, blocks3))
    if backbone is None:
        raise CheckpointError(f"cannot tell the ResNet of the checkpoint ({blocks3} layer3 blocks)")

    def layers(part: str) -> int:
        return len({k.split(".")[3] for k in state if k.startswith(f"transformer.{part}.layers.")})

    enc = layers("encoder")
    ffn_key = "transformer.decoder.layers.0.linear1.weight"
    nheads = base.model.nheads if d % base.model.nheads == 0 else 1
    model = dataclasses.replace(
        base.model,
        backbone=backbone,
        backbone_layer="layer4"
        if any(k.startswith(prefix + "layer4.") for k in state)
        else "layer3",
        backbone_weights=None,
        hidden_dim=int(d),
        nheads=nheads,
        enc_layers=enc,
        dec_layers=layers("decoder"),
        dim_feedforward=int(state[ffn_key].shape[0])
        if ffn_key in state
        else base.model.dim_feedforward,
        # DETR keeps a final encoder norm only with pre-norm
        pre_norm="transformer.encoder.norm.weight" in state,
        # LayerScale gains exist only when it is on (their starting value does not matter here)
        enc_layer_scale=(base.model.enc_layer_scale or 0.1)
        if "transformer.encoder.layers.0.gamma1" in state
        else 0.0,
        num_queries=int(n),
    )
    kind = "pretext" if any(k.startswith("patch_proj.") for k in state) else "detection"
    if kind == "detection":
        model = dataclasses.replace(
            model, num_classes=int(state["class_embed.weight"].shape[0]) - 1
        )
    m = base.pretext.num_patches if n % base.pretext.num_patches == 0 else 1
    pretext = dataclasses.replace(base.pretext, num_patches=m)
    if kind == "pretext":
        pretext = dataclasses.replace(pretext, patch_feature="crop")
    return dataclasses.replace(base, model=model, pretext=pretext).validate()


def read_checkpoint(
    path: str | os.PathLike, preset: str | None = None, overrides: list[str] | None = None
) -> tuple[str, Config, dict]:
    """(kind, Config, state dict in kit key names) of a checkpoint file.

    A kit checkpoint brings its own configuration (``overrides`` apply on top, e.g. a data
    path); any other file's settings come from its shapes over ``preset`` (default
    'paper') with ``overrides``."""
    ckpt = load_checkpoint(path)
    state = kit_names(model_state(ckpt))  # the authors' UP-DETR names -> the kit's
    if isinstance(ckpt.get("config"), dict):
        cfg = Config.from_dict(ckpt["config"]).override(list(overrides or []))
    else:
        base = get_config(preset or "paper", list(overrides or []))
        m = getattr(ckpt.get("args"), "num_patches", None)  # the authors' argparse Namespace
        if (
            isinstance(m, int)
            and m > 0
            and not any(o.startswith("pretext.num_patches") for o in overrides or [])
        ):
            base = dataclasses.replace(
                base, pretext=dataclasses.replace(base.pretext, num_patches=m)
            )
        cfg = config_from_state(state, base)
    info = {k: ckpt[k] for k in ("kind", "num_classes") if k in ckpt}
    kind, _ = infer_kind({**info, "model": state})
    return kind, cfg, state


def load_model(
    checkpoint_path: str | os.PathLike,
    kind: str | None = None,
    device: str | torch.device = "cpu",
    preset: str | None = None,
    overrides: list[str] | None = None,
) -> tuple[nn.Module, Config]:
    """(model in eval mode on ``device``, its Config) from a checkpoint.

    kind: 'pretext' (UPDETR) or 'detection' (DETR) required, or None for whatever the file
    holds. A file of another kind, or a detector whose class count differs from
    ``model.num_classes`` (after ``overrides``), raises CheckpointError naming the file."""
    from ..models import build_detr, build_updetr

    found, cfg, state = read_checkpoint(checkpoint_path, preset, overrides)
    kind = kind or found
    if kind not in ("pretext", "detection"):
        raise ValueError(f"kind must be 'pretext' or 'detection', not {kind!r}")
    if found != kind:
        what = "localization" if kind == "pretext" else "detection"
        raise CheckpointError(
            f"checkpoint {checkpoint_path} holds a {found} model, but {what} needs a {kind} "
            f"model ({'UP-DETR pre-training' if kind == 'pretext' else 'DETR fine-tuning'})"
        )
    classes = cfg.model.num_classes if kind == "detection" else None
    check_kind(
        {"model": state, "kind": found, "num_classes": _classes(state)},
        kind,
        classes,
        checkpoint_path,
    )
    check_finite_state(state, checkpoint_path)
    # the CNN's weights are in the state dict; the file the run started from is not needed
    build_cfg = dataclasses.replace(
        cfg, model=dataclasses.replace(cfg.model, backbone_weights=None)
    )
    model = build_updetr(build_cfg) if kind == "pretext" else build_detr(build_cfg)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {checkpoint_path} does not fit the {kind} model of its settings: "
            f"missing {missing[:3]} ({len(missing)}), unexpected {unexpected[:3]} ({len(unexpected)})"
        )
    return model.to(device).eval(), cfg


def _classes(state: dict) -> int:
    return int(state["class_embed.weight"].shape[0]) - 1

"""Inference on single images: detection (``predict``) and one-shot patch localization.

What ``updetr-lite predict`` and ``updetr-lite localize`` run, as library functions for
notebooks::

    model, cfg = load_model("runs/ft/best.pth")               # DETR, eval mode
    det = predict_image(model, cfg, "img.jpg", threshold=0.5)  # boxes [n, 4] pixel xyxy
    model, cfg = load_model("runs/pre/last.pth", kind="pretext")
    localize_patches(model, cfg, "img.jpg", boxes=[[10, 20, 60, 90]])  # [{box, score, ...}]

Checkpoints: this kit's (``kind``, ``config``, ``model``; engine/checkpoint.py) or the
authors' DETR / UP-DETR releases (``{'model': state_dict}`` with their key names): their
settings are read from the tensor shapes on top of a preset (default ``paper``).

Image sizes: detection images are resized as DETR evaluates (shortest side
``data.test_size``, longest at most ``data.max_size``); localization images as in
pre-training (shortest side ``max(data.pretext_scales)``, longest at most
``data.pretext_max_size``). The image is never padded, so the models' normalised cxcywh
boxes are relative to the whole image and map back to pixel xyxy of the original file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torchvision.ops import box_convert
from torchvision.transforms.v2 import functional as TF

from ..config import Config, get_config
from ..data.images import as_uint8_image, normalize
from ..data.query_patches import crop_patches, patch_augmentation
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


class InferenceError(ValueError):
    """An input that inference cannot use (image, patch, box, model); one line for the user."""


# --------------------------------------------------------------------------- checkpoints


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


# --------------------------------------------------------------------------- images


def load_image(image) -> np.ndarray:
    """HxWx3 uint8 RGB from a path, a PIL image, an HxW(x3/4) array (``as_uint8_image``) or a
    [3, H, W] uint8 tensor. 16-bit grey files are scaled to 8 bits. An image with a side
    under 2 px, a folder or an unreadable file is an InferenceError naming it."""
    from PIL import Image

    from ..data.pretext import UnreadableImageError, load_rgb, to_rgb

    name = "image"
    if isinstance(image, (str, os.PathLike)):
        p = Path(image).expanduser()
        name = str(p)
        if p.is_dir():
            raise InferenceError(f"{p} is a folder, not an image file")
        if not p.is_file():
            raise FileNotFoundError(f"image file not found: {p}")
        try:
            image = load_rgb(p)
        except UnreadableImageError as e:
            raise InferenceError(f"{p}: not a readable image file ({e.__cause__ or e})") from e
    if isinstance(image, Image.Image):
        image = np.array(to_rgb(image))  # a writable copy
    if isinstance(image, torch.Tensor):
        t = image.detach().cpu()
        if t.ndim != 3 or t.shape[0] != 3:
            raise InferenceError(f"expected an image tensor [3, H, W], got {tuple(t.shape)}")
        image = t.permute(1, 2, 0).numpy()
    a = as_uint8_image(image)
    if min(a.shape[:2]) < 2:
        raise InferenceError(f"{name}: {a.shape[1]}x{a.shape[0]} px is too small (sides >= 2 px)")
    return a


def resized_hw(h: int, w: int, size: int, max_size: int) -> tuple[int, int]:
    """DETR's resize: shortest side ``size`` unless the longest would exceed ``max_size``."""
    scale = min(size / min(h, w), max_size / max(h, w))
    return max(1, round(h * scale)), max(1, round(w * scale))


def eval_input(image: np.ndarray, size: int, max_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """HxWx3 uint8 -> (images [1, 3, h, w] normalised, mask [1, h, w] all False: no padding)."""
    t = torch.from_numpy(image).permute(2, 0, 1)
    h, w = resized_hw(t.shape[1], t.shape[2], size, max_size)
    t = TF.resize(t, [h, w], antialias=True)
    return normalize(t)[None], torch.zeros(1, h, w, dtype=torch.bool)


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


# --------------------------------------------------------------------------- detection


@torch.no_grad()
def predict_image(model: nn.Module, cfg: Config, image, threshold: float = 0.0) -> dict:
    """Detections of a DETR on one image.

    -> dict(boxes [n, 4] pixel xyxy of the original image, scores [n] (largest class
    probability, no-object excluded), labels [n] int64 category ids), sorted by score, only
    queries with score >= ``threshold`` (0: all N)."""
    from .evaluate import postprocess

    if getattr(model, "num_patches", None) is not None:
        raise InferenceError("predict needs a detection (DETR) model, this is a pretext model")
    img = load_image(image)
    h, w = img.shape[:2]
    images, mask = eval_input(img, cfg.data.test_size, cfg.data.max_size)
    model.eval()
    dev = _device(model)
    outputs = model(images.to(dev), mask.to(dev))
    det = postprocess(outputs, torch.tensor([[h, w]], device=dev))[0]
    if not (torch.isfinite(det["boxes"]).all() and torch.isfinite(det["scores"]).all()):
        where = f" on {image}" if isinstance(image, (str, os.PathLike)) else ""
        raise InferenceError(f"the model predicts NaN or inf boxes or scores{where}")
    keep = det["scores"] >= threshold
    order = det["scores"][keep].argsort(descending=True)
    return {k: v[keep][order].cpu() for k, v in det.items()}


# --------------------------------------------------------------------------- localization


def parse_box(text: str) -> list[float]:
    """'x0,y0,x1,y1' (pixels) -> [x0, y0, x1, y1]."""
    parts = [p for p in text.replace(" ", "").split(",") if p]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        values = []
    if len(values) != 4:
        raise InferenceError(f"box {text!r}: expected four pixel numbers x0,y0,x1,y1")
    return values


def check_boxes(boxes, h: int, w: int) -> torch.Tensor:
    """Pixel xyxy boxes [k, 4] that lie inside an h x w image with sides of at least 2 px."""
    b = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    for x0, y0, x1, y1 in b.tolist():
        if not (0 <= x0 and 0 <= y0 and x1 <= w and y1 <= h and x1 - x0 >= 2 and y1 - y0 >= 2):
            raise InferenceError(
                f"query box {x0:g},{y0:g},{x1:g},{y1:g} is not inside the {w}x{h} image "
                f"with sides of at least 2 px"
            )
    return b


@torch.no_grad()
def localize_patches(
    model: nn.Module,
    cfg: Config,
    image,
    patches=None,
    boxes=None,
    augment: bool = False,
    seed: int | None = None,
) -> list[dict]:
    """One-shot localization (the paper's Figure 5): where in ``image`` is each query patch?

    image: a path, PIL image or array. Query patches, k <= M of them, either
      patches: images (paths, PIL, arrays) of any size, resized to ``pretext.patch_size``, or
      boxes: pixel xyxy boxes [k, 4] on ``image``, cut out of it.
    augment: colour-augment the patches exactly as in pre-training
      (``data.query_patches.patch_augmentation``; ``seed`` makes it repeatable).

    The pretext model runs in eval mode (no query shuffle, no patch dropout) with the first
    k*N/M object queries and the matching block of the group mask; of each group of N/M
    queries the most confident one (probability of the query-patch class) is kept.
    Patch features: a 'crop' model runs its CNN on each resized patch; a 'roi' model pools
    the image's feature map over each box, and for a patch file the feature map of the
    resized patch over its whole extent.

    -> one dict per patch: box (pixel xyxy on the original image), score in [0, 1], query
    (index), and query_box (pixel xyxy) when given by box.
    """
    num_patches = getattr(model, "num_patches", None)
    if num_patches is None:
        raise InferenceError("localize needs a pretext (UP-DETR) model, this is a detection model")
    if (patches is None) == (boxes is None):
        raise InferenceError("localize needs query patches: either patch images or boxes, not both")
    img = load_image(image)
    h, w = img.shape[:2]
    if boxes is not None:
        query_boxes = check_boxes(boxes, h, w)
        k = len(query_boxes)
    else:
        patch_imgs = [load_image(p) for p in patches]
        k = len(patch_imgs)
    if k == 0:
        raise InferenceError("localize needs at least one query patch")
    if k > num_patches:
        raise InferenceError(
            f"{k} query patches, but the model has M={num_patches} query patch groups "
            f"(at most {num_patches} patches per image)"
        )
    model.eval()
    dev = _device(model)
    p = cfg.pretext.patch_size
    images, mask = eval_input(img, max(cfg.data.pretext_scales), cfg.data.pretext_max_size)
    images, mask = images.to(dev), mask.to(dev)
    features, fmask = model.backbone(images, mask)
    rng = torch.random.fork_rng(devices=[]) if seed is not None else contextlib.nullcontext()
    with rng:
        if seed is not None:
            torch.manual_seed(seed)
        aug = patch_augmentation() if augment else None
        if boxes is not None:
            patch_feature = _box_features(
                model, img, query_boxes, images, features, fmask, p, aug, dev
            )
        else:
            patch_feature = _file_features(model, patch_imgs, p, aug, dev)
    out = model.forward_features(features, fmask, patch_feature=patch_feature[None])
    best, scores = model.localize(out)
    scale = torch.tensor([w, h, w, h], dtype=torch.float32)
    xyxy = box_convert(best[0].float().cpu(), "cxcywh", "xyxy") * scale
    result = []
    for i in range(k):
        r = {"query": i, "box": xyxy[i].tolist(), "score": float(scores[0, i])}
        if boxes is not None:
            r["query_box"] = query_boxes[i].tolist()
        result.append(r)
    return result


def _box_features(model, img, query_boxes, images, features, fmask, p, aug, dev) -> torch.Tensor:
    """[k, C] patch features of pixel xyxy boxes on the image (``images`` [1, 3, h', w'] is
    the resized model input, ``features``/``fmask`` its CNN output)."""
    h, w = img.shape[:2]
    t = torch.from_numpy(img).permute(2, 0, 1)
    if model.patch_feature == "crop":
        crops = normalize(crop_patches(t, query_boxes, p, aug))
        return model.backbone.patch_feature(crops.to(dev))
    scale = torch.tensor([w, h, w, h], dtype=torch.float32)
    cxcywh = box_convert(query_boxes / scale, "xyxy", "cxcywh")[None].to(dev)
    if aug is not None:  # pool from an augmented copy; the decoder still sees the clean image
        aug_in = normalize(TF.resize(aug(t), list(images.shape[-2:]), antialias=True))[None]
        in_mask = torch.zeros(1, *images.shape[-2:], dtype=torch.bool, device=dev)
        features, fmask = model.backbone(aug_in.to(dev), in_mask)
    return model.roi_patch_feature(features, fmask, cxcywh)[0]


def _file_features(model, patch_imgs, p, aug, dev) -> torch.Tensor:
    """[k, C] patch features of patch images."""
    crops = torch.cat(
        [
            crop_patches(
                torch.from_numpy(a).permute(2, 0, 1), [[0, 0, a.shape[1], a.shape[0]]], p, aug
            )
            for a in patch_imgs
        ]
    )
    crops = normalize(crops).to(dev)
    if model.patch_feature == "crop":
        return model.backbone.patch_feature(crops)
    # roi model: pool each patch's own feature map over its whole extent
    k = len(crops)
    fmaps, fmask = model.backbone(crops, torch.zeros(k, p, p, dtype=torch.bool, device=dev))
    whole = torch.tensor([0.5, 0.5, 1.0, 1.0], device=dev).expand(k, 1, 4)
    return model.roi_patch_feature(fmaps, fmask, whole)[:, 0]

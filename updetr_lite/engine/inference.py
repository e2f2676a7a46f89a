"""Inference on single images: detection (``predict``) and one-shot patch localization.

What ``updetr-lite predict`` and ``updetr-lite localize`` run, as library functions for
notebooks::

    model, cfg = load_model("runs/ft/best.pth")               # engine/loading.py
    det = predict_image(model, cfg, "img.jpg", threshold=0.5)  # boxes [n, 4] pixel xyxy
    model, cfg = load_model("runs/pre/last.pth", kind="pretext")
    localize_patches(model, cfg, "img.jpg", boxes=[[10, 20, 60, 90]])  # [{box, score, ...}]

Checkpoints (this kit's or the authors' releases) are read by engine/loading.py.

Image sizes: detection images are resized as DETR evaluates (shortest side
``data.test_size``, longest at most ``data.max_size``); localization images as in
pre-training (shortest side ``max(data.pretext_scales)``, longest at most
``data.pretext_max_size``). The image is never padded, so the models' normalised cxcywh
boxes are relative to the whole image and map back to pixel xyxy of the original file.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torchvision.ops import box_convert
from torchvision.transforms.v2 import functional as TF

from ..config import Config
from ..data.images import as_uint8_image, normalize
from ..data.query_patches import crop_patches, patch_augmentation


class InferenceError(ValueError):
    """An input that inference cannot use (image, patch, box, model); one line for the user."""


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
    # a read-only array (np.asarray of a PIL image) is copied: torch warns on those
    t = torch.from_numpy(np.require(image, requirements="W")).permute(2, 0, 1)
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

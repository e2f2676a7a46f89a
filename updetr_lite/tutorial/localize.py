"""The demo's images, query patches and predictions (notebooks 01-06): pixel ``xyxy`` boxes in
and out, with or without the SimCLR-style augmentation of the patches.

- ``read_image``, ``prepare_image``, ``query_patches``, ``augment_image``: an image file or
  upload, the model's input, the cropped (and augmented) query patches;
- ``localize_patches_in_image``: one prediction (the work is done by ``engine.inference``;
  this module adds the IoU with each query patch);
- ``demo_photos``: the embedded photos the demo shows and trains on;
- ``training_patches_check``: the IoU on seeded patches of the photos (the shipped
  checkpoint's record, notebook 06);
- ``held_out_images``, ``fixed_box_ious``: scenes no demo checkpoint trained on, and the IoU
  that one fixed box scores on the same patches (what "finds its patch" must beat);
  ``held_out_check``: both means for one model (notebooks 04 and 06).

Patch features: a checkpoint with ``patch_feature='crop'`` (the paper, the authors' release)
runs the CNN on the resized crop; one with ``'roi'`` (the lite setting) pools the CNN feature
map of the image over the patch box. With augmentation on, the roi patch feature is pooled
from an augmented copy of the whole image while the decoder still looks at the clean image.
"""

from __future__ import annotations

import io
import random
from pathlib import Path

import numpy as np
import torch
from torchvision.ops import box_iou

from ..config import Config
from ..data.images import as_uint8_image, normalize
from ..data.query_patches import crop_patches, patch_augmentation


class DemoError(ValueError):
    """A demo input that cannot work (image file, box, checkpoint); one-line message."""


# ---------------------------------------------------------------- images and query patches


def read_image(source) -> np.ndarray:
    """An image file (path) or its bytes (an upload) -> HxWx3 uint8."""
    from PIL import Image, UnidentifiedImageError

    try:
        if isinstance(source, (bytes, bytearray, memoryview)):
            img = Image.open(io.BytesIO(bytes(source)))
        else:
            p = Path(source).expanduser()
            if not p.is_file():
                raise FileNotFoundError(f"image file not found: {p}")
            img = Image.open(p)
        # np.array, not np.asarray: PIL's buffer is read-only, and torch.from_numpy on it
        # warns "The given NumPy array is not writable" in every cell that uses the image
        return as_uint8_image(np.array(img.convert("RGB")))
    except UnidentifiedImageError as e:
        raise DemoError(
            f"not an image file: {source if isinstance(source, str) else 'upload'}"
        ) from e


def prepare_image(image: np.ndarray, size: int, max_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """HxWx3 uint8 -> (images [1, 3, H', W'] normalised, mask [1, H', W'] all False), resized
    as the pretext model sees it (``engine.inference.eval_input``)."""
    from ..engine.inference import eval_input

    return eval_input(as_uint8_image(image), size, max_size)


def check_boxes(boxes_xyxy, size: tuple[int, int]) -> torch.Tensor:
    """Pixel xyxy boxes [k, 4] inside an image of size (h, w), each at least 2 px a side
    (``engine.inference.check_boxes``; an empty list is an error too)."""
    from ..engine.inference import check_boxes as _check

    b = torch.as_tensor(boxes_xyxy, dtype=torch.float32).reshape(-1, 4)
    if len(b) == 0:
        raise DemoError("no query patch given: need at least one box x0, y0, x1, y1")
    return _check(b, *size)


def clip_boxes(boxes_xyxy: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Pixel xyxy boxes [k, 4] clipped to an image of size (h, w): a predicted cxcywh box
    can reach past the border, and the picture should not draw outside the image."""
    h, w = size
    b = boxes_xyxy.clone()
    b[:, 0::2] = b[:, 0::2].clamp(0, w)
    b[:, 1::2] = b[:, 1::2].clamp(0, h)
    return b


def query_patches(image: np.ndarray, boxes_xyxy, patch_size: int, augment: bool = False):
    """Crop pixel xyxy boxes from the full-resolution image, resize to patch_size, optionally
    augment as in pre-training -> [k, 3, p, p] normalised (what a 'crop' model receives)."""
    img = torch.from_numpy(as_uint8_image(image)).permute(2, 0, 1)
    boxes = check_boxes(boxes_xyxy, img.shape[1:])
    return normalize(
        crop_patches(img, boxes, patch_size, patch_augmentation() if augment else None)
    )


def augment_image(image: np.ndarray, generator_seed: int | None = None) -> np.ndarray:
    """The patch augmentation applied to the whole image (roi models take their patch feature
    from this copy when augmentation is on)."""
    if generator_seed is not None:
        torch.manual_seed(generator_seed)
    t = torch.from_numpy(as_uint8_image(image)).permute(2, 0, 1)
    return patch_augmentation()(t).permute(1, 2, 0).numpy()


# ---------------------------------------------------------------- prediction


def localize_patches_in_image(
    model, cfg: Config, image: np.ndarray, boxes_xyxy, augment: bool = False, seed: int = 0
) -> dict:
    """Where does the model find each query patch? (``engine.inference.localize_patches``)

    image HxWx3 uint8, boxes_xyxy [k, 4] pixels (k <= M) -> dict(boxes [k, 4] xyxy pixels of
    the image, scores [k] probability of the query-patch class, query_boxes [k, 4] the input,
    iou [k] between each prediction and its own query patch box)."""
    from ..engine.inference import localize_patches

    image = as_uint8_image(image)
    boxes = check_boxes(boxes_xyxy, image.shape[:2])
    found = localize_patches(model, cfg, image, boxes=boxes, augment=augment, seed=seed)
    pred = clip_boxes(torch.tensor([r["box"] for r in found], dtype=torch.float32), image.shape[:2])
    return {
        "boxes": pred,
        "scores": torch.tensor([r["score"] for r in found]),
        "query_boxes": boxes,
        "iou": box_iou(pred, boxes).diagonal(),
    }


def demo_photos(smoke: bool = False) -> dict[str, np.ndarray]:
    """The demo's images: the embedded photos (``updetr_lite.data.photos``), HxWx3 uint8."""
    from ..data.photos import load_photos

    photos = {k: as_uint8_image(v) for k, v in load_photos().items()}
    if smoke:
        photos = dict(list(photos.items())[:1])
    return photos


def training_image_patch_check(
    model, cfg: Config, image: np.ndarray, box_xyxy, augment: bool = False
) -> float:
    """IoU of the model's box for one query patch cut from ``image`` at ``box_xyxy``."""
    return float(localize_patches_in_image(model, cfg, image, [box_xyxy], augment)["iou"][0])


def training_patch_boxes(image: np.ndarray, k: int, seed: int = 0) -> list[list[float]]:
    """k query patches [x0, y0, x1, y1] (pixels) cut from ``image`` at seeded random places,
    sides 25-60 % of the image's: what the demo's check asks the model to find."""
    rng = random.Random(seed)
    h, w = image.shape[:2]
    out = []
    for _ in range(k):
        bw, bh = rng.uniform(0.25, 0.6) * w, rng.uniform(0.25, 0.6) * h
        x0, y0 = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
        out.append([x0, y0, x0 + bw, y0 + bh])
    return out


def training_patches_check(
    model, cfg: Config, photos: dict[str, np.ndarray], per_image: int = 4, seed: int = 0
) -> list[float]:
    """IoU of the model's box with each of ``per_image`` seeded patches cut from every photo
    (one patch at a time: no other group to help or hurt)."""
    ious = []
    for i, image in enumerate(photos.values()):
        for box in training_patch_boxes(image, per_image, seed + i):
            ious.append(training_image_patch_check(model, cfg, image, box))
    return ious


# Embedded-generator seed of the held-out scenes: not the embedded data's (seed 0, what a
# lite pre-training sees) nor the lite CNN's set (1000).
HELD_OUT_SEED = 7919


def held_out_images(n: int = 6, size: int = 128, seed: int = HELD_OUT_SEED) -> dict:
    """``n`` scenes of the embedded generator (shapes on textured and photo backgrounds) that
    neither the shipped checkpoint (trained on the demo photos) nor a lite pre-training (the
    embedded data of seed 0) saw: name -> HxWx3 uint8, ``size`` px square."""
    from ..data.embedded import draw_image

    return {f"held-out {i}": np.array(draw_image(seed, "val", i, size)[0]) for i in range(n)}


def fixed_box_ious(photos: dict[str, np.ndarray], per_image: int = 4, seed: int = 0) -> list:
    """The baseline of ``training_patches_check`` on the same patches: the IoU of one box that
    ignores the patch (the mean patch size, centred in its image) with each patch's box."""
    boxes = [
        (image.shape[:2], box)
        for i, image in enumerate(photos.values())
        for box in training_patch_boxes(image, per_image, seed + i)
    ]
    rel = torch.tensor([[b[2] - b[0], b[3] - b[1]] for _, b in boxes]) / torch.tensor(
        [[w, h] for (h, w), _ in boxes], dtype=torch.float32
    )
    mw, mh = rel.mean(0).tolist()
    ious = []
    for (h, w), box in boxes:
        fixed = [(0.5 - mw / 2) * w, (0.5 - mh / 2) * h, (0.5 + mw / 2) * w, (0.5 + mh / 2) * h]
        ious.append(float(box_iou(torch.tensor([fixed]), torch.tensor([box]))[0, 0]))
    return ious


def held_out_check(model, cfg: Config, images: dict[str, np.ndarray], per_image: int = 4) -> dict:
    """Mean IoU of the model's box with each of ``per_image`` seeded patches of every image
    (``training_patches_check``), beside the mean of one fixed box on the same patches
    (``fixed_box_ious``): {'mean_iou', 'fixed_box_iou', 'patches'}."""
    ious = training_patches_check(model, cfg, images, per_image)
    fixed = fixed_box_ious(images, per_image)
    return {
        "mean_iou": sum(ious) / len(ious),
        "fixed_box_iou": sum(fixed) / len(fixed),
        "patches": len(ious),
    }

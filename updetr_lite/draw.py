"""Boxes with labels on an image, saved as PNG (PIL only: no display, no matplotlib state).

Boxes are pixel ``xyxy`` on the image passed in. Used by ``updetr-lite predict`` and
``updetr-lite localize`` and handy in notebooks (``draw_boxes`` returns a PIL image).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

# tab10, as 0-255 RGB: distinct colours for up to 10 classes / query patches
PALETTE = (
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
)


def to_pil(image) -> Image.Image:
    """A PIL image from a PIL image, an HxWx3 uint8/float array or a [3, H, W] uint8 tensor."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu()
        if image.ndim == 3 and image.shape[0] in (1, 3):
            image = image.permute(1, 2, 0)
        image = image.numpy()
    a = np.asarray(image)
    if a.dtype != np.uint8:
        a = (np.clip(a.astype(np.float32), 0.0, 1.0) * 255).round().astype(np.uint8)
    if a.ndim == 2:
        a = np.stack([a] * 3, -1)
    if a.ndim != 3 or a.shape[-1] not in (1, 3, 4):
        raise ValueError(f"expected an image HxWx3, got an array of shape {a.shape}")
    return Image.fromarray(a[..., :3] if a.shape[-1] != 1 else a[..., 0]).convert("RGB")


def color(i: int) -> tuple[int, int, int]:
    return PALETTE[int(i) % len(PALETTE)]


def _dashed_rectangle(draw: ImageDraw.ImageDraw, box, fill, width: int, dash: int = 6) -> None:
    x0, y0, x1, y1 = box
    for (ax, ay), (bx, by) in (
        ((x0, y0), (x1, y0)),
        ((x1, y0), (x1, y1)),
        ((x1, y1), (x0, y1)),
        ((x0, y1), (x0, y0)),
    ):
        length = max(abs(bx - ax), abs(by - ay))
        steps = max(1, int(length // dash))
        for s in range(0, steps, 2):
            t0, t1 = s / steps, min(1.0, (s + 1) / steps)
            draw.line(
                (
                    ax + (bx - ax) * t0,
                    ay + (by - ay) * t0,
                    ax + (bx - ax) * t1,
                    ay + (by - ay) * t1,
                ),
                fill=fill,
                width=width,
            )


def draw_boxes(
    image,
    boxes,
    texts: Sequence[str] | None = None,
    colors: Sequence[int] | None = None,
    dashed: Sequence[bool] | None = None,
    width: int | None = None,
    min_side: int = 256,
) -> Image.Image:
    """Draw pixel xyxy ``boxes`` [n, 4] on ``image``; returns a new RGB PIL image.

    texts: a caption per box (drawn on a filled strip above the box); colors: palette index
    per box (default 0, 1, 2, ...); dashed: per box, dashed outline (e.g. the query patch
    boxes beside the predictions). Small images are upscaled (nearest) so that the shorter
    side is at least ``min_side`` pixels and the captions stay readable; boxes scale along.
    """
    img = to_pil(image)
    b = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    scale = max(1.0, min_side / max(1, min(img.size)))
    if scale > 1:
        img = img.resize((round(img.width * scale), round(img.height * scale)), Image.NEAREST)
        b = b * scale
    draw = ImageDraw.Draw(img)
    width = width or max(2, round(min(img.size) / 160))
    try:  # a scalable default font (Pillow >= 10.1), else the small bitmap one
        font = ImageFont.load_default(size=max(10, round(min(img.size) / 32)))
    except TypeError:
        font = ImageFont.load_default()
    for i, box in enumerate(b.tolist()):
        c = color(colors[i] if colors is not None else i)
        if dashed is not None and dashed[i]:
            _dashed_rectangle(draw, box, c, width)
        else:
            draw.rectangle(box, outline=c, width=width)
        if texts is not None and texts[i]:
            x0, y0 = box[0], box[1]
            left, top, right, bottom = draw.textbbox((0, 0), texts[i], font=font)
            tw, th = right - left, bottom - top
            ty = y0 - th - 4 if y0 - th - 4 >= 0 else y0  # above the box, inside if no room
            draw.rectangle((x0, ty, x0 + tw + 4, ty + th + 4), fill=c)
            draw.text((x0 + 2, ty + 2 - top), texts[i], fill=(255, 255, 255), font=font)
    return img


def save_boxes_png(path, image, boxes, texts=None, colors=None, dashed=None) -> Path:
    """``draw_boxes`` and write the result to ``path`` (PNG; parent folders created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    draw_boxes(image, boxes, texts, colors, dashed).save(path, format="PNG")
    return path

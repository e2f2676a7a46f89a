"""ImageNet normalisation of the CNN's input: one definition for data, inference and plots.

The CNN (torchvision's ImageNet ResNet) expects RGB in [0, 1] with the ImageNet channel mean
subtracted and divided by the channel std. ``normalize`` maps uint8 [..., 3, H, W] to that;
``denormalize`` undoes it for display; ``as_uint8_image`` turns the arrays users hand in
(grey, RGBA, float, bool) into the HxWx3 uint8 that inference and the demo work on.
"""

from __future__ import annotations

import numpy as np
import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_MEAN_255 = torch.tensor(IMAGENET_MEAN).mul(255).view(3, 1, 1)
_STD_255 = torch.tensor(IMAGENET_STD).mul(255).view(3, 1, 1)


def normalize(image_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 [..., 3, H, W] -> float32 ImageNet-normalised, (x / 255 - mean) / std.

    Computed as (x - 255 mean) / (255 std), two in-place passes over one float copy; it
    differs from torchvision's ``Normalize`` of x / 255 by at most 2.4e-7 (float rounding)."""
    return image_uint8.to(torch.float32).sub_(_MEAN_255).div_(_STD_255)


def denormalize(image: torch.Tensor) -> torch.Tensor:
    """ImageNet-normalised float [..., 3, H, W] -> RGB float in [0, 1] (not clamped)."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=image.dtype).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=image.dtype).view(3, 1, 1)
    return image * std + mean


def as_uint8_image(image) -> np.ndarray:
    """HxWx3 uint8 (contiguous) from an HxW or HxWx3/4 array: bool (True = 255), uint8, or
    float in [0, 1] (clipped); the alpha channel is dropped. ValueError for other shapes."""
    a = np.asarray(image)
    if a.dtype == bool:
        a = a.astype(np.uint8) * 255
    if a.ndim == 2:
        a = np.stack([a] * 3, -1)
    if a.ndim != 3 or a.shape[-1] not in (3, 4):
        raise ValueError(f"expected an image HxW or HxWx3, got an array of shape {a.shape}")
    a = a[..., :3]
    if a.dtype != np.uint8:
        a = (np.clip(a.astype(np.float32), 0.0, 1.0) * 255).round().astype(np.uint8)
    return np.ascontiguousarray(a)

"""Batching images of different sizes: zero padding at the bottom/right plus a mask.

The mask is bool [B, H, W] with True = padding (DETR's convention); boxes stay normalised to
each image's *unpadded* size, so padding never moves them.
"""

from __future__ import annotations

import torch


def pad_images(images: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """list of [3, H_i, W_i] -> (images [B, 3, Hmax, Wmax] zero padded, mask [B, Hmax, Wmax])."""
    if not images:
        raise ValueError("pad_images: empty batch")
    c = images[0].shape[0]
    h = max(im.shape[-2] for im in images)
    w = max(im.shape[-1] for im in images)
    out = images[0].new_zeros((len(images), c, h, w))
    mask = torch.ones((len(images), h, w), dtype=torch.bool)
    for i, im in enumerate(images):
        out[i, :, : im.shape[-2], : im.shape[-1]] = im
        mask[i, : im.shape[-2], : im.shape[-1]] = False
    return out, mask


def collate_detection(batch):
    """[(image [3,H,W], target dict)] -> (images [B,3,H,W], mask [B,H,W], list of targets)."""
    images, mask = pad_images([b[0] for b in batch])
    return images, mask, [b[1] for b in batch]

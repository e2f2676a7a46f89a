"""The datasets over cached CNN maps (feature_cache.py builds the maps and picks one): each
item is a cached map [C, h, w] in place of an image, with its target and, for 'crop' patch
features, the patches or their banked features; the collates zero-pad the maps to a batch.
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset


def pad_maps(maps: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """[C, h_i, w_i] maps -> (features [B, C, H, W] zero padded, mask [B, H, W] True = pad)."""
    c = maps[0].shape[0]
    h = max(m.shape[1] for m in maps)
    w = max(m.shape[2] for m in maps)
    out = maps[0].new_zeros(len(maps), c, h, w, dtype=torch.float32)
    mask = torch.ones(len(maps), h, w, dtype=torch.bool)
    for i, m in enumerate(maps):
        out[i, :, : m.shape[1], : m.shape[2]] = m
        mask[i, : m.shape[1], : m.shape[2]] = False
    return out, mask


class CachedDetection(Dataset):
    """(map [C, h, w], target) per image; targets from the eval-transformed pass."""

    def __init__(self, maps: list[torch.Tensor], targets: list[dict]):
        self.maps, self.targets = maps, targets

    def __len__(self):
        return len(self.maps)

    def __getitem__(self, i):
        return self.maps[i], self.targets[i]


def collate_cached_detection(batch):
    feats, mask = pad_maps([b[0] for b in batch])
    return feats, mask, [b[1] for b in batch]


class CachedPretextRoi(Dataset):
    """(map, target with freshly drawn patch boxes) per image: roi patch features need no CNN.

    ``sample_boxes(h, w) -> [M, 4]`` cxcywh normalised draws the query patch boxes for an
    image of full-resolution size (h, w), as the pretext dataset does.
    """

    def __init__(self, maps, sizes, sample_boxes):
        self.maps, self.sizes, self.sample_boxes = maps, sizes, sample_boxes

    def __len__(self):
        return len(self.maps)

    def __getitem__(self, i):
        h, w = self.sizes[i]
        boxes = self.sample_boxes(h, w)
        target = {"boxes": boxes, "labels": torch.ones(len(boxes), dtype=torch.int64)}
        return self.maps[i], target


class CachedPretextBank(Dataset):
    """(map, target, patch features [M, C]) per image: M of the image's K banked query
    patches (boxes [N, K, 4] cxcywh normalised, features [N, K, C]), drawn with torch's RNG
    (seeded per item by the engine)."""

    def __init__(self, maps, boxes, feats, num_patches: int):
        self.maps, self.boxes, self.feats, self.m = maps, boxes, feats, num_patches

    def __len__(self):
        return len(self.maps)

    def __getitem__(self, i):
        pick = torch.randperm(self.boxes.shape[1])[: self.m]
        boxes = self.boxes[i][pick]
        target = {"boxes": boxes, "labels": torch.ones(len(boxes), dtype=torch.int64)}
        return self.maps[i], target, self.feats[i][pick].float()


def collate_cached_pretext(batch):
    feats, mask = pad_maps([b[0] for b in batch])
    targets = [b[1] for b in batch]
    patches = torch.stack([b[2] for b in batch]) if len(batch[0]) > 2 else None
    return feats, mask, targets, patches


class CachedPretextCrop(Dataset):
    """(map, target, patches) per image: the crops come from the pretext dataset each time
    (its image is discarded: the cached map stands for it; boxes are normalised, so they
    refer to the cached view as well)."""

    def __init__(self, maps, pretext_dataset):
        self.maps, self.pretext = maps, pretext_dataset

    def __len__(self):
        return len(self.maps)

    def __getitem__(self, i):
        _, target, patches = self.pretext[i]
        return self.maps[i], target, patches


def feature_loader(dataset, collate, batch_size: int, num_workers: int) -> DataLoader:
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=False, collate_fn=collate, num_workers=num_workers
    )

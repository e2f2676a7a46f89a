"""The training data of a stage: the loader of batch dicts, its resumable sampler and (when
fine-tuning) the validation loader with its COCO ground truth.

A batch dict holds ``inputs`` (images [B, 3, H, W] or cached CNN maps [B, C, h, w]),
``mask`` [B, H, W] bool (True = padding), ``targets`` (one dict per image: boxes cxcywh in
[0, 1], labels), ``pretext``, and when pre-training ``patches`` (crops [B, M, 3, p, p] or
their CNN features [B, M, C]) or, with ``pretext.patch_pipeline`` 'device', the parameters
and the maker of the query patches cut on the device (``step.batch_to_device``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from . import distributed as du
from . import feature_cache as fc
from .seeding import SeededDataset


class ShardSampler(Sampler):
    """Evaluation: rank r takes items r, r+W, ... (no padding: each image counted once)."""

    def __init__(self, n: int, rank: int, world_size: int):
        self.indices = list(range(rank, n, world_size))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self):
        return len(self.indices)


class Batches:
    """Turns a loader's tuples into batch dicts; knows whether it is a pretext loader."""

    def __init__(self, loader, pretext: bool, extractor=None, patch_maker=None):
        self.loader, self.pretext, self.extractor = loader, pretext, extractor
        self.patch_maker = patch_maker  # DevicePatches: the loader yields uint8 images

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        for item in self.loader:
            batch = {
                "inputs": item[0],
                "mask": item[1],
                "targets": item[2],
                "pretext": self.pretext,
            }
            if self.pretext and len(item) > 3 and item[3] is not None:
                patches = item[3]
                if self.extractor is not None:  # cached 'crop': embed the crops now
                    patches = self.extractor.patches(patches)
                batch["patches"] = patches
            if self.patch_maker is not None:  # (images uint8, mask, targets, None, params)
                batch["patch_params"], batch["patch_maker"] = item[4], self.patch_maker
            yield batch


@dataclass
class TrainData:
    batches: Batches  # the training batches (dicts)
    sampler: du.ResumableSampler
    seeded: SeededDataset
    source: Dataset  # the dataset as built by the data package (has report_skips)
    val_loader: DataLoader | None = None
    coco_gt: object = None
    cache_skips: list | None = None  # [(what, report)]: images skipped building the caches


def build_data(
    cfg, stage, tc, dist_info, model, device, trainable_cnn, progress: bool = True
) -> TrainData:
    """Training batches, their sampler, and (finetune) the val loader and its COCO gt."""
    from ..data import build as data_build
    from ..data.collate import collate_detection
    from ..data.pretext import collate_pretext

    world, rank = dist_info.world_size, dist_info.rank
    per_rank = du.per_process_batch(tc.batch_size, world, f"{stage}.batch_size")
    workers = cfg.data.num_workers
    extractor = val_set = coco_gt = patch_maker = None
    if stage == "pretrain":
        train_set = data_build.build_pretext_dataset(cfg)
        collate = collate_pretext
        if cfg.pretext.patch_pipeline == "device" and tc.cache_features:
            # cached maps stand for the images: the crops (if any) come from the worker
            train_set.patch_pipeline = "worker"
            if dist_info.is_main:
                print("[updetr-lite] pretrain.cache_features: query patches made in the workers")
        elif cfg.pretext.patch_pipeline == "device":
            from ..data.device_patches import DevicePatches, collate_device

            collate, patch_maker = collate_device, DevicePatches(cfg.pretext.patch_size)
    else:
        train_set, val_set = data_build.build_detection_datasets(cfg)
        collate = collate_detection
        coco_gt = val_set.coco
    source = train_set
    cache_skips = []
    if tc.cache_features:
        fc.check_cacheable(trainable_cnn, stage)
        sets = fc.cached_sets(cfg, stage, model, device, train_set, val_set, progress, cache_skips)
        train_set, val_set, collate, extractor = sets.train, sets.val, sets.collate, sets.extractor
        if sets.in_memory:
            workers = 0  # the maps are in memory: workers would only copy them
    seeded = SeededDataset(train_set, tc.seed)
    sampler = du.ResumableSampler(seeded, world, rank, shuffle=True, seed=tc.seed)
    loader = DataLoader(
        seeded,
        batch_size=per_rank,
        sampler=sampler,
        collate_fn=collate,
        num_workers=workers,
        drop_last=False,
        # a private generator: creating iterators must not consume the training RNG
        generator=torch.Generator().manual_seed(tc.seed),
        persistent_workers=False,
        pin_memory=device.type == "cuda",
    )
    val_loader = None
    if stage == "finetune":
        val_loader = DataLoader(
            val_set,
            batch_size=per_rank,
            sampler=ShardSampler(len(val_set), rank, world),
            collate_fn=collate,
            num_workers=workers,
            generator=torch.Generator().manual_seed(tc.seed),  # evaluation draws no training RNG
        )
    batches = Batches(loader, stage == "pretrain", extractor, patch_maker)
    return TrainData(batches, sampler, seeded, source, val_loader, coco_gt, cache_skips)

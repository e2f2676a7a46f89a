"""Cached CNN features (lite deviation ``TrainConfig.cache_features``).

With a frozen CNN nothing about the CNN changes during training, so its output for an image
can be computed once and reused every epoch: only the transformer and the heads train. The
images go through the *eval* transforms (no augmentation: the cached map is one fixed view).

- Detection: each image's feature map [C, h, w] and its target are kept in memory.
- Pre-training, ``pretext.patch_feature == 'roi'``: a query patch is only a box (its feature
  is a RoIAlign of the cached map), so new patch boxes are drawn every time an image is used
  and the CNN never runs during pre-training.
- Pre-training, ``'crop'``: the patch crops still come from the pretext dataset every step and
  the CNN embeds them under ``torch.no_grad`` (``FeatureExtractor.patches``).
- Pre-training, ``'crop'`` with ``pretext.crop_bank`` K > 0: a bank of K augmented query
  patches per image, cut and embedded once (their boxes [K, 4] and features [K, C]); each
  time an image is used, M of its K patches are drawn without replacement. The paper's
  patch feature at the cost of a 'roi' step; the bank is drawn with ``pretrain.seed``.

Maps are computed with the frozen-CNN fast path (folded batch norm, bf16 where the hardware
has it) and stored in a file under ``cfg.data.cache_dir/features/`` named
``<settings>-<content>.pt``: the first hash covers the CNN weights and the data settings, the
second the size and modification time of every image and annotation file, so edited labels
or replaced images (same count) build a new cache; the old one of the same settings is
removed and the rebuild is said. The images skipped while a cache was built are stored with
it and reported again whenever it is reused.

``cached_sets`` is what the training engine calls: it swaps the datasets of a stage for
their cached counterparts (cached_datasets.py; building or reusing the cache files) and says
how to load them.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import os
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

from .. import fastpath
from . import distributed as du
from .cached_datasets import (
    CachedDetection,
    CachedPretextBank,
    CachedPretextCrop,
    CachedPretextRoi,
    collate_cached_detection,
    collate_cached_pretext,
    feature_loader,
)
from .checkpoint import CheckpointWriteError, atomic_save
from .seeding import SeededDataset


class FeatureCacheError(ValueError):
    """cache_features asked for where it cannot work (a CNN that trains)."""


def check_cacheable(trainable_cnn: bool, section: str) -> None:
    if trainable_cnn:
        raise FeatureCacheError(
            f"{section}.cache_features=True needs a frozen CNN ({section}.lr_backbone=0"
            f"{', model.frozen_cnn=True' if section == 'pretrain' else ''}): "
            "a CNN that trains changes its features every step"
        )


class FeatureExtractor:
    """The frozen CNN of a DETR/UP-DETR as an inference function.

    Calls the model's own Backbone under ``torch.no_grad``, so cached maps are exactly what the
    model computes on the fly (with its fast path when ``model.fast_path``).
    """

    def __init__(self, backbone: nn.Module, device: torch.device):
        self.cnn = backbone[0] if isinstance(backbone, nn.Sequential) else backbone  # Joiner
        self.device = device
        self.weights_hash = weights_hash(self.cnn)

    @torch.no_grad()
    def images(self, images: torch.Tensor, mask: torch.Tensor):
        """images [B, 3, H, W], mask [B, H, W] -> (features [B, C, h, w], mask [B, h, w])."""
        feats, small = self.cnn(images.to(self.device), mask.to(self.device))
        return feats.float(), small

    @torch.no_grad()
    def patches(self, patches: torch.Tensor) -> torch.Tensor:
        """patches [B, M, 3, p, p] -> patch features [B, M, C] (global average pool)."""
        b, m = patches.shape[:2]
        return self.cnn.patch_feature(patches.flatten(0, 1).to(self.device)).float().view(b, m, -1)


def weights_hash(cnn: nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in sorted(cnn.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def cache_key(*parts) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:20]


def data_identity(data_cfg) -> dict:
    """The data settings that change what the CNN sees (not worker counts)."""
    d = dataclasses.asdict(data_cfg)
    d.pop("num_workers", None)
    return d


def loader_batches(loader, desc: str, progress: bool = True):
    """Every batch of ``loader`` once, with a progress bar.

    A loader iterator left alive in a reference cycle when the next loader forks its workers
    can be collected in one of them, which prints "can only test a child process" blocks (seen
    once, in notebook 5's default run, as its feature caches were built). So ``gc.collect()``
    first clears such cycles in this process, and the bar counts batches rather than wrapping
    (and holding) the loader."""
    import gc

    from tqdm.auto import tqdm

    gc.collect()
    bar = tqdm(
        total=len(loader), desc=desc, disable=not (progress and du.is_main_process()), leave=False
    )
    try:
        for batch in loader:
            yield batch
            bar.update(1)
    finally:
        bar.close()


@torch.no_grad()
def compute_maps(
    extractor: FeatureExtractor, loader, desc: str = "features", progress: bool = True
):
    """Every image's map [C, h, w], cropped to its unpadded extent, in loader order, and the
    third element of each batch (targets, sizes, ...) flattened alongside.

    ``loader`` yields unshuffled (images, mask, per_image_list) batches.
    """
    maps, extras = [], []
    for batch in loader_batches(loader, desc, progress):
        feats, fmask = extractor.images(batch[0], batch[1])
        extras.extend(batch[2])
        for f, m in zip(feats, fmask):
            h, w = int((~m[:, 0]).sum()), int((~m[0, :]).sum())
            f = f[:, :h, :w].cpu()
            # maps from the bf16 fast path are exact in bf16: store them at half the memory
            maps.append(f.bfloat16() if torch.equal(f.bfloat16().float(), f) else f.clone())
    return maps, extras


def cached(path: Path, compute):
    """Load ``path``, or compute on rank 0 and save atomically; the other ranks then load it."""
    value = None
    if du.is_main_process() and not path.is_file():
        value = compute()
        try:
            atomic_save(value, path)
        except (OSError, CheckpointWriteError) as e:  # a read-only cache only costs the reuse
            print(f"[updetr-lite] could not write the feature cache {path}: {e}")
    du.barrier()
    if value is not None:
        return value
    if path.is_file():
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # truncated or damaged: it is only a cache
            why = " ".join(str(e).split())[:120]
            print(f"[updetr-lite] the feature cache {path} is damaged ({why}): rebuilding it")
            value = compute()
            if du.is_main_process():
                try:
                    atomic_save(value, path)
                except (OSError, CheckpointWriteError) as e2:
                    print(f"[updetr-lite] could not write the feature cache {path}: {e2}")
            return value
    return compute()


def cache_path(cache_dir: str, key: str, content: str | None = None) -> Path:
    name = key if content is None else f"{key}-{content}"
    return Path(os.path.expanduser(cache_dir)) / "features" / f"{name}.pt"


def files_identity(files) -> str:
    """A hash of (path, size, modification time) of each file; a missing file counts too."""
    h = hashlib.sha256()
    for f in files:
        try:
            st = os.stat(f)
            h.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{f}\0missing\n".encode())
    return h.hexdigest()[:16]


def content_cache_path(cache_dir: str, key: str, files) -> Path:
    """The cache file for settings ``key`` and the current state of ``files``. Older caches of
    the same settings (the files have changed since) are removed, and that is said."""
    path = cache_path(cache_dir, key, files_identity(files))
    if du.is_main_process() and not path.is_file():
        stale = sorted(path.parent.glob(f"{key}-*.pt"))
        for old in stale:
            old.unlink(missing_ok=True)
        if stale:
            print(
                f"[updetr-lite] the images or annotation files changed since the feature cache "
                f"{stale[0].name} was built: rebuilding it as {path.name}"
            )
    return path


# --------------------------------------------------------------------------- the engine's view


@dataclasses.dataclass
class CachedSets:
    train: Dataset
    val: Dataset | None  # finetune only
    collate: object
    extractor: FeatureExtractor | None  # the CNN still runs per step ('crop' patches)
    in_memory: bool  # nothing left for loader workers to do but copy the maps


def cached_sets(cfg, stage, model, device, train_set, val_set, progress, skips) -> CachedSets:
    """The stage's datasets on cached CNN maps (the cache files built on first use).
    Appends (what, skip report) of each cache to ``skips``."""
    extractor = FeatureExtractor(model.backbone, device)
    # the maps' precision: a bf16 cache must not stand in for an fp32 run, nor the reverse
    bf16 = cfg.model.fast_path and fastpath.cnn_bf16(cfg.model.cnn_bf16, device)
    ident = (extractor.weights_hash, cfg.model.backbone, cfg.model.backbone_layer, bf16)
    ident += (data_identity(cfg.data),)
    if stage == "finetune":
        train = _cached_detection(cfg, extractor, train_set, ident, "train", progress, skips)
        val = _cached_detection(cfg, extractor, val_set, ident, "val", progress, skips, False)
        return CachedSets(train, val, collate_cached_detection, extractor, True)
    train = _cached_pretext(cfg, extractor, train_set, ident, progress, skips)
    if cfg.pretext.patch_feature == "roi" or isinstance(train, CachedPretextBank):
        extractor = None  # no CNN per step
    return CachedSets(train, None, collate_cached_pretext, extractor, extractor is None)


def _eval_view(dataset, cfg):
    """The same images with the eval transforms (no augmentation), for the feature cache."""
    from ..data.transforms import detection_transforms

    if not hasattr(dataset, "transforms"):
        raise FeatureCacheError(
            "cache_features: the detection dataset exposes no transforms to replace"
        )
    view = copy.copy(dataset)
    view.transforms = detection_transforms(cfg.data, train=False)
    return view


def _source_files(dataset) -> list:
    """The image and annotation files a dataset reads (what its feature cache depends on)."""
    files = getattr(dataset, "source_files", None)
    if files is None:
        raise FeatureCacheError("cache_features: the dataset does not list its files")
    return files()


def _cached_with_skips(path: Path, compute, dataset, what: str, skips: list) -> dict:
    """``cached(path, compute)`` storing the skip report of ``dataset`` taken right after
    ``compute`` with the cache; a reused cache's stored report is said again. Appends
    (what, report) to ``skips`` when the report is not empty."""

    def run():
        value = compute()
        return value | {"skips": getattr(dataset, "report_skips", lambda: {})()}

    built = not path.is_file()
    data = cached(path, run)
    report = data.get("skips") or {}
    if report:
        skips.append((what, report))
    counts = {k: v for k, v in report.items() if k != "files" and v}
    if not built and counts:
        print(
            f"[updetr-lite] feature cache {path.name} (reused): built without {counts} "
            f"skipped images ({', '.join(report['files'])})"
        )
    return data


def _cached_detection(cfg, extractor, dataset, ident, split, progress, skips, eval_view=True):
    from ..data.collate import collate_detection

    view = _eval_view(dataset, cfg) if eval_view else dataset
    key = cache_key("detection", split, len(view), ident)
    path = content_cache_path(cfg.data.cache_dir, key, _source_files(dataset))

    def compute():
        loader = feature_loader(view, collate_detection, 16, cfg.data.num_workers)
        maps, targets = compute_maps(extractor, loader, f"CNN features ({split})", progress)
        return {"maps": maps, "targets": targets}

    data = _cached_with_skips(path, compute, dataset, f"feature cache ({split})", skips)
    ds = CachedDetection(data["maps"], data["targets"])
    if hasattr(dataset, "coco"):
        ds.coco = dataset.coco
    return ds


class _PretextImages(Dataset):
    """The pretext dataset's images only, each drawn once with a fixed seed (one view per
    image for the cache), with the size the query patch boxes are drawn on."""

    def __init__(self, dataset, seed: int):
        if hasattr(dataset, "augment_patches"):  # the crops are discarded: skip their jitter
            dataset = copy.copy(dataset)
            dataset.augment_patches = False
        self.seeded = SeededDataset(dataset, seed)
        self.seeded.epoch = 2**31 - 1  # never a training epoch

    def __len__(self):
        return len(self.seeded)

    def __getitem__(self, i):
        image, target = self.seeded[i][:2]
        size = target.get("orig_size", torch.tensor(image.shape[-2:]))
        return image, tuple(int(x) for x in size)


def _collate_images(batch):
    from ..data.collate import pad_images

    images, mask = pad_images([b[0] for b in batch])
    return images, mask, [b[1] for b in batch]


def _cached_pretext(cfg, extractor, dataset, ident, progress, skips):
    view = _PretextImages(dataset, cfg.pretrain.seed)
    key = cache_key("pretext", len(view), ident)
    path = content_cache_path(cfg.data.cache_dir, key, _source_files(dataset))

    def compute():
        loader = feature_loader(view, _collate_images, 16, cfg.data.num_workers)
        maps, sizes = compute_maps(extractor, loader, "CNN features (pretext)", progress)
        return {"maps": maps, "sizes": sizes}

    data = _cached_with_skips(path, compute, dataset, "feature cache (pretext)", skips)
    if cfg.pretext.patch_feature == "roi":
        return CachedPretextRoi(data["maps"], data["sizes"], dataset.sample_boxes)
    if cfg.pretext.crop_bank > 0:
        bank = _crop_bank(cfg, extractor, dataset, ident, progress, skips)
        m = cfg.pretext.num_patches
        return CachedPretextBank(data["maps"], bank["boxes"], bank["feats"], m)
    return CachedPretextCrop(data["maps"], dataset)


class _BankPatches(Dataset):
    """Each image's K query patches (crops [K, 3, p, p], boxes [K, 4]), drawn once."""

    def __init__(self, dataset, k: int, seed: int):
        dataset = copy.copy(dataset)
        dataset.num_patches = k
        self.seeded = SeededDataset(dataset, seed)
        self.seeded.epoch = 2**31 - 2  # never a training epoch, nor the maps' view

    def __len__(self):
        return len(self.seeded)

    def __getitem__(self, i):
        _, target, patches = self.seeded[i]
        return patches, target["boxes"]


def _collate_bank(batch):
    return torch.stack([b[0] for b in batch]), None, [b[1] for b in batch]


def _crop_bank(cfg, extractor, dataset, ident, progress, skips=None) -> dict:
    """{'boxes': [N, K, 4] cxcywh normalised, 'feats': [N, K, C]}: the query patch bank."""
    k, seed = cfg.pretext.crop_bank, cfg.pretrain.seed
    if k < cfg.pretext.num_patches:
        raise FeatureCacheError(
            f"pretext.crop_bank={k} holds fewer patches than pretext.num_patches="
            f"{cfg.pretext.num_patches} drawn from it"
        )
    view = _BankPatches(dataset, k, seed)
    key = cache_key("crop_bank", len(view), k, seed, cfg.pretext.patch_size, ident)
    path = content_cache_path(cfg.data.cache_dir, key, _source_files(dataset))

    def compute():
        loader = feature_loader(view, _collate_bank, 16, cfg.data.num_workers)
        boxes, feats = [], []
        for patches, _, b in loader_batches(loader, "CNN features (query patch bank)", progress):
            feats.append(extractor.patches(patches).cpu())
            boxes.extend(b)
        return {"boxes": torch.stack(boxes), "feats": torch.cat(feats)}

    what = "feature cache (query patch bank)"
    return _cached_with_skips(path, compute, dataset, what, [] if skips is None else skips)

"""Pretext data: random query patch detection on unlabeled images (UP-DETR, Sec. 3.1).

For each image, M = ``cfg.pretext.num_patches`` query patches are cut from the
full-resolution image; how they are sampled, cropped and augmented is ``data/query_patches.py``
(the authors' sampling: sides uniform in ``[min_patch, side - min_patch]`` px, then a uniform
corner; each patch resized to ``patch_size`` squared and colour-augmented without flip). The image itself gets a random resize (shortest side from
``data.pretext_scales``, longest at most ``data.pretext_max_size``) and no flip, so the
normalised patch boxes stay valid.

Returned per image: ``image`` [3, H, W] ImageNet-normalised; ``target`` with ``boxes``
[M, 4] normalised cxcywh (the patches' boxes), ``labels`` [M] all ones, ``image_id``,
``orig_size`` (h, w) of the file and ``size`` (h, w) after the resize; ``patches``
[M, 3, p, p] normalised.

Bad input: a folder without images is one ``NoImagesError``. Images with a side of 16 px or
less are skipped (counted as ``too_small``), images whose long side is over ``MAX_ASPECT``
times the short one (resized, the short side would shrink to nothing) as ``extreme_aspect``,
unreadable or truncated files are skipped with a
warning naming the file (counted as ``unreadable``): ``__getitem__`` returns the next good
image instead. ``report_skips()`` (which the engine calls at the end of an epoch) logs and returns the counts and resets them. Counters live in shared memory, so
skips in DataLoader workers are counted too, and ``copy.copy`` shares them (the feature
cache reads through a copy; ``data/skips.py``). PIL is told not to load truncated files. 16-bit grey images
are scaled to 8 bits (65535 -> 255), not clipped.

All randomness comes from torch's global RNG unless a generator is passed, so the engine's
per-item seeding makes every draw reproducible.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import torch
from PIL import Image, ImageFile
from torch.utils.data import Dataset
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from .images import normalize
from .query_patches import (
    crop_patches,
    patch_augmentation,
    sample_boxes,
    sample_patch_boxes,
    to_cxcywh,
)
from .skips import MAX_ASPECT, SkipFlags, extreme_aspect

ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated JPEG is an error here, never grey pixels

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
MIN_SIDE = 16  # images with a side <= this many pixels are skipped (authors' rule)
SKIP_KINDS = ("too_small", "unreadable", "extreme_aspect")


class NoImagesError(FileNotFoundError):
    """A pretext root that holds no image file (or does not exist)."""


class UnreadableImageError(OSError):
    """An image file that PIL cannot decode (corrupt, truncated, not an image)."""


def list_images(root) -> list[Path]:
    """Image files under ``root`` (recursive, sorted) or the given list of files."""
    if isinstance(root, (list, tuple)):
        files = [Path(f) for f in root]
        if not files:
            raise NoImagesError("pretext data: the list of image files is empty")
        missing = [f for f in files if not f.is_file()]
        if missing:
            raise NoImagesError(f"pretext data: image file not found: {missing[0]}")
        return files
    root = Path(root)
    if not root.is_dir():
        raise NoImagesError(f"pretext data: folder not found: {root}")
    files = sorted(
        p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
    )
    if not files:
        raise NoImagesError(
            f"pretext data: no images ({', '.join(IMAGE_EXTENSIONS)}) under folder {root}"
        )
    return files


def load_rgb(path) -> Image.Image:
    """The file as an RGB PIL image, fully decoded; ``UnreadableImageError`` names the file."""
    ImageFile.LOAD_TRUNCATED_IMAGES = False  # in case something switched it on since import
    try:
        with Image.open(path) as im:
            im.load()  # decode now: truncation and corruption raise here, not later
            return to_rgb(im)
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise UnreadableImageError(f"cannot read image {path}: {e}") from e


def read_rgb(path) -> torch.Tensor:
    """The file as uint8 [3, H, W] RGB. JPEGs go through ``torchvision.io.decode_jpeg``
    (the same pixels as PIL, 1.7x faster on 500 x 375 photos: docs/benchmarks.md); anything
    it cannot decode, and every other format, through PIL (``load_rgb``, whose error names
    the file)."""
    if str(path).lower().endswith((".jpg", ".jpeg")):
        try:
            from torchvision.io import ImageReadMode, decode_jpeg, read_file

            with warnings.catch_warnings():  # deprecated in torchvision 0.29, still there
                warnings.simplefilter("ignore", DeprecationWarning)
                return decode_jpeg(read_file(str(path)), mode=ImageReadMode.RGB)
        except (ImportError, RuntimeError, OSError):
            pass  # PIL decides: it reads the file or raises UnreadableImageError
    return TF.pil_to_tensor(load_rgb(path))


def to_rgb(im: Image.Image) -> Image.Image:
    """An RGB copy; 16-bit (and 32-bit integer) grey is scaled by 255/65535 first, since
    PIL's convert would clip every value over 255 to white."""
    if im.mode in ("I", "I;16", "I;16L", "I;16B", "I;16N"):
        import numpy as np

        a = np.asarray(im).astype(np.float64)
        im = Image.fromarray(np.clip(np.round(a * (255 / 65535)), 0, 255).astype(np.uint8), "L")
    return im.convert("RGB")


class one_thread:
    """Run a block with one torch intra-op thread, then restore the count.

    A sample's tensors are small (a 128 px patch, a ~500 px image): splitting each op over
    threads costs more than it saves, and on a busy machine the threads wait for each other
    (measured: 1.3 ms -> 65 ms per lite sample with 2 threads and other jobs running). The
    DataLoader's workers run one thread already; this gives the main process (num_workers=0,
    the data benchmark) the same."""

    def __enter__(self):
        self.n = torch.get_num_threads()
        if self.n != 1:
            torch.set_num_threads(1)

    def __exit__(self, *exc):
        if self.n != 1:
            torch.set_num_threads(self.n)


class PretextDataset(Dataset):
    """Unlabeled images -> (image [3,H,W], target, patches [M,3,p,p]); see the module doc.

    ``root``: a folder (searched recursively; ImageNet's layout or flat) or a list of files.
    ``augment_patches``: False turns the patch colour/blur augmentation off (demo, tests).
    """

    def __init__(self, root, cfg, augment_patches: bool = True):
        self.root = root
        self.files = list_images(root)
        self.num_patches = cfg.pretext.num_patches
        self.patch_size = cfg.pretext.patch_size
        self.min_patch = cfg.pretext.min_patch
        self.augment_patches = augment_patches
        # 'device': the worker returns the uint8 image and the patch parameters, the patches
        # are cut and augmented on the training device (data/device_patches.py)
        self.patch_pipeline = getattr(cfg.pretext, "patch_pipeline", "worker")
        self.resize = v2.RandomShortestSize(
            min_size=list(cfg.data.pretext_scales), max_size=cfg.data.pretext_max_size
        )
        self.patch_aug = patch_augmentation()
        # one flag per file in shared memory: skips seen by DataLoader workers reach the main
        # process's report, each file counted once; copy.copy shares them
        self._skips = SkipFlags(len(self.files), SKIP_KINDS)
        self._warned: set[str] = set()

    def __len__(self) -> int:
        return len(self.files)

    def source_files(self) -> list[Path]:
        return list(self.files)

    @property
    def skipped(self) -> dict[str, int]:
        """Files skipped since the last report: {'too_small': n, 'unreadable': n, ...}."""
        return self._skips.counts()

    def _count(self, i: int, kind: str) -> None:
        self._skips.count(i, kind)

    def report_skips(self) -> dict:
        """Log and return the files skipped since the last call (e.g. one epoch), then reset:
        {'too_small': n, 'unreadable': n, 'files': first 20 names}; {} when none was."""
        report = self._skips.take(lambda i: self.files[i])
        if not report:
            return {}
        counts, files = {k: report[k] for k in SKIP_KINDS}, report["files"]
        log.warning(
            "pretext data %s: skipped %d images with a side <= %d px, %d unreadable files and "
            "%d images with an aspect ratio over %d (%s%s)",
            self.root if not isinstance(self.root, (list, tuple)) else "(file list)",
            counts["too_small"],
            MIN_SIDE,
            counts["unreadable"],
            counts["extreme_aspect"],
            MAX_ASPECT,
            ", ".join(files),
            ", ..." if sum(counts.values()) > len(files) else "",
        )
        return {**counts, "files": files}

    def sample_boxes(self, h: int, w: int, generator: torch.Generator | None = None):
        """Query patch boxes [M, 4] normalised cxcywh for a full-resolution (h, w) image."""
        return sample_boxes(h, w, self.num_patches, self.min_patch, generator)

    def _load(self, i: int) -> torch.Tensor | None:
        path = self.files[i]
        try:
            img = read_rgb(path)
        except UnreadableImageError as e:
            if str(path) not in self._warned:
                self._warned.add(str(path))
                warnings.warn(f"skipping unreadable image: {e}", stacklevel=3)
            self._count(i, "unreadable")
            return None
        if min(img.shape[-2:]) <= MIN_SIDE:
            self._count(i, "too_small")
            return None
        if extreme_aspect(*img.shape[-2:]):
            self._count(i, "extreme_aspect")
            return None
        return img

    def __getitem__(self, index: int):
        with one_thread():
            for k in range(len(self.files)):
                i = (index + k) % len(self.files)
                img = self._load(i)
                if img is not None:
                    return self.make_sample(img, i)
        raise NoImagesError(f"pretext data: no readable image of a usable size in {self.root}")

    def make_sample(self, img: torch.Tensor, image_id: int = 0, generator=None):
        """uint8 [3, h, w] full-resolution image -> (image, target, patches)."""
        if self.patch_pipeline == "device":
            from .device_patches import device_sample

            return device_sample(self, img, image_id, generator)
        h, w = img.shape[-2:]
        xyxy = sample_patch_boxes(h, w, self.num_patches, self.min_patch, generator)
        aug = self.patch_aug if self.augment_patches else None
        patches = normalize(crop_patches(img, xyxy, self.patch_size, aug))
        image = normalize(self.resize(img))
        boxes = to_cxcywh(xyxy, h, w)
        target = {
            "boxes": boxes,
            "labels": torch.ones(self.num_patches, dtype=torch.int64),
            "image_id": torch.tensor(image_id, dtype=torch.int64),
            "orig_size": torch.tensor([h, w]),
            "size": torch.tensor(image.shape[-2:]),
        }
        return image, target, patches


def collate_pretext(batch):
    """[(image, target, patches)] -> (images [B,3,H,W], mask [B,H,W] True=pad, targets,
    patches [B,M,3,p,p])."""
    from .collate import pad_images

    images, mask = pad_images([b[0] for b in batch])
    return images, mask, [b[1] for b in batch], torch.stack([b[2] for b in batch])

"""Query patches cut, resized and augmented on the training device, in one batched pass.

The per-worker pipeline (``pretext.patch_pipeline = "worker"``, data/pretext.py) crops each of
the M query patches of an image, resizes it to ``patch_size`` and colour-augments it one by
one in the DataLoader worker (about 24 ms of a paper-preset sample's 26 ms). With
``pretext.patch_pipeline = "device"`` the worker only

- decodes the image and gives it the multi-scale resize (uint8 [3, h, w], the same pixels the
  worker path normalises),
- samples the M patch boxes (the same rule, the same draws) and
- draws each patch's augmentation parameters (``draw_params``: the same random calls, in
  the same order, as torchvision's ``RandomApply(ColorJitter) -> RandomGrayscale ->
  RandomApply(GaussianBlur)`` of the worker path, so one seed gives both paths the same
  parameters);

and ``DevicePatches`` does the rest for the whole batch on the training device: one
``roi_align`` cuts and resizes all B * M patches from the padded uint8 batch (adaptive
sampling grid: ``ceil(box side / patch_size)`` samples per output pixel, an area average
where the worker path uses an antialiased bilinear resize), one batched pass applies the
per-patch colour jitter (brightness, contrast, saturation, hue in each patch's own random
order), greyscale and Gaussian blur (13 taps, reflect borders, as ``v2.GaussianBlur(13)``),
then both the images and the patches are ImageNet-normalised (padding stays 0).

Differences from the worker path, measured in tests/test_device_patches.py: patches are cut
from the resized image rather than the file's full resolution (the boxes are normalised, so
they cover the same region; for ImageNet's ~500 x 375 photos the resize scale is 0.85-1.3 and
the patch is resized to 128 px anyway), the resize filter (roi_align's area average against
antialiased bilinear), and the augmentation runs in float where the worker path rounds to
uint8 after every op.

Randomness: the parameters come from the worker (torch's global RNG, seeded per item by the
engine), so the device pass is deterministic and exact resume still holds.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.ops import box_convert, roi_align

from .images import IMAGENET_MEAN, IMAGENET_STD
from .query_patches import (  # the augmentation's numbers: one definition for both pipelines
    BLUR_KERNEL,
    JITTER,
    P_BLUR,
    P_GREY,
    P_JITTER,
    SIGMA,
    sample_patch_boxes,
    to_cxcywh,
)

# columns of the [M, NUM_PARAMS] parameter table
JIT, ORDER, FACTORS, GREY, BLUR, SIG = 0, 1, 5, 9, 10, 11
NUM_PARAMS = 12
_GREY_WEIGHTS = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale


def draw_params(num: int, augment: bool = True, generator=None) -> torch.Tensor:
    """[num, 12] float per-patch augmentation parameters.

    Columns: jitter on (0/1), the order of the 4 jitter ops (0 brightness, 1 contrast,
    2 saturation, 3 hue), their factors (b, c, s in [0.6, 1.4], hue in [-0.1, 0.1]), grey on,
    blur on, blur sigma. Drawn patch by patch with the calls torchvision's transforms make
    (``rand(1) >= p`` skips), so a seed gives the worker path's parameters. ``augment=False``:
    all off, no draw.
    """
    out = torch.zeros(num, NUM_PARAMS)
    out[:, ORDER : ORDER + 4] = torch.arange(4.0)
    if not augment:
        return out
    g = {"generator": generator}
    for i in range(num):
        if torch.rand(1, **g) < P_JITTER:
            out[i, JIT] = 1
            out[i, ORDER : ORDER + 4] = torch.randperm(4, **g).float()
            for k, j in enumerate(JITTER):
                lo, hi = (-j, j) if k == 3 else (max(0.0, 1 - j), 1 + j)
                out[i, FACTORS + k] = torch.empty(1).uniform_(lo, hi, **g)
        out[i, GREY] = float(torch.rand(1, **g) < P_GREY)
        if torch.rand(1, **g) < P_BLUR:
            out[i, BLUR] = 1
            out[i, SIG] = torch.empty(1).uniform_(*SIGMA, **g)
    return out


def device_sample(dataset, img: torch.Tensor, image_id: int = 0, generator=None):
    """The worker's share of a device-path sample: uint8 [3, h, w] full-resolution image ->
    (image uint8 [3, h', w'] resized, target as the worker path's, params [M, 12]).

    Random draws in the worker path's order: boxes, per-patch augmentation, then the resize."""
    h, w = img.shape[-2:]
    m = dataset.num_patches
    xyxy = sample_patch_boxes(h, w, m, dataset.min_patch, generator)
    params = draw_params(m, dataset.augment_patches, generator)
    image = dataset.resize(img)
    target = {
        "boxes": to_cxcywh(xyxy, h, w),
        "labels": torch.ones(m, dtype=torch.int64),
        "image_id": torch.tensor(image_id, dtype=torch.int64),
        "orig_size": torch.tensor([h, w]),
        "size": torch.tensor(image.shape[-2:]),
    }
    return image, target, params


def collate_device(batch):
    """[(image uint8, target, params)] -> (images uint8 [B,3,H,W] padded, mask [B,H,W]
    True = pad, targets, None, params [B, M, 12]); ``DevicePatches`` finishes the batch (and
    zeroes the padding after normalising)."""
    from .collate import pad_images

    images, mask = pad_images([b[0] for b in batch])
    for i, (im, _, _) in enumerate(batch):
        # one row and column of edge pixels beyond the image: roi_align's bilinear samples
        # near the right/bottom border reach one pixel further, as a crop's resize clamps
        h, w = im.shape[-2:]
        if h < images.shape[-2]:
            images[i, :, h, :w] = im[:, -1]
        if w < images.shape[-1]:
            images[i, :, : h + 1, w] = images[i, :, : h + 1, w - 1]
    return images, mask, [b[1] for b in batch], None, torch.stack([b[2] for b in batch])


# --------------------------------------------------------------------------- batched ops
# x: float [n, 3, p, p] in [0, 1]; f: float [n] per-patch factors


def _grey(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(1)
    return (r * _GREY_WEIGHTS[0] + g * _GREY_WEIGHTS[1] + b * _GREY_WEIGHTS[2]).unsqueeze(1)


def _blend(x, y, f):
    f = f.view(-1, 1, 1, 1)
    return (x * f + y * (1 - f)).clamp_(0, 1)


def brightness(x, f):
    return (x * f.view(-1, 1, 1, 1)).clamp_(0, 1)


def contrast(x, f):
    return _blend(x, _grey(x).mean(dim=(1, 2, 3), keepdim=True), f)


def saturation(x, f):
    return _blend(x, _grey(x), f)


def hue(x, f):
    """Shift the HSV hue by f (turns). Only value v (max), chroma c (max - min) and hue h are
    needed: each output channel is v - c * clamp(min(k, 4 - k), 0, 1) with
    k = (n + 6 h) mod 6, n = 5, 3, 1 for r, g, b (no HSV image is built)."""
    r, g, b = x.unbind(1)
    v = x.amax(dim=1, keepdim=True)
    c = v - x.amin(dim=1, keepdim=True)
    is_r = v[:, 0] == r
    is_g = (v[:, 0] == g) & ~is_r
    d = x.roll(-1, 1) - x.roll(-2, 1)  # g - b, b - r, r - g
    c0 = c[:, 0]
    num = torch.where(is_r, d[:, 0], torch.where(is_g, d[:, 1] + 2 * c0, d[:, 2] + 4 * c0))
    h6 = num.unsqueeze(1).div_(c.clamp(min=1e-12)).add_(6 * f.view(-1, 1, 1, 1))  # 6 h
    k = h6 + torch.tensor([5.0, 3.0, 1.0], device=x.device).view(1, 3, 1, 1)
    k -= 6 * torch.floor(k / 6)  # mod 6 (cheaper than remainder on the CPU)
    return v - c * torch.minimum(k, 4 - k).clamp_(0, 1)


JITTER_OPS = (brightness, contrast, saturation, hue)


def blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """``v2.GaussianBlur(13, sigma)`` of each patch of x [n, 3, p, p], sigma [n] per patch:
    reflect padding, then the separable 13-tap kernel as two grouped convolutions (a 2-D
    Gaussian is the outer product of two 1-D ones)."""
    n, ch, p, q = x.shape
    half = BLUR_KERNEL // 2
    if min(p, q) <= half:
        raise ValueError(f"pretext.patch_size must be > {half} for the 13 px blur, not {p}")
    t = torch.arange(-half, half + 1, device=x.device, dtype=x.dtype)
    w = torch.exp(-0.5 * (t / sigma.view(-1, 1)) ** 2)
    w = (w / w.sum(1, keepdim=True)).repeat_interleave(ch, 0)  # [n * 3, 13]
    y = F.pad(x.reshape(1, n * ch, p, q), (half,) * 4, mode="reflect")
    y = F.conv2d(y, w.view(n * ch, 1, -1, 1), groups=n * ch)
    y = F.conv2d(y, w.view(n * ch, 1, 1, -1), groups=n * ch)
    return y.view(n, ch, p, q)


def _index(mask: torch.Tensor, device) -> torch.Tensor | None:
    """CPU bool mask -> index tensor on ``device`` (None when empty): the selection is made
    on the CPU from the CPU parameters, so the device pass never waits for a sync."""
    idx = mask.nonzero().squeeze(1)
    return idx.to(device, non_blocking=True) if len(idx) else None


def augment(x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """Per-patch colour jitter -> greyscale -> blur of x float [n, 3, p, p] in [0, 1], in
    place where possible; params [n, 12] on the CPU (``draw_params``)."""
    params = params.cpu()
    dev = x.device
    jit = params[:, JIT] > 0.5
    for stage in range(4):
        op = params[:, ORDER + stage]
        for o, fn in enumerate(JITTER_OPS):
            idx = _index(jit & (op == o), dev)
            if idx is not None:
                f = params[:, FACTORS + o].to(dev, non_blocking=True)[idx]
                x[idx] = fn(x[idx], f)
    idx = _index(params[:, GREY] > 0.5, dev)
    if idx is not None:
        x[idx] = _grey(x[idx]).expand(-1, 3, -1, -1)
    idx = _index(params[:, BLUR] > 0.5, dev)
    if idx is not None:
        x[idx] = blur(x[idx], params[:, SIG].to(dev, non_blocking=True)[idx])
    return x


def cut_patches(images: torch.Tensor, boxes: torch.Tensor, p: int) -> torch.Tensor:
    """images float [B, 3, H, W], boxes [B, M, 4] pixel xyxy (continuous: pixel i covers
    [i, i + 1]) -> [B * M, 3, p, p]: each box resized to p x p with an adaptive sampling grid
    (``ceil(side / p)`` bilinear samples a side per output pixel, averaged)."""
    b, m = boxes.shape[:2]
    ids = torch.arange(b, device=boxes.device, dtype=boxes.dtype).repeat_interleave(m)
    rois = torch.cat([ids.unsqueeze(1), boxes.reshape(-1, 4)], 1)
    return roi_align(images, rois, p, spatial_scale=1.0, sampling_ratio=0, aligned=True)


_MEAN = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
_STD = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


class DevicePatches:
    """Finishes a ``collate_device`` batch on the images' device.

    ``__call__(images uint8 [B,3,H,W], mask [B,H,W], targets, params [B,M,12])`` ->
    (images float [B,3,H,W] ImageNet-normalised, padding 0; patches [B,M,3,p,p] normalised).
    Targets' ``boxes`` (normalised cxcywh) and ``size`` (unpadded h, w) place the patches."""

    def __init__(self, patch_size: int):
        self.patch_size = patch_size

    def __call__(self, images, mask, targets, params):
        dev = images.device
        mean, std = _MEAN.to(dev), _STD.to(dev)
        x = images.float()
        size = torch.stack([t["size"] for t in targets]).to(dev, torch.float32)  # [B, 2] h, w
        scale = size.flip(1).repeat(1, 2).unsqueeze(1)  # [B, 1, 4] w, h, w, h
        boxes = torch.stack([t["boxes"] for t in targets]).to(dev, torch.float32)
        boxes = box_convert(boxes, "cxcywh", "xyxy") * scale
        p = self.patch_size
        patches = cut_patches(x, boxes, p).div_(255).clamp_(0, 1)
        patches = augment(patches, params.reshape(-1, NUM_PARAMS))
        patches = patches.sub_(mean).div_(std).view(*boxes.shape[:2], 3, p, p)
        x = x.sub_(mean * 255).div_(std * 255).masked_fill_(mask.to(dev).unsqueeze(1), 0.0)
        return x, patches

"""The query patch (UP-DETR Sec. 3.1, Fig. 2): where it is cut, how it is cut, how it is jittered.

Used by the pretext data (training), the feature cache's roi pre-training, inference
(``updetr-lite localize``), the demo, the report's Figure 5 study and the notebooks, so that all
of them cut and augment a patch the same way. The device pipeline (data/device_patches.py)
draws the same boxes and the same augmentation numbers and applies them batched on the GPU.

Box conventions: ``sample_patch_boxes`` gives pixel xyxy [k, 4] on the full-resolution image
(what is cropped); ``sample_boxes`` / ``to_cxcywh`` give the same boxes normalised cxcywh
(the pretext target, independent of any later resize of the image).

Randomness: the box draws take an optional ``torch.Generator`` (default: torch's global RNG);
the augmentation uses torch's global RNG (torchvision's transforms have no generator
argument). Seed ``torch.manual_seed`` to repeat an augmentation.

RoI pooling of the patch feature (the lite 'roi' patch feature) needs the model's CNN map:
it is ``UPDETR.roi_patch_feature`` in models/updetr.py.
"""

from __future__ import annotations

import torch
from torchvision.ops import box_convert
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

# the authors' SimCLR-style patch augmentation: colour jitter (brightness, contrast,
# saturation, hue) with p 0.8, greyscale p 0.2, Gaussian blur with sigma in [0.1, 2.0] p 0.5;
# the device pipeline (data/device_patches.py) applies the same numbers in one batched pass
JITTER = (0.4, 0.4, 0.4, 0.1)
P_JITTER, P_GREY, P_BLUR = 0.8, 0.2, 0.5
SIGMA = (0.1, 2.0)
BLUR_KERNEL = 13  # 2 * ceil(3 * max sigma) + 1


def sample_patch_boxes(
    h: int, w: int, num: int, min_patch: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``num`` query patch boxes [num, 4] xyxy in pixels of an (h, w) image, float32.

    The authors' sampling: width and height independently uniform (integers) in
    [min_patch, side - min_patch], then a uniform top-left corner, so any aspect ratio occurs.
    For sides below 2 * min_patch the size is min(min_patch, side). Draw order: all widths,
    all x corners, all heights, all y corners.
    """

    def draw(side: int) -> tuple[torch.Tensor, torch.Tensor]:
        lo = min(min_patch, side)
        hi = max(side - min_patch, lo)
        size = torch.randint(lo, hi + 1, (num,), generator=generator)
        # uniform corner in [0, side - size]: floor of a uniform real, per patch
        start = (torch.rand(num, generator=generator) * (side - size + 1)).floor()
        start = torch.minimum(start, (side - size).to(start.dtype))
        return start, size.to(start.dtype)

    x0, bw = draw(w)
    y0, bh = draw(h)
    return torch.stack((x0, y0, x0 + bw, y0 + bh), dim=-1)


def to_cxcywh(boxes_xyxy: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Pixel xyxy boxes [k, 4] of an (h, w) image -> normalised cxcywh [k, 4]."""
    return box_convert(boxes_xyxy / torch.tensor([w, h, w, h]), "xyxy", "cxcywh")


def sample_boxes(
    h: int, w: int, num: int, min_patch: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``sample_patch_boxes`` as normalised cxcywh [num, 4] (the pretext target boxes)."""
    return to_cxcywh(sample_patch_boxes(h, w, num, min_patch, generator), h, w)


def patch_augmentation() -> v2.Compose:
    """SimCLR-style colour augmentation of uint8 [3, h, w] patches, without flip (the paper:
    a flip "may make the pretext too difficult"): colour jitter 0.4/0.4/0.4/0.1 with p 0.8,
    grayscale p 0.2, Gaussian blur with sigma in [0.1, 2.0] with p 0.5.

    The blur kernel is 2 * ceil(3 * 2.0) + 1 = 13 px, wide enough for the largest sigma;
    torchvision needs a kernel size where the authors' PIL blur took only a radius.
    """
    return v2.Compose(
        [
            v2.RandomApply([v2.ColorJitter(*JITTER)], p=P_JITTER),
            v2.RandomGrayscale(p=P_GREY),
            v2.RandomApply([v2.GaussianBlur(kernel_size=BLUR_KERNEL, sigma=SIGMA)], p=P_BLUR),
        ]
    )


def crop_patches(
    image: torch.Tensor, boxes_xyxy: torch.Tensor, patch_size: int, augment=None
) -> torch.Tensor:
    """Cut pixel xyxy boxes [k, 4] (rounded to whole pixels) out of a uint8 [3, H, W] image,
    resize each to patch_size squared (antialiased) and apply ``augment`` (e.g.
    ``patch_augmentation()``) to each in turn -> uint8 [k, 3, p, p]."""
    p = patch_size
    out = []
    for x0, y0, x1, y1 in torch.as_tensor(boxes_xyxy).round().long().tolist():
        patch = TF.resize(image[:, y0:y1, x0:x1], [p, p], antialias=True)
        out.append(augment(patch) if augment is not None else patch)
    return torch.stack(out)

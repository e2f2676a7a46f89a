# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     notebook_metadata_filter: kernelspec,jupytext
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python (updetr-lite)
#     language: python
#     name: updetr-lite
# ---

# %% [markdown]
# # 1. Random query patches
#
# **Run time:** 88 s (measured with `updetr-lite notebooks --only 01`, kernel start
# included, on a busy 2-core machine) at the default setting.
#
# UP-DETR pre-trains DETR without labels. From every unlabeled image it **crops random
# patches**, the *query patches*, and asks the detector to find where each one came from.
# This notebook shows how those patches are made:
#
# 1. the crop boxes, drawn on a photo;
# 2. the patches before and after the SimCLR-style colour augmentation;
# 3. how patch sizes and positions are sampled;
# 4. what the model finally receives (tensor shapes).
#
# `SMOKE = True` uses the tiny test settings; set `SMOKE = False` for the lite settings.

# %% tags=["parameters"]
SMOKE = False  # True: tiny settings for the test suite
RESULTS_DIR = "results"  # where the checkable values are written (JSON)
SEED = 0
NUM_SAMPLES = 400  # patch boxes drawn for the histograms

# %%
import random
from pathlib import Path

import matplotlib.pyplot as plt
import torch

from updetr_lite import viz
from updetr_lite.tutorial import localize
from updetr_lite.tutorial import notebook_checks as nc

# the checkout: papermill runs a notebook in notebooks/, JupyterLab (scripts/lab.sh) in
# notebooks/work/; its runs/ and .cache/ are found from there
ROOT = next((p for p in Path.cwd().parents if (p / "notebooks").is_dir()), Path.cwd().parent)

torch.manual_seed(SEED)
random.seed(SEED)
PRESET = "smoke" if SMOKE else "lite"
results = {}

# %%
cfg = nc.notebook_config(PRESET, cache_dir=ROOT / ".cache" / "updetr_lite")
M, p, min_patch = cfg.pretext.num_patches, cfg.pretext.patch_size, cfg.pretext.min_patch
print(f"M = {M} query patches per image, resized to {p}x{p}; sides >= {min_patch} px")
print("(the paper: M = 10, 128x128, sides in [8, side - 8] px)")

# %% [markdown]
# ## The crop boxes
#
# Width and height are drawn **independently and uniformly** in `[min_patch, side - min_patch]`
# pixels, then the top-left corner uniformly where the box fits. Any aspect ratio is allowed,
# and patches may overlap. The boxes are taken on the full-resolution image.

# %%
from updetr_lite.data.build import build_pretext_dataset
from updetr_lite.data.pretext import collate_pretext
from updetr_lite.data.query_patches import sample_patch_boxes

dataset = build_pretext_dataset(cfg)  # the embedded unlabeled images
photos = localize.demo_photos()
name, photo = next(iter(photos.items()))
h, w = photo.shape[:2]
generator = torch.Generator().manual_seed(SEED)
# the dataset's own recipe, applied to the photo: boxes, crops, augmentation, resize
image, target, patches = dataset.make_sample(
    torch.from_numpy(photo).permute(2, 0, 1).contiguous(), 0, generator
)
boxes_px = viz.cxcywh_to_pixel_xyxy(target["boxes"], (h, w))
viz.show_image(
    photo, boxes_px, [f"patch {i}" for i in range(M)], title=f"{name}: {M} random query patches"
)
plt.show()

# %% [markdown]
# ## The patches, before and after augmentation
#
# Each crop is resized to `p x p`. During pre-training it is then colour-augmented as in
# SimCLR: colour jitter (brightness, contrast, saturation 0.4, hue 0.1) with probability 0.8,
# grayscale with probability 0.2 and a Gaussian blur with probability 0.5. There is **no
# flip**: the authors found it makes the pretext too hard. The augmentation makes the model
# match the patch by content, not by exact pixel colours. Top row: the plain crops; bottom
# row: what the dataset gave the model.

# %%
clean = localize.query_patches(photo, boxes_px, p, augment=False)
viz.patch_gallery(
    torch.cat([clean, patches]),
    [f"patch {i}" for i in range(M)] + [f"augmented {i}" for i in range(M)],
    ncols=M,
)
plt.show()
results["patch_shape"] = list(patches.shape)
results["augmentation_changed_pixels"] = float((clean - patches).abs().mean())

# %% [markdown]
# ## How sizes and positions are distributed
#
# Drawing many boxes shows the rule: widths and heights are flat between their limits,
# while centres pile up in the middle of the image (a large box can only sit near the centre).

# %%
px = torch.cat(
    [
        sample_patch_boxes(h, w, M, min_patch, generator)
        for _ in range(20 if SMOKE else NUM_SAMPLES // M)
    ]
)
widths, heights = px[:, 2] - px[:, 0], px[:, 3] - px[:, 1]
viz.plot_histograms(
    {
        "width (px)": widths,
        "height (px)": heights,
        "centre x / w": (px[:, 0] + px[:, 2]) / 2 / w,
        "centre y / h": (px[:, 1] + px[:, 3]) / 2 / h,
    }
)
plt.show()
results["width_min"], results["width_max"] = float(widths.min()), float(widths.max())
results["height_min"], results["height_max"] = float(heights.min()), float(heights.max())
results["allowed_width"] = [min_patch, w - min_patch]
results["allowed_height"] = [min_patch, h - min_patch]
results["image_size"] = [h, w]

# %% [markdown]
# ## What the model receives
#
# The pre-training dataset (`updetr_lite.data.pretext.PretextDataset`) does all of the above for
# every image of an unlabeled folder, and `collate_pretext` pads a batch:
#
# - `images` `[B, 3, H, W]` ImageNet-normalised, `mask` `[B, H, W]` (True = padding);
# - `patches` `[B, M, 3, p, p]`, the augmented query patches;
# - one target per image: `boxes` `[M, 4]` (cxcywh, normalised: the answer), `labels` `[M]`, all 1
#   ("this is the query patch").

# %%
batch = collate_pretext([dataset[i] for i in range(2)])
images, mask, targets, patches = batch
print("images ", tuple(images.shape), images.dtype)
print("mask   ", tuple(mask.shape), mask.dtype)
print("patches", tuple(patches.shape))
print("target boxes", tuple(targets[0]["boxes"].shape), "labels", targets[0]["labels"].tolist())
results["batch_images"] = list(images.shape)
results["batch_patches"] = list(patches.shape)
results["target_boxes"] = list(targets[0]["boxes"].shape)
results["target_labels"] = targets[0]["labels"].tolist()
results["num_patches"] = M
results["patch_size"] = p
results["targets_in_unit_square"] = bool(
    all(((t["boxes"] >= 0) & (t["boxes"] <= 1)).all() for t in targets)
)
ih, iw = images.shape[-2:]
viz.show_image(
    images[0],
    viz.cxcywh_to_pixel_xyxy(
        targets[0]["boxes"], (int((~mask[0]).any(1).sum()), int((~mask[0]).any(0).sum()))
    ),
    [f"patch {i}" for i in range(M)],
    title="a training image and its query patch boxes",
)
plt.show()
viz.patch_gallery(patches[0], [f"query patch {i}" for i in range(M)])
plt.show()

# %%
path = nc.write_results(RESULTS_DIR, "01_random_query_patches", results)
print(f"recorded in {path}:")
for key, value in sorted(results.items()):
    print(f"  {key} = {value}")

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
# # 6. Patch localization demo
#
# Choose an image, choose query patches with the sliders (x, y, width, height), toggle the
# augmentation of the patches, and see where the pre-trained UP-DETR finds them: dashed boxes
# are your query patches, solid boxes the model's answer with its confidence. This is the
# paper's Figure 5 (unsupervised localization of query patches), live.
#
# **Checkpoint.** By default the kit's lite pretext checkpoint, trained on first use on the
# embedded photos (a progress bar shows it: 1500 steps, roughly 15 minutes on 2 CPU cores; then cached in
# `.cache/updetr_lite/demo/`). To use the authors' UP-DETR checkpoint
# (`up-detr-pre-training-60ep-imagenet.pth`, ResNet-50, downloaded by you), set
# `AUTHORS_CHECKPOINT` to its local path. Nothing is downloaded by the kit.
#
# Without a browser (papermill, `INTERACTIVE = False`) the demo shows a static figure.

# %% tags=["parameters"]
SMOKE = False
RESULTS_DIR = "results"
INTERACTIVE = True  # False: static figure (headless runs)
AUTHORS_CHECKPOINT = ""  # local path to the authors' pre-training checkpoint, or empty
CHECKPOINT = ""  # where the kit's lite checkpoint is kept; empty: .cache/updetr_lite/demo/
NUM_PATCHES = 2  # query patches with sliders

# %%
import os

import matplotlib.pyplot as plt

from updetr_lite import demo
from updetr_lite import notebook_checks as nc

# the browser test starts JupyterLab with UPDETR_DEMO_SMOKE=1: a tiny checkpoint
SMOKE = SMOKE or demo.env_flag("UPDETR_DEMO_SMOKE")
CHECKPOINT = CHECKPOINT or os.environ.get("UPDETR_DEMO_CHECKPOINT", "")
checkpoint = demo.ensure_lite_checkpoint(
    CHECKPOINT or None, smoke=SMOKE, authors_checkpoint=AUTHORS_CHECKPOINT or None
)
photos = demo.demo_photos()
print("checkpoint:", checkpoint)
print("images:", ", ".join(photos))

# %% [markdown]
# ## The demo
#
# Move a slider and the prediction updates; the text box lists each query patch, the
# predicted box (pixels x0, y0, x1, y1), its confidence and its IoU with the query patch.
# You can also type the path of your own image, or upload one.

# %%
state = demo.open_demo(checkpoint, photos, interactive=INTERACTIVE, num_patches=NUM_PATCHES)
plt.show()

# %% [markdown]
# ## Check: a patch cut from a training image
#
# The demo checkpoint was trained on these photos, so a patch cut from one of them should be
# found where it was cut: we record the IoU between the predicted box and the patch's own
# box for a fixed patch (the middle of the first training photo), without and with the
# augmentation, and for 4 seeded random patches of every training photo, whose mean IoU
# must be above 0.5.

# %%
results = {}
model, cfg = state.model, state.cfg
training_photos = demo.demo_photos(SMOKE)
train_photo = next(iter(training_photos.values()))
h, w = train_photo.shape[:2]
fixed_box = [0.3 * w, 0.3 * h, 0.6 * w, 0.6 * h]
results["iou_fixed_patch"] = demo.training_image_patch_check(model, cfg, train_photo, fixed_box)
results["iou_fixed_patch_augmented"] = demo.training_image_patch_check(
    model, cfg, train_photo, fixed_box, augment=True
)
ious = demo.training_patches_check(model, cfg, training_photos, per_image=4)
results["iou_training_patches"] = ious
results["iou_training_patches_mean"] = sum(ious) / len(ious)
print(f"mean IoU over {len(ious)} training patches: {results['iou_training_patches_mean']:.3f}")
results["smoke"] = bool(SMOKE)
results["authors_checkpoint"] = bool(AUTHORS_CHECKPOINT)
results["shown_boxes"] = len(state.result["boxes"])
check = demo.DemoState(model, cfg, train_photo, [fixed_box])
demo.static_demo_figure(check)
plt.show()
print(check.summary())
if not AUTHORS_CHECKPOINT:  # the kit's checkpoint must find patches of its training photos
    mean_iou = results["iou_training_patches_mean"]
    assert mean_iou > 0.5, f"mean IoU {mean_iou:.3f} <= 0.5"

# %%
path = nc.write_results(RESULTS_DIR, "06_patch_localization_demo", results)
print(f"recorded in {path}:")
for key, value in sorted(results.items()):
    print(f"  {key} = {value}")

# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     notebook_metadata_filter: kernelspec,jupytext
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.7
#   kernelspec:
#     display_name: Python (updetr-lite)
#     language: python
#     name: updetr-lite
# ---

# %% [markdown]
# # The lite scale's frozen CNN
#
# No weights can be downloaded, and UP-DETR needs a pre-trained, frozen CNN. At lite scale
# the kit trains its own: ResNet-18 up to layer3 on dense per-cell class labels of a
# **separate** generated set (its own seed; never the detection train/val images). This is a
# supervised stand-in for the paper's self-supervised SwAV CNN. A k-NN probe on object crops
# of the val split, against a random CNN, shows the features are useful.
#
# At lite scale (`shipped = True`) the run does not train: it copies the CNN the kit ships
# (`updetr_lite/lite_cnn/`, trained by this notebook's code with the same budget; its
# `record.json` holds the sha256, checked here, and the probe) so that every lite number is
# made with the same weights on every machine. `python -m reproduce.lite_cnn --out DIR`
# trains a new one.

# %% tags=["parameters"]
# Parameters (papermill replaces this cell; the defaults run a toy example by hand)
run_name = "example"
run_dir = "runs/notebook_example"
out_root = "runs"
scale = "smoke"
preset = "smoke"
overrides = []
seed = 0
threads = 1
cnn_steps = 3
cnn_images = 16
cnn_batch = 8
cnn_box_weight = 1.0
shipped = False  # copy the shipped lite CNN instead of training

# %%
import json
from pathlib import Path

from reproduce import report

run_dir = Path(run_dir).resolve()
run_dir.mkdir(parents=True, exist_ok=True)
print(f"run {run_name} ({scale} scale) -> {run_dir}")

# %%
import os

import torch

from reproduce.lite_cnn import build_lite_cnn, install_shipped
from updetr_lite.config import get_config

if shipped:
    summary = install_shipped(run_dir)
    print(f"the shipped lite CNN: {summary['shipped']['source']}")
    # the runs after this one start two at a time: build their embedded data once, here
    from updetr_lite.data.embedded import build_embedded

    build_embedded(get_config(preset, overrides).data)
else:
    # nothing else runs while the CNN trains (every run needs it): use every core
    torch.set_num_threads(os.cpu_count() or 1)
    cfg = get_config(preset, overrides)
    summary = build_lite_cnn(
        cfg, run_dir, cnn_steps, cnn_images, cnn_batch, box_weight=cnn_box_weight
    )
print(json.dumps(summary["probe"], indent=1))

# %%
records = report.read_jsonl(run_dir / "log.jsonl")
plt = report._plt()
fig, axes = plt.subplots(1, 2, figsize=(8, 3))
for ax, k in zip(axes, ("loss", "object_acc")):
    x, y = report.curve(records, k)
    ax.plot(x, y)
    ax.set_title(k)
    ax.set_xlabel("step")
fig.tight_layout()
fig.savefig(run_dir / "curves.png", dpi=100)

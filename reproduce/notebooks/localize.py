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
# # Figure 5: unsupervised localization of query patches
#
# Random patches are cut from val images and fed to each pre-trained model as query patches;
# the most confident object query of each patch's group gives its box. The number: mean IoU
# with the patch's true box, beside a baseline that always answers one fixed box.

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
n_images = 100
user_overrides = []

# %%
from pathlib import Path

from IPython.display import Image, Markdown, display

from reproduce import report
from reproduce.plan import plan, run_config

run_dir = Path(run_dir).resolve()
run_dir.mkdir(parents=True, exist_ok=True)
print(f"run {run_name} ({scale} scale) -> {run_dir}")

# %%
from updetr_lite.data.embedded import build_embedded

p = plan(scale)
rows = p.artefacts["fig5"]
runs = [(row.label, Path(out_root) / n) for row in rows for n in row.runs]
cfg = run_config(p, rows[0].runs[0], out_root, user_overrides)
if cfg.data.detection == "embedded":
    images = sorted(Path(build_embedded(cfg.data).val_images).iterdir())
else:  # paper scale: VOC test2007 images
    root = Path(cfg.data.detection_root) / "VOC2007"
    ids = (root / "ImageSets" / "Main" / "test.txt").read_text().split()
    images = [root / "JPEGImages" / f"{i}.jpg" for i in ids]
summary = report.localization_study(runs, images, run_dir, n_images=n_images, seed=seed)
display(Markdown(report.localization_text(out_root)))

# %%
if (run_dir / "fig5.png").exists():
    display(Image(str(run_dir / "fig5.png")))

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
# # 3. Matching and losses
#
# **Run time:** 10 s (measured with `updetr-lite notebooks --only 03,04,05,06`, kernel start
# included, on a 2-core machine with one other job on the second core) at the default
# setting: it loads a checkpoint and trains nothing.
#
# The model makes `N` predictions; the targets are the `M` query patch boxes. Which prediction
# answers which patch? As DETR, UP-DETR finds the cheapest one-to-one **assignment** with the
# Hungarian algorithm, then computes the losses on the matched pairs. The cost of pairing
# prediction `i` with target `j` is
#
# `cost = 1 * (-p_i(patch class)) + 5 * L1(box_i, box_j) + 2 * (-GIoU(box_i, box_j))`.
#
# We use the demo's pre-trained checkpoint (the small lite checkpoint that ships with the
# kit, see notebook 6, which does localise its query patches), so that the predictions mean
# something; `MAIN_RUN = True` takes the main job's `runs/main/pre_crop_s0/last.pth` instead.

# %% tags=["parameters"]
SMOKE = False
RESULTS_DIR = "results"
SEED = 0
CHECKPOINT = ""  # a pretext checkpoint file; empty: the shipped one (or MAIN_RUN's)
MAIN_RUN = False  # True: the main job's pre-training (runs/main/pre_crop_s0) when it exists

# %%
import random
from pathlib import Path

import matplotlib.pyplot as plt
import torch

from updetr_lite import viz
from updetr_lite.tutorial import checkpoints, localize
from updetr_lite.tutorial import notebook_checks as nc

# the checkout: papermill runs a notebook in notebooks/, JupyterLab (scripts/lab.sh) in
# notebooks/work/; its runs/ and .cache/ are found from there
ROOT = next((p for p in Path.cwd().parents if (p / "notebooks").is_dir()), Path.cwd().parent)

torch.manual_seed(SEED)
random.seed(SEED)
PRESET = "smoke" if SMOKE else "lite"
results = {}

# %%
from updetr_lite.data.query_patches import sample_boxes
from updetr_lite.models import HungarianMatcher, build_criterion

main_run = ROOT / "runs" / "main" / "pre_crop_s0" / "last.pth"  # the lite pre-training of run.sh
checkpoint = checkpoints.ensure_lite_checkpoint(
    CHECKPOINT or None, main_run=main_run if MAIN_RUN else None
)
print(checkpoints.checkpoint_note(checkpoint, main_run))
model, cfg = checkpoints.load_demo_model(checkpoint)
N, M = model.num_queries, model.num_patches
photo = next(iter(localize.demo_photos(SMOKE).values()))
h, w = photo.shape[:2]
images, mask = localize.prepare_image(
    photo, max(cfg.data.pretext_scales), cfg.data.pretext_max_size
)
generator = torch.Generator().manual_seed(SEED)
patch_boxes = sample_boxes(h, w, M, cfg.pretext.min_patch, generator)[None]
with torch.no_grad():
    outputs = model(images, mask, patch_boxes=patch_boxes)
targets = [{"boxes": patch_boxes[0], "labels": torch.ones(M, dtype=torch.int64)}]
print(f"{N} predictions, {M} targets")

# %% [markdown]
# ## The cost matrix, term by term
#
# Rows are predictions (object queries, in groups of `N/M`), columns are the query patches.
# Red circles mark the assignment that minimises the total.

# %%
terms = nc.cost_terms(
    outputs["pred_logits"][0],
    outputs["pred_boxes"][0],
    targets[0]["labels"],
    targets[0]["boxes"],
    cfg.loss.cost_class,
    cfg.loss.cost_bbox,
    cfg.loss.cost_giou,
)
assignment = nc.global_assignment(terms["total"])
fig, axes = plt.subplots(1, 4, figsize=(14, 4))
for ax, key in zip(axes, ("class", "bbox", "giou", "total")):
    viz.plot_cost_matrix(
        terms[key],
        assignment if key == "total" else None,
        ax,
        title=f"{key} cost",
        ylabel="prediction (object query)" if key == "class" else "",
    )
    for g in range(1, M):
        ax.axhline(g * N // M - 0.5, color="w", linewidth=0.8)
plt.tight_layout()
plt.show()
matched = HungarianMatcher(cfg.loss.cost_class, cfg.loss.cost_bbox, cfg.loss.cost_giou)(
    outputs, targets
)[0]
results["matcher_agrees"] = sorted(zip(*[t.tolist() for t in matched])) == sorted(
    zip(*[t.tolist() for t in assignment])
)

# %% [markdown]
# ## Global matching versus per-group matching
#
# The paper and the authors' code match **globally**: any of the `N` predictions may answer any
# patch. An alternative is to let patch `g` be answered only by its own group. The global
# assignment is never more expensive (it has more choices); once the model has learned the
# task, the two mostly agree because each group finds its own patch.

# %%
per_group = nc.per_group_assignment(terms["total"], M)
cost_global, cost_group = (
    nc.assignment_cost(terms["total"], assignment),
    nc.assignment_cost(terms["total"], per_group),
)
order = assignment[1].argsort()
own = [int(r) // (N // M) == int(c) for r, c in zip(assignment[0][order], assignment[1][order])]
print(f"global assignment:    queries {assignment[0][order].tolist()}  cost {cost_global:.3f}")
print(f"per-group assignment: queries {per_group[0].tolist()}  cost {cost_group:.3f}")
print(f"patches matched inside their own group by global matching: {sum(own)}/{M}")
pred_px = viz.cxcywh_to_pixel_xyxy(outputs["pred_boxes"][0], (h, w))
fig, axes = plt.subplots(1, 2, figsize=(10, 5))
for ax, (title, (rows, cols)) in zip(axes, [("global", assignment), ("per group", per_group)]):
    viz.show_image(
        photo,
        viz.cxcywh_to_pixel_xyxy(targets[0]["boxes"], (h, w)),
        [f"patch {i}" for i in range(M)],
        ax=ax,
        linestyle="--",
    )
    # the queries' tags below their boxes, so they do not cover the patches' tags
    matched_px = pred_px[rows[cols.argsort()]]
    q_tags = [f"q{int(r)}" for r in rows[cols.argsort()]]
    viz.draw_boxes(ax, matched_px, q_tags, label_at="bottom")
    ax.set_title(f"{title} matching", fontsize=10)
fig.suptitle("dashed: query patch, solid: the object query matched to it", fontsize=9)
fig.tight_layout()
plt.show()
results["global_cost"], results["per_group_cost"] = cost_global, cost_group
results["matched_in_own_group"] = sum(own)

# %% [markdown]
# ## The losses and their weights
#
# On the matched pairs: cross-entropy for the class (over **all** `N` predictions: unmatched
# ones must say "no object", weighted `M/N` to balance the many negatives), L1 and GIoU on the
# boxes, and the **reconstruction** loss: the decoder output must also reproduce the patch
# feature (both L2-normalised, squared error). With auxiliary losses every decoder layer gets
# the same terms (suffix `_i`). The total `loss` is the weighted sum.

# %%
criterion = build_criterion(cfg, pretext=True)
with torch.no_grad():
    losses = criterion(outputs, targets)
weights = criterion.weight_dict
rows = [(k, float(v) / weights[k], weights[k], float(v)) for k, v in losses.items() if k in weights]
print(f"{'term':<14}{'raw':>9}{'weight':>8}{'weighted':>10}")
for k, raw, wt, weighted in rows:
    print(f"{k:<14}{raw:>9.4f}{wt:>8.2f}{weighted:>10.4f}")
print(f"{'loss (sum)':<14}{'':>17}{float(losses['loss']):>10.4f}")
print(f"no-object weight: {float(criterion.empty_weight[-1]):.3f} (M/N = {M / N:.3f})")
fig, ax = plt.subplots(figsize=(7, 3))
ax.bar([r[0] for r in rows], [r[3] for r in rows])
ax.set_ylabel("weighted loss")
plt.xticks(rotation=60, fontsize=7)
plt.show()
results["loss_total"] = float(losses["loss"])
results["loss_terms_sum"] = sum(r[3] for r in rows)
results["loss_terms"] = sorted(k for k, *_ in rows)
results["eos_weight"] = float(criterion.empty_weight[-1])
results["num_queries"], results["num_patches"] = N, M

# %%
path = nc.write_results(RESULTS_DIR, "03_matching_and_losses", results)
print(f"recorded in {path}:")
for key, value in sorted(results.items()):
    print(f"  {key} = {value}")

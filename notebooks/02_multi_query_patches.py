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
# # 2. Multiple query patches: groups, the attention mask, shuffle and dropout
#
# **Run time:** 19 s (measured with `updetr-lite notebooks --only 02`, kernel start
# included, on a busy 2-core machine) at the default setting.
#
# DETR has `N` object queries. UP-DETR gives each of the `M` query patches a **group** of
# `N / M` object queries: the patch feature is added to every object query of its group.
# Three details make this work:
#
# - an **attention mask** in the decoder's self-attention, so that groups cannot see each
#   other (each group should solve its own patch);
# - **object query shuffle**: which object query embeddings serve a group is permuted at every
#   forward, so that no embedding becomes tied to one group;
# - **patch dropout**: each copy of a patch feature is zeroed with probability 0.1, so that the
#   queries must also rely on their own embedding.

# %% tags=["parameters"]
SMOKE = False
RESULTS_DIR = "results"
SEED = 0

# %%
import random
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
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
from updetr_lite.data.query_patches import sample_boxes
from updetr_lite.models import build_updetr, group_attention_mask

# at least two decoder layers: the first layer's self-attention mixes only the all-zero
# decoder input, so groups could not influence each other there even without the mask
cfg = nc.notebook_config(
    PRESET, ["model.dec_layers=2"] if SMOKE else [], cache_dir=ROOT / ".cache" / "updetr_lite"
)
N, M = cfg.model.num_queries, cfg.pretext.num_patches
n = N // M
print(f"N = {N} object queries, M = {M} query patches -> {n} object queries per group")
print("group of each object query:", (torch.arange(N) // n).tolist())

# %% [markdown]
# ## The attention mask (the paper's Figure 2b)
#
# The mask is `N x N` and is **added** to the self-attention logits: `0` inside a group and
# `-inf` across groups, so after the softmax a query gives zero weight to other groups.
# The authors' code built it with a loop that is only right when `N = M * M`; the kit's
# `group_attention_mask` is right for any `N` divisible by `M`.

# %%
fig, axes = plt.subplots(1, 2, figsize=(9, 4.3))
viz.plot_attention_mask(group_attention_mask(100, 10), axes[0], "the paper: N = 100, M = 10")
viz.plot_attention_mask(group_attention_mask(N, M), axes[1], f"this notebook: N = {N}, M = {M}")
plt.show()

# %% [markdown]
# ## Do masked groups really not influence each other?
#
# We measure it on the model itself. Move one query patch (so its patch feature changes) and
# look at how far every object query's outputs (box and class logits) move. With the mask,
# the other groups must not move at all; without it, they do.

# %%
model = build_updetr(cfg).eval()
photo = next(iter(localize.demo_photos().values()))
images, mask = localize.prepare_image(
    photo, max(cfg.data.pretext_scales), cfg.data.pretext_max_size
)
with torch.no_grad():
    features, fmask = model.backbone(images, mask)
patch_boxes = sample_boxes(
    *photo.shape[:2], M, cfg.pretext.min_patch, torch.Generator().manual_seed(SEED)
)[None]
influence = {}
for flag in (True, False):
    model.attention_mask = flag
    influence[flag] = [nc.group_influence(model, features, fmask, patch_boxes, g) for g in range(M)]
model.attention_mask = True
x = np.arange(M)
fig, ax = plt.subplots(figsize=(7, 3))
ax.bar(x - 0.3, [r["own"] for r in influence[True]], 0.2, label="own group, mask on")
ax.bar(x - 0.1, [r["others"] for r in influence[True]], 0.2, label="other groups, mask on")
ax.bar(x + 0.1, [r["own"] for r in influence[False]], 0.2, label="own group, mask off")
ax.bar(x + 0.3, [r["others"] for r in influence[False]], 0.2, label="other groups, mask off")
ax.set_xticks(x)
ax.set_xlabel("moved query patch")
ax.set_ylabel("max |change| of outputs")
ax.legend(fontsize=7)
# with the mask on, moving a patch changes nothing in the other groups: those bars are 0
viz.mark_zero_bars(ax, "0 (blocked)")
plt.show()
results["masked_others_max"] = max(r["others"] for r in influence[True])
results["masked_own_min"] = min(r["own"] for r in influence[True])
results["unmasked_others_max"] = max(r["others"] for r in influence[False])
print({k: f"{v:.2e}" for k, v in results.items()})

# %% [markdown]
# ## Object query shuffle
#
# At each training forward one random permutation of the `N` query embeddings is drawn (shared
# by the batch): slot `i` of group `g` gets embedding `perm[g * N/M + i]`. The picture shows,
# for six forwards, which group each embedding served. The paper uses the shuffle; the
# authors' release turned it off as "not helpful" and keeps it as a flag
# (`pretext.query_shuffle`).

# %%
perms = torch.stack([torch.randperm(N) for _ in range(6)])
served = torch.empty_like(perms)
for row, perm in enumerate(perms):
    served[row, perm] = torch.arange(N) // n  # embedding perm[j] serves group j // n
fig, ax = plt.subplots(figsize=(8, 2.2))
ax.imshow(served, cmap="tab10", vmin=0, vmax=9, aspect="auto", interpolation="nearest")
ax.set_xlabel("object query embedding")
ax.set_ylabel("forward pass")
ax.set_title("group served by each embedding (colour)")
viz.color_key(ax, {f"group {g}": plt.get_cmap("tab10")(g) for g in range(M)})
plt.tight_layout()
plt.show()

# %% [markdown]
# ## Patch dropout
#
# Each `(object query, image)` copy of a patch feature is zeroed with probability
# `pretext.patch_dropout` during training (no rescaling, as the authors). We count the zeroed
# copies in what the decoder actually receives.

# %%
model.train()
model.query_shuffle = False
for module in model.modules():  # keep the transformer's own dropout out of the way
    if isinstance(module, torch.nn.Dropout):
        module.eval()
frac = nc.dropped_patch_fraction(
    model,
    features.expand(8, -1, -1, -1),
    fmask.expand(8, -1, -1),
    patch_boxes.expand(8, -1, -1),
    trials=10,
)
model.eval()
print(f"zeroed copies: {frac:.3f} (setting: {cfg.pretext.patch_dropout})")
results["patch_dropout_setting"] = cfg.pretext.patch_dropout
results["patch_dropout_measured"] = frac
results["patch_dropout_draws"] = 10 * 8 * N

# %%
path = nc.write_results(RESULTS_DIR, "02_multi_query_patches", results)
print(f"recorded in {path}:")
for key, value in sorted(results.items()):
    print(f"  {key} = {value}")

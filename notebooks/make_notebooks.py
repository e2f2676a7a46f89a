"""Write the tutorial notebooks (no outputs) from the cell sources below.

    .venv/bin/python notebooks/make_notebooks.py

Each notebook is a story: markdown, then short calls into the library (``updetr_lite.viz``
draws, ``updetr_lite.notebook_checks`` measures, ``updetr_lite.demo`` runs the demo). Its
first code cell is tagged ``parameters`` for papermill: ``SMOKE = True`` is the tiny setting
the tests run, ``SMOKE = False`` the one for people. Each records its checkable values as
JSON in ``RESULTS_DIR`` (tests/test_notebooks.py reads them).
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent
KERNELSPEC = {"name": "updetr-lite", "display_name": "Python (updetr-lite)", "language": "python"}


def setup(numpy: bool = False, path: bool = False) -> str:
    """The first code cell after the parameters: imports (only those the notebook uses), seeds."""
    std = "import random\n" + ("from pathlib import Path\n" if path else "")
    third = "import matplotlib.pyplot as plt\n" + ("import numpy as np\n" if numpy else "")
    return f"""\
{std}
{third}import torch

from updetr_lite import demo, viz
from updetr_lite import notebook_checks as nc

torch.manual_seed(SEED)
random.seed(SEED)
PRESET = "smoke" if SMOKE else "lite"
results = {{}}"""


def md(text: str):
    return new_markdown_cell(text.strip("\n"))


def code(text: str):
    return new_code_cell(text.strip("\n"))


def params(text: str):
    cell = code(text)
    cell.metadata["tags"] = ["parameters"]
    return cell


def notebook(cells) -> nbformat.NotebookNode:
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = dict(KERNELSPEC)
    nb.metadata["language_info"] = {"name": "python"}
    return nb


def record(name: str) -> str:
    return f"""\
path = nc.write_results(RESULTS_DIR, "{name}", results)
print(f"recorded in {{path}}:")
for key, value in sorted(results.items()):
    print(f"  {{key}} = {{value}}")"""


# ----------------------------------------------------------------------------- 01


def nb01():
    return notebook(
        [
            md("""
# 1. Random query patches

UP-DETR pre-trains DETR without labels. From every unlabeled image it **crops random
patches**, the *query patches*, and asks the detector to find where each one came from.
This notebook shows how those patches are made:

1. the crop boxes, drawn on a photo;
2. the patches before and after the SimCLR-style colour augmentation;
3. how patch sizes and positions are sampled;
4. what the model finally receives (tensor shapes).

`SMOKE = True` uses the tiny test settings; set `SMOKE = False` for the lite settings.
"""),
            params("""
SMOKE = False  # True: tiny settings for the test suite
RESULTS_DIR = "results"  # where the checkable values are written (JSON)
SEED = 0
NUM_SAMPLES = 400  # patch boxes drawn for the histograms
"""),
            code(setup()),
            code("""
cfg = nc.notebook_config(PRESET)
M, p, min_patch = cfg.pretext.num_patches, cfg.pretext.patch_size, cfg.pretext.min_patch
print(f"M = {M} query patches per image, resized to {p}x{p}; sides >= {min_patch} px")
print("(the paper: M = 10, 128x128, sides in [8, side - 8] px)")
"""),
            md("""
## The crop boxes

Width and height are drawn **independently and uniformly** in `[min_patch, side - min_patch]`
pixels, then the top-left corner uniformly where the box fits. Any aspect ratio is allowed,
and patches may overlap. The boxes are taken on the full-resolution image.
"""),
            code("""
from updetr_lite.data.build import build_pretext_dataset
from updetr_lite.data.pretext import collate_pretext, sample_patch_boxes

dataset = build_pretext_dataset(cfg)  # the embedded unlabeled images
photos = demo.demo_photos()
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
"""),
            md("""
## The patches, before and after augmentation

Each crop is resized to `p x p`. During pre-training it is then colour-augmented as in
SimCLR: colour jitter (brightness, contrast, saturation 0.4, hue 0.1) with probability 0.8,
grayscale with probability 0.2 and a Gaussian blur with probability 0.5. There is **no
flip**: the authors found it makes the pretext too hard. The augmentation makes the model
match the patch by content, not by exact pixel colours. Top row: the plain crops; bottom
row: what the dataset gave the model.
"""),
            code("""
clean = demo.query_patches(photo, boxes_px, p, augment=False)
viz.patch_gallery(
    torch.cat([clean, patches]),
    [f"patch {i}" for i in range(M)] + [f"augmented {i}" for i in range(M)],
    ncols=M,
)
plt.show()
results["patch_shape"] = list(patches.shape)
results["augmentation_changed_pixels"] = float((clean - patches).abs().mean())
"""),
            md("""
## How sizes and positions are distributed

Drawing many boxes shows the rule: widths and heights are flat between their limits,
while centres pile up in the middle of the image (a large box can only sit near the centre).
"""),
            code("""
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
"""),
            md("""
## What the model receives

The pre-training dataset (`updetr_lite.data.pretext.PretextDataset`) does all of the above for
every image of an unlabeled folder, and `collate_pretext` pads a batch:

- `images` `[B, 3, H, W]` ImageNet-normalised, `mask` `[B, H, W]` (True = padding);
- `patches` `[B, M, 3, p, p]`, the augmented query patches;
- one target per image: `boxes` `[M, 4]` (cxcywh, normalised: the answer), `labels` `[M]`, all 1
  ("this is the query patch").
"""),
            code("""
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
    title="a training image and its query patch boxes",
)
plt.show()
viz.patch_gallery(patches[0], [f"query patch {i}" for i in range(M)])
plt.show()
"""),
            code(record("01_random_query_patches")),
        ]
    )


# ----------------------------------------------------------------------------- 02


def nb02():
    return notebook(
        [
            md("""
# 2. Multiple query patches: groups, the attention mask, shuffle and dropout

DETR has `N` object queries. UP-DETR gives each of the `M` query patches a **group** of
`N / M` object queries: the patch feature is added to every object query of its group.
Three details make this work:

- an **attention mask** in the decoder's self-attention, so that groups cannot see each
  other (each group should solve its own patch);
- **object query shuffle**: which object query embeddings serve a group is permuted at every
  forward, so that no embedding becomes tied to one group;
- **patch dropout**: each copy of a patch feature is zeroed with probability 0.1, so that the
  queries must also rely on their own embedding.
"""),
            params("""
SMOKE = False
RESULTS_DIR = "results"
SEED = 0
"""),
            code(setup(numpy=True)),
            code("""
from updetr_lite.models import build_updetr, group_attention_mask

# at least two decoder layers: the first layer's self-attention mixes only the all-zero
# decoder input, so groups could not influence each other there even without the mask
cfg = nc.notebook_config(PRESET, ["model.dec_layers=2"] if SMOKE else [])
N, M = cfg.model.num_queries, cfg.pretext.num_patches
n = N // M
print(f"N = {N} object queries, M = {M} query patches -> {n} object queries per group")
print("group of each object query:", (torch.arange(N) // n).tolist())
"""),
            md("""
## The attention mask (the paper's Figure 2b)

The mask is `N x N` and is **added** to the self-attention logits: `0` inside a group and
`-inf` across groups, so after the softmax a query gives zero weight to other groups.
The authors' code built it with a loop that is only right when `N = M * M`; the kit's
`group_attention_mask` is right for any `N` divisible by `M`.
"""),
            code("""
fig, axes = plt.subplots(1, 2, figsize=(9, 4.3))
viz.plot_attention_mask(group_attention_mask(100, 10), axes[0], "the paper: N = 100, M = 10")
viz.plot_attention_mask(group_attention_mask(N, M), axes[1], f"this notebook: N = {N}, M = {M}")
plt.show()
"""),
            md("""
## Do masked groups really not influence each other?

We measure it on the model itself. Move one query patch (so its patch feature changes) and
look at how far every object query's outputs (box and class logits) move. With the mask,
the other groups must not move at all; without it, they do.
"""),
            code("""
model = build_updetr(cfg).eval()
photo = next(iter(demo.demo_photos().values()))
images, mask = demo.prepare_image(photo, max(cfg.data.pretext_scales), cfg.data.pretext_max_size)
with torch.no_grad():
    features, fmask = model.backbone(images, mask)
patch_boxes = demo.sample_patch_boxes(
    *photo.shape[:2], M, cfg.pretext.min_patch, random.Random(SEED)
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
plt.show()
results["masked_others_max"] = max(r["others"] for r in influence[True])
results["masked_own_min"] = min(r["own"] for r in influence[True])
results["unmasked_others_max"] = max(r["others"] for r in influence[False])
print({k: f"{v:.2e}" for k, v in results.items()})
"""),
            md("""
## Object query shuffle

At each training forward one random permutation of the `N` query embeddings is drawn (shared
by the batch): slot `i` of group `g` gets embedding `perm[g * N/M + i]`. The picture shows,
for six forwards, which group each embedding served. The paper uses the shuffle; the
authors' release turned it off as "not helpful" and keeps it as a flag
(`pretext.query_shuffle`).
"""),
            code("""
perms = torch.stack([torch.randperm(N) for _ in range(6)])
served = torch.empty_like(perms)
for row, perm in enumerate(perms):
    served[row, perm] = torch.arange(N) // n  # embedding perm[j] serves group j // n
fig, ax = plt.subplots(figsize=(8, 2.2))
ax.imshow(served, cmap="tab10", vmin=0, vmax=9, aspect="auto", interpolation="nearest")
ax.set_xlabel("object query embedding")
ax.set_ylabel("forward pass")
ax.set_title("group served by each embedding (colour)")
plt.show()
"""),
            md("""
## Patch dropout

Each `(object query, image)` copy of a patch feature is zeroed with probability
`pretext.patch_dropout` during training (no rescaling, as the authors). We count the zeroed
copies in what the decoder actually receives.
"""),
            code("""
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
"""),
            code(record("02_multi_query_patches")),
        ]
    )


# ----------------------------------------------------------------------------- 03


def nb03():
    return notebook(
        [
            md("""
# 3. Matching and losses

The model makes `N` predictions; the targets are the `M` query patch boxes. Which prediction
answers which patch? As DETR, UP-DETR finds the cheapest one-to-one **assignment** with the
Hungarian algorithm, then computes the losses on the matched pairs. The cost of pairing
prediction `i` with target `j` is

`cost = 1 * (-p_i(patch class)) + 5 * L1(box_i, box_j) + 2 * (-GIoU(box_i, box_j))`.

We use the demo's small pre-trained checkpoint, so that the predictions mean something.
"""),
            params("""
SMOKE = False
RESULTS_DIR = "results"
SEED = 0
CHECKPOINT = ""  # a pretext checkpoint; empty: the demo's lite checkpoint (trained on first use)
"""),
            code(setup()),
            code("""
from updetr_lite.models import HungarianMatcher, build_criterion

checkpoint = demo.ensure_lite_checkpoint(CHECKPOINT or None, smoke=SMOKE)
model, cfg = demo.load_demo_model(checkpoint)
N, M = model.num_queries, model.num_patches
photo = next(iter(demo.demo_photos(SMOKE).values()))
h, w = photo.shape[:2]
images, mask = demo.prepare_image(photo, max(cfg.data.pretext_scales), cfg.data.pretext_max_size)
patch_boxes = demo.sample_patch_boxes(h, w, M, cfg.pretext.min_patch, random.Random(SEED))[None]
with torch.no_grad():
    outputs = model(images, mask, patch_boxes=patch_boxes)
targets = [{"boxes": patch_boxes[0], "labels": torch.ones(M, dtype=torch.int64)}]
print(f"{N} predictions, {M} targets")
"""),
            md("""
## The cost matrix, term by term

Rows are predictions (object queries, in groups of `N/M`), columns are the query patches.
Red circles mark the assignment that minimises the total.
"""),
            code("""
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
        terms[key], assignment if key == "total" else None, ax, title=f"{key} cost"
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
"""),
            md("""
## Global matching versus per-group matching

The paper and the authors' code match **globally**: any of the `N` predictions may answer any
patch. An alternative is to let patch `g` be answered only by its own group. The global
assignment is never more expensive (it has more choices); once the model has learned the
task, the two mostly agree because each group finds its own patch.
"""),
            code("""
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
fig, axes = plt.subplots(1, 2, figsize=(9, 4.5))
for ax, (title, (rows, cols)) in zip(axes, [("global", assignment), ("per group", per_group)]):
    viz.show_image(
        photo,
        viz.cxcywh_to_pixel_xyxy(targets[0]["boxes"], (h, w)),
        [f"patch {i}" for i in range(M)],
        ax=ax,
        linestyle="--",
    )
    viz.draw_boxes(ax, pred_px[rows[cols.argsort()]], [f"q{int(r)}" for r in rows[cols.argsort()]])
    ax.set_title(f"{title} matching: dashed = patch, solid = matched query", fontsize=9)
plt.show()
results["global_cost"], results["per_group_cost"] = cost_global, cost_group
results["matched_in_own_group"] = sum(own)
"""),
            md("""
## The losses and their weights

On the matched pairs: cross-entropy for the class (over **all** `N` predictions: unmatched
ones must say "no object", weighted `M/N` to balance the many negatives), L1 and GIoU on the
boxes, and the **reconstruction** loss: the decoder output must also reproduce the patch
feature (both L2-normalised, squared error). With auxiliary losses every decoder layer gets
the same terms (suffix `_i`). The total `loss` is the weighted sum.
"""),
            code("""
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
"""),
            code(record("03_matching_and_losses")),
        ]
    )


# ----------------------------------------------------------------------------- 04


def nb04():
    return notebook(
        [
            md("""
# 4. Pre-training, live

A short UP-DETR pre-training run on the embedded unlabeled images, twice: **with and
without the attention mask** (the paper's Figure 6 in miniature: the paper found the loss
lower without the mask early on, and lower with it later). Then the predicted boxes for a
few query patches.

The runs use the kit's training engine (`updetr_lite.engine.train.train`), the same one the
command line uses; each run writes its configuration, a JSON-lines log and checkpoints into
its folder.
"""),
            params("""
SMOKE = False
RESULTS_DIR = "results"
SEED = 0
STEPS = 400  # optimizer steps per run (SMOKE: a few)
RUN_DIR = ""  # where the runs go; empty: runs/notebooks/04_pretraining
"""),
            code(setup(path=True)),
            code("""
import shutil

from updetr_lite.engine.train import train

steps = 30 if SMOKE else STEPS
run_root = Path(RUN_DIR) if RUN_DIR else nc.project_root() / "runs" / "notebooks" / "04_pretraining"
runs = {}
for flag in (True, False):
    out = run_root / ("with_mask" if flag else "without_mask")
    shutil.rmtree(out, ignore_errors=True)  # a fresh run each time the notebook runs
    cfg = nc.notebook_config(
        PRESET,
        [
            f"pretext.attention_mask={flag}",
            f"pretrain.max_steps={steps}",
            "pretrain.epochs=100000",
            f"pretrain.log_every={1 if SMOKE else 10}",
            f"pretrain.seed={SEED}",
            # the mask acts from the second decoder layer on (notebook 2): smoke needs two
            *(["model.dec_layers=2"] if SMOKE else []),
        ],
    )
    runs[flag] = train(cfg, "pretrain", out)
    print("with mask" if flag else "without mask", "->", out)
"""),
            md("""
## Loss curves

The total loss (all terms, all decoder layers) and its box part, smoothed.
"""),
            code("""
def train_records(out):
    return [r for r in viz.read_jsonl(Path(out) / "log.jsonl") if r.get("type") == "train"]


logs = {
    flag: train_records(run_root / ("with_mask" if flag else "without_mask"))
    for flag in (True, False)
}
fig, axes = plt.subplots(1, 2, figsize=(11, 3.5))
window = 3 if SMOKE else 5
viz.plot_curves(
    {("with" if f else "without") + " mask": viz.series(logs[f], "loss") for f in logs},
    axes[0],
    window=window,
    title="total loss",
)
viz.plot_curves(
    {("with" if f else "without") + " mask": viz.series(logs[f], "loss_bbox") for f in logs},
    axes[1],
    window=window,
    ylabel="L1 box loss (weighted)",
    title="box loss",
)
plt.show()
for flag, recs in logs.items():
    _, values = viz.series(recs, "loss")
    key = "with_mask" if flag else "without_mask"
    results[f"{key}_loss_first"], results[f"{key}_loss_last"] = values[0], values[-1]
    results[f"{key}_loss_fell"] = nc.loss_fell(values)
    results[f"{key}_records"] = len(values)
_, with_mask = viz.series(logs[True], "loss")
_, without_mask = viz.series(logs[False], "loss")
results["max_loss_difference"] = max(abs(a - b) for a, b in zip(with_mask, without_mask))
"""),
            md("""
## Where does the pre-trained model find the query patches?

The checkpoint with the mask, on one unlabeled training image: dashed boxes are the query
patches, solid boxes the most confident prediction of each group.
"""),
            code("""
from updetr_lite.data.embedded import build_embedded

model, cfg = demo.load_demo_model(run_root / "with_mask" / "last.pth")
unlabeled = sorted(f for f in Path(build_embedded(cfg.data).unlabeled).rglob("*") if f.is_file())
image = demo.read_image(unlabeled[0])
h, w = image.shape[:2]
k = min(3, model.num_patches)
query = viz.cxcywh_to_pixel_xyxy(
    demo.sample_patch_boxes(h, w, k, cfg.pretext.min_patch, random.Random(SEED)), (h, w)
)
state = demo.DemoState(model, cfg, image, query.round().tolist())
demo.static_demo_figure(state)
plt.show()
print(state.summary())
results["mean_iou_after_training"] = float(state.result["iou"].mean())
"""),
            code(record("04_pretraining_live")),
        ]
    )


# ----------------------------------------------------------------------------- 05


def nb05():
    return notebook(
        [
            md("""
# 5. Fine-tuning: DETR from scratch transformers versus DETR from UP-DETR

The question of the paper: does pre-training the transformers by random query patch
detection help the detector? We fine-tune DETR on the embedded detection data (5 shape
classes) twice, with the same budget:

- **scratch**: the CNN as given, transformers randomly initialised;
- **UP-DETR**: transformers, object queries, input projection and box head from a
  pre-training run (the class head is new: the pretext had 2 classes).

The embedded data is a stand-in for VOC / COCO, not a benchmark: short runs on it show the
mechanics and the trend, not the paper's numbers.
"""),
            params("""
SMOKE = False
RESULTS_DIR = "results"
SEED = 0
PRETRAIN_STEPS = 1000  # pre-training steps (SMOKE: a few)
FINETUNE_STEPS = 600  # fine-tuning steps per arm
RUN_DIR = ""  # where the runs go; empty: runs/notebooks/05_finetuning
"""),
            code(setup(path=True)),
            code("""
import shutil

from updetr_lite.engine.train import train

pre_steps, ft_steps = (20, 16) if SMOKE else (PRETRAIN_STEPS, FINETUNE_STEPS)
run_root = Path(RUN_DIR) if RUN_DIR else nc.project_root() / "runs" / "notebooks" / "05_finetuning"
shutil.rmtree(run_root, ignore_errors=True)
common = [
    f"pretrain.seed={SEED}",
    f"finetune.seed={SEED}",
    "pretrain.epochs=100000",
    "finetune.epochs=100000",
]
cfg = nc.notebook_config(
    PRESET, common + [f"pretrain.max_steps={pre_steps}", f"finetune.max_steps={ft_steps}"]
)
summaries = {"pretrain": train(cfg, "pretrain", run_root / "pretrain")}
summaries["updetr"] = train(
    cfg, "finetune", run_root / "updetr", init=run_root / "pretrain" / "last.pth"
)
summaries["scratch"] = train(cfg, "finetune", run_root / "scratch")
"""),
            md("""
## AP during fine-tuning

COCO-style AP (pycocotools) on the validation split, after each evaluation.
"""),
            code("""
evals = {
    arm: [r for r in viz.read_jsonl(run_root / arm / "log.jsonl") if r.get("type") == "eval"]
    for arm in ("scratch", "updetr")
}
fig, axes = plt.subplots(1, 2, figsize=(11, 3.5))
viz.plot_curves(
    {arm: viz.series(recs, "AP") for arm, recs in evals.items()},
    axes[0],
    ylabel="AP",
    title="AP (IoU .50:.95)",
)
viz.plot_curves(
    {arm: viz.series(recs, "AP50") for arm, recs in evals.items()},
    axes[1],
    ylabel="AP50",
    title="AP50",
)
plt.show()
for arm, recs in evals.items():
    results[f"{arm}_AP"] = recs[-1]["AP"]
    results[f"{arm}_AP50"] = recs[-1]["AP50"]
    results[f"{arm}_evals"] = len(recs)
print({k: round(v, 4) if isinstance(v, float) else v for k, v in results.items()})
"""),
            md("""
## Predictions

Both detectors on the same validation images (score above 0.3; the kit does no NMS, as DETR).
"""),
            code("""
from updetr_lite.data.embedded import build_embedded
from updetr_lite.engine.inference import load_model, predict_image

paths = build_embedded(cfg.data)
val_files = sorted(Path(paths.val_images).iterdir())[:3]
models = {
    arm: load_model(run_root / arm / "last.pth", kind="detection") for arm in ("scratch", "updetr")
}
fig, axes = plt.subplots(2, len(val_files), figsize=(3.2 * len(val_files), 6.6), squeeze=False)
for row, (arm, (m, mcfg)) in enumerate(models.items()):
    for col, f in enumerate(val_files):
        det = predict_image(m, mcfg, str(f), threshold=0.3)
        labels = [f"{int(c)}: {float(s):.2f}" for c, s in zip(det["labels"], det["scores"])]
        viz.show_image(
            demo.read_image(f), det["boxes"], labels, ax=axes[row, col], title=f"{arm}: {f.name}"
        )
plt.tight_layout()
plt.show()
"""),
            md("""
## Decoder attention maps

Where in the image do a few object queries of the UP-DETR detector look? The cross-attention
weights of the last decoder layer (averaged over heads), over the CNN's feature grid, for
the three most confident queries.
"""),
            code("""
model, mcfg = models["updetr"]
image = demo.read_image(val_files[0])
images, mask = demo.prepare_image(image, mcfg.data.test_size, mcfg.data.max_size)
with torch.no_grad(), viz.capture_cross_attention(model) as attention:
    features, fmask = model.backbone(images, mask)
    out = model.forward_features(features, fmask)
scores = out["pred_logits"][0].softmax(-1)[:, :-1].max(-1).values
top = scores.topk(3).indices
maps = viz.attention_maps(attention[-1][0], tuple(features.shape[-2:]))[top]
boxes = viz.cxcywh_to_pixel_xyxy(out["pred_boxes"][0, top], image.shape[:2])
viz.plot_attention_maps(
    image, maps, boxes, [f"query {int(q)} ({float(scores[q]):.2f})" for q in top]
)
plt.show()
results["attention_layers"] = len(attention)
results["attention_rows_sum_to_one"] = bool(torch.allclose(attention[-1].sum(-1), torch.ones(1)))
"""),
            code(record("05_finetuning")),
        ]
    )


# ----------------------------------------------------------------------------- 06


def nb06():
    return notebook(
        [
            md("""
# 6. Patch localization demo

Choose an image, choose query patches with the sliders (x, y, width, height), toggle the
augmentation of the patches, and see where the pre-trained UP-DETR finds them: dashed boxes
are your query patches, solid boxes the model's answer with its confidence. This is the
paper's Figure 5 (unsupervised localization of query patches), live.

**Checkpoint.** By default the kit's lite pretext checkpoint, trained on first use on the
embedded photos (a progress bar shows it: 1500 steps, roughly 15 minutes on 2 CPU cores; then cached in
`.cache/updetr_lite/demo/`). To use the authors' UP-DETR checkpoint
(`up-detr-pre-training-60ep-imagenet.pth`, ResNet-50, downloaded by you), set
`AUTHORS_CHECKPOINT` to its local path. Nothing is downloaded by the kit.

Without a browser (papermill, `INTERACTIVE = False`) the demo shows a static figure.
"""),
            params("""
SMOKE = False
RESULTS_DIR = "results"
INTERACTIVE = True  # False: static figure (headless runs)
AUTHORS_CHECKPOINT = ""  # local path to the authors' pre-training checkpoint, or empty
CHECKPOINT = ""  # where the kit's lite checkpoint is kept; empty: .cache/updetr_lite/demo/
NUM_PATCHES = 2  # query patches with sliders
"""),
            code("""
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
"""),
            md("""
## The demo

Move a slider and the prediction updates; the text box lists each query patch, the
predicted box (pixels x0, y0, x1, y1), its confidence and its IoU with the query patch.
You can also type the path of your own image, or upload one.
"""),
            code("""
state = demo.open_demo(checkpoint, photos, interactive=INTERACTIVE, num_patches=NUM_PATCHES)
plt.show()
"""),
            md("""
## Check: a patch cut from a training image

The demo checkpoint was trained on these photos, so a patch cut from one of them should be
found where it was cut: we record the IoU between the predicted box and the patch's own
box for a fixed patch (the middle of the first training photo), without and with the
augmentation, and for 4 seeded random patches of every training photo, whose mean IoU
must be above 0.5.
"""),
            code("""
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
"""),
            code(record("06_patch_localization_demo")),
        ]
    )


NOTEBOOKS = {
    "01_random_query_patches": nb01,
    "02_multi_query_patches": nb02,
    "03_matching_and_losses": nb03,
    "04_pretraining_live": nb04,
    "05_finetuning": nb05,
    "06_patch_localization_demo": nb06,
}


def build(out_dir: Path = HERE) -> list[Path]:
    paths = []
    for name, make in NOTEBOOKS.items():
        nb = make()
        for i, cell in enumerate(nb.cells):  # stable ids: regenerating changes nothing
            cell.id = f"{name[:2]}-{i:02d}"
        nbformat.validate(nb)
        path = Path(out_dir) / f"{name}.ipynb"
        nbformat.write(nb, path)
        paths.append(path)
    return paths


if __name__ == "__main__":
    for p in build(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE):
        print(p)

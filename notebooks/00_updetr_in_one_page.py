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
# # 0. UP-DETR in one page
#
# **Run time:** 30 s (measured with `updetr-lite notebooks --only 00`, kernel start
# included, on a busy 2-core machine) at the default setting.
#
# The whole pretext of the paper (random query patch detection) in plain PyTorch, importing
# nothing from the kit: cut M query patches from unlabeled photos, give each one to a group of
# N/M object queries, keep the groups apart with the attention mask, shuffle the object
# queries, match predictions to the patches' boxes with the Hungarian algorithm, and take
# training steps on the loss (Eq. 1 and 2 of the paper: class + L1 + GIoU + patch feature
# reconstruction). The last cell checks this page's loss against the library's criterion on
# the same predictions.

# %% tags=["parameters"]
SMOKE = False  # True: tiny settings for the test suite
RESULTS_DIR = "results"  # where the checkable values are written (JSON)
SEED = 0
STEPS = 30  # training steps on the photos below

# %%
import matplotlib.pyplot as plt
import skimage.data
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import nn
from torchvision.ops import box_convert, generalized_box_iou

torch.manual_seed(SEED)
STEPS = 3 if SMOKE else STEPS
SIZE, P, M, N, D = 96, 32, 3, 12, 64  # image side, patch side, patches, queries, width
photos = [skimage.data.astronaut(), skimage.data.coffee(), skimage.data.chelsea()]
images = torch.stack(
    [
        F.interpolate(torch.tensor(p).permute(2, 0, 1)[None].float() / 255, (SIZE, SIZE))[0]
        for p in photos
    ]
)  # [B, 3, SIZE, SIZE] in [0, 1]


# %% [markdown]
# **Query patches.** M random boxes per image (sides at least 8 px); each crop is resized to
# P x P. The targets are the boxes themselves, normalised `cxcywh`, all of class 1 ("query
# patch"). (The kit also colour-augments the patches; left out here.)


# %%
def random_patches(images, m):
    patches, boxes = [], []
    for img in images:
        x0, y0 = torch.randint(0, SIZE - 8, (2, m))
        w = (torch.rand(m) * (SIZE - x0 - 8) + 8).long()
        h = (torch.rand(m) * (SIZE - y0 - 8) + 8).long()
        crops = [img[:, b : b + hh, a : a + ww] for a, b, ww, hh in zip(x0, y0, w, h)]
        patches.append(torch.stack([F.interpolate(c[None], (P, P))[0] for c in crops]))
        xyxy = torch.stack([x0, y0, x0 + w, y0 + h], -1).float() / SIZE
        boxes.append(box_convert(xyxy, "xyxy", "cxcywh"))
    return torch.stack(patches), torch.stack(boxes)  # [B, M, 3, P, P], [B, M, 4]


# %% [markdown]
# **The model.** A frozen CNN (here tiny and random) gives the image tokens and, global-
# average-pooled, each patch's feature. A query is an object query plus its patch's projected
# feature; queries of one group see only each other in decoder self-attention (the group
# mask); the object queries are shuffled at every step.


# %%
class TinyUPDETR(nn.Module):
    def __init__(self):
        super().__init__()
        self.cnn = nn.Sequential(nn.Conv2d(3, 32, 3, 2, 1), nn.ReLU(), nn.Conv2d(32, D, 3, 2, 1))
        self.cnn.requires_grad_(False)  # the paper freezes the CNN
        self.pos = nn.Parameter(torch.randn((SIZE // 4) ** 2, D) * 0.02)
        layer = dict(d_model=D, nhead=4, dim_feedforward=128, dropout=0.0, batch_first=True)
        enc = nn.TransformerEncoderLayer(**layer, norm_first=True)  # pre-norm, as the authors
        self.encoder = nn.TransformerEncoder(enc, 2, enable_nested_tensor=False)
        self.decoder = nn.TransformerDecoder(
            nn.TransformerDecoderLayer(**layer, norm_first=True), 2
        )
        self.object_queries = nn.Embedding(N, D)
        self.patch_proj = nn.Linear(D, D)
        self.class_head, self.box_head, self.feature_head = (
            nn.Linear(D, 3),
            nn.Linear(D, 4),
            nn.Linear(D, D),
        )
        group = torch.arange(N) // (N // M)  # query i belongs to group i // (N/M)
        self.register_buffer(
            "group_mask", torch.where(group[:, None] == group[None], 0.0, float("-inf"))
        )

    def forward(self, images, patches):
        tokens = self.cnn(images).flatten(2).transpose(1, 2) + self.pos  # [B, HW, D]
        patch_feature = self.cnn(patches.flatten(0, 1)).mean((2, 3)).view(len(images), M, D)
        queries = self.object_queries.weight[torch.randperm(N)]  # object query shuffle
        carried = self.patch_proj(patch_feature).repeat_interleave(N // M, dim=1)  # [B, N, D]
        hs = self.decoder(queries + carried, self.encoder(tokens), tgt_mask=self.group_mask)
        return {
            "pred_logits": self.class_head(
                hs
            ),  # [B, N, 3]: 1 = query patch, 2 = no object (0 unused, as the kit)
            "pred_boxes": self.box_head(hs).sigmoid(),  # [B, N, 4] cxcywh
            "pred_feature": self.feature_head(hs),  # [B, N, D]
            "patch_feature": patch_feature,  # [B, M, D], the reconstruction target
        }


# %% [markdown]
# **Matching and loss.** Cost = -p(patch) + 5 L1 + 2 (-GIoU); the Hungarian algorithm assigns
# one query to each patch. Unmatched queries learn "no object" with weight M/N (the paper's
# balance); matched ones the box (L1 + GIoU) and the patch feature (L2 distance of the
# normalised vectors).


# %%
def updetr_loss(out, boxes):
    b = len(boxes)
    prob, pred = out["pred_logits"].softmax(-1), out["pred_boxes"]
    q_idx, p_idx = [], []
    for i in range(b):
        giou = generalized_box_iou(
            box_convert(pred[i], "cxcywh", "xyxy"), box_convert(boxes[i], "cxcywh", "xyxy")
        )
        cost = -prob[i, :, [1]] + 5 * torch.cdist(pred[i], boxes[i], p=1) - 2 * giou
        rows, cols = linear_sum_assignment(cost.detach().numpy())
        q_idx.append(torch.as_tensor(rows)), p_idx.append(torch.as_tensor(cols))
    bi = torch.arange(b).repeat_interleave(M)
    qi, pi = torch.cat(q_idx), torch.cat(p_idx)
    target = torch.full((b, N), 2)
    target[bi, qi] = 1
    ce = F.cross_entropy(out["pred_logits"].transpose(1, 2), target, torch.tensor([1, 1, M / N]))
    src, tgt = pred[bi, qi], boxes[bi, pi]
    l1 = (src - tgt).abs().sum() / (b * M)
    giou = torch.diag(
        generalized_box_iou(box_convert(src, "cxcywh", "xyxy"), box_convert(tgt, "cxcywh", "xyxy"))
    )
    rec_err = F.normalize(out["pred_feature"][bi, qi], dim=-1) - F.normalize(
        out["patch_feature"][bi, pi], dim=-1
    )
    rec = rec_err.pow(2).sum() / (b * M)
    return ce + 5 * l1 + 2 * (1 - giou).sum() / (b * M) + rec


# %% [markdown]
# **Training steps.** New random patches at every step; AdamW as in the paper.

# %%
model = TinyUPDETR()
opt = torch.optim.AdamW(
    [p for p in model.parameters() if p.requires_grad], lr=1e-4, weight_decay=1e-4
)
losses = []
for _ in range(STEPS):
    patches, boxes = random_patches(images, M)
    loss = updetr_loss(model(images, patches), boxes)
    opt.zero_grad()
    loss.backward()
    opt.step()
    losses.append(loss.item())

fig, ax = plt.subplots(figsize=(5, 3))
ax.plot(range(1, STEPS + 1), losses, marker=".")
ax.set_xlabel("training step")
ax.set_ylabel("pretext loss (all terms)")
ax.set_title(f"{STEPS} steps on {len(images)} photos")
fig.tight_layout()

# %% [markdown]
# **Check against the library.** The kit's `SetCriterion` with its `HungarianMatcher` and
# the pretext weights, on the very same predictions and patch boxes, must give this page's
# loss.

# %%
from updetr_lite.models.criterion import SetCriterion
from updetr_lite.models.matcher import HungarianMatcher
from updetr_lite.tutorial.notebook_checks import write_results

torch.manual_seed(SEED + 1)
patches, boxes = random_patches(images, M)
with torch.no_grad():
    out = model(images, patches)
    ours = updetr_loss(out, boxes).item()
    weights = {"loss_ce": 1.0, "loss_bbox": 5.0, "loss_giou": 2.0, "loss_rec": 1.0}
    criterion = SetCriterion(
        2, HungarianMatcher(1.0, 5.0, 2.0), weights, M / N, reconstruction=True
    )
    targets = [{"labels": torch.ones(M, dtype=torch.int64), "boxes": b} for b in boxes]
    kit = criterion(out, targets)["loss"].item()
print(f"this page: {ours:.6f}   the kit: {kit:.6f}")
write_results(
    RESULTS_DIR,
    "00_updetr_in_one_page",
    {"loss_page": ours, "loss_kit": kit, "losses": losses, "steps": STEPS},
)

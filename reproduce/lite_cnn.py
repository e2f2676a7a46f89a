"""The lite scale's frozen CNN: trained by the kit, because no weights can be downloaded.

UP-DETR pre-trains the transformers on top of a pre-trained, frozen CNN (SwAV's ResNet-50 in
the paper). At lite scale the kit trains its own: a ResNet-18 cut after layer3 (stride 16,
256 channels; ``lite`` preset's ``model.backbone`` / ``backbone_layer``) on dense per-cell
class labels of a *separate* generated set (its own seed, never the detection train/val
images). This is a supervised stand-in for SwAV: a few minutes of self-supervised
(SimCLR) training gave features too weak for DETR to learn from on 2 CPU cores (with a
4.5-minute SimCLR CNN the class loss stayed at the constant-prediction value for 600-1200
steps); the per-cell objective worked.

The kit ships the weights this module trained (``updetr_lite/lite_cnn/``: ``cnn.pth``, its
training log and ``record.json`` with the sha256, the budget and the probe), and the lite
preset loads them: the lite plan's ``cnn`` run copies them into its folder
(``install_shipped``) instead of training for ten minutes, and every lite number is made
with the same CNN whatever the machine's thread count. ``python -m reproduce.lite_cnn --out
DIR`` trains a new one (the lite budget, every core); ``--ship DIR --source TEXT`` puts it
in the package.

The weights are saved in torchvision's state-dict format (``conv1.weight``, ``bn1.*``,
``layer1..3.*``), so ``models.weights.load_cnn_weights`` loads them through
``model.backbone_weights``. ``probe`` shows the features are useful: k-NN accuracy on
object crops of the detection val split, against a random CNN of the same shape.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import shutil
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from updetr_lite.data.images import IMAGENET_MEAN, IMAGENET_STD
from updetr_lite.presets import LITE_CNN_DIR

STRIDE = 16  # layer3 of a ResNet
CNN_SEED_OFFSET = 1000  # the CNN's data seed = detection seed + this: a separate set


# ----------------------------------------------------------------------------- labels


def cell_assignment(
    boxes_xywh: list[list[float]], height: int, width: int, stride: int = STRIDE
) -> torch.Tensor:
    """Which box each cell of the [ceil(H/stride), ceil(W/stride)] grid belongs to (int64,
    -1 for none): the smallest box (COCO ``xywh`` pixels) that contains the cell's centre or
    whose own centre lies in the cell (so an object smaller than a cell still owns one; small
    objects drawn over big ones win, as occluders do)."""
    gh, gw = math.ceil(height / stride), math.ceil(width / stride)
    owner = torch.full((gh, gw), -1, dtype=torch.int64)
    if not boxes_xywh:
        return owner
    cy = (torch.arange(gh, dtype=torch.float32) + 0.5) * stride
    cx = (torch.arange(gw, dtype=torch.float32) + 0.5) * stride
    area = torch.full((gh, gw), math.inf)
    # largest first, so smaller boxes overwrite
    order = sorted(range(len(boxes_xywh)), key=lambda i: -boxes_xywh[i][2] * boxes_xywh[i][3])
    for i in order:
        x, y, w, h = boxes_xywh[i]
        inside = ((cy >= y) & (cy < y + h))[:, None] & ((cx >= x) & (cx < x + w))[None, :]
        ci, cj = int((y + h / 2) // stride), int((x + w / 2) // stride)
        if 0 <= ci < gh and 0 <= cj < gw:
            inside[ci, cj] = True
        smaller = inside & (w * h <= area)
        owner[smaller] = i
        area[smaller] = w * h
    return owner


def cell_labels(
    boxes_xywh: list[list[float]],
    categories: list[int],
    height: int,
    width: int,
    stride: int = STRIDE,
) -> torch.Tensor:
    """Dense class labels [ceil(H/stride), ceil(W/stride)] int64: each cell takes the class of
    the box ``cell_assignment`` gives it, 0 where none."""
    owner = cell_assignment(boxes_xywh, height, width, stride)
    cats = torch.tensor([0] + [int(c) for c in categories], dtype=torch.int64)
    return cats[owner + 1]


def cell_box_targets(
    boxes_xywh: list[list[float]], height: int, width: int, stride: int = STRIDE
) -> torch.Tensor:
    """Dense box targets [4, ceil(H/stride), ceil(W/stride)] float32: for a cell that a box
    owns (``cell_assignment``), the distances (left, top, right, bottom) from the cell's
    centre to that box's edges in units of ``stride`` (negative where the centre lies outside
    a box smaller than a cell); NaN where no box owns the cell. They make the CNN encode
    where inside a cell an object's edges lie, which per-cell classes alone do not."""
    owner = cell_assignment(boxes_xywh, height, width, stride)
    gh, gw = owner.shape
    cy = ((torch.arange(gh, dtype=torch.float32) + 0.5) * stride)[:, None].expand(gh, gw)
    cx = ((torch.arange(gw, dtype=torch.float32) + 0.5) * stride)[None, :].expand(gh, gw)
    b = torch.tensor([[math.nan] * 4] + [list(map(float, bb)) for bb in boxes_xywh])[owner + 1]
    x, y, w, h = b.unbind(-1)
    return torch.stack((cx - x, cy - y, x + w - cx, y + h - cy)) / stride


def load_coco_split(images_dir: str | Path, ann_file: str | Path):
    """(images uint8 [n, 3, H, W] list, annotations per image list) of a COCO-format split."""
    from PIL import Image
    from torchvision.transforms.v2 import functional as TF

    def read(path):
        with Image.open(path) as im:
            return TF.pil_to_tensor(im.convert("RGB"))

    coco = json.loads(Path(ann_file).read_text())
    per_image = {im["id"]: [] for im in coco["images"]}
    for a in coco["annotations"]:
        per_image[a["image_id"]].append(a)
    images, anns = [], []
    for im in coco["images"]:
        images.append(read(Path(images_dir) / im["file_name"]))
        anns.append(per_image[im["id"]])
    return images, anns


# ----------------------------------------------------------------------------- the CNN


class DenseCNN(nn.Module):
    """torchvision ResNet cut after ``layer`` plus a 1x1 per-cell classifier and, with
    ``box_head``, a 1x1 per-cell box regressor (heads not saved)."""

    def __init__(
        self,
        name: str = "resnet18",
        layer: str = "layer3",
        num_classes: int = 6,
        box_head: bool = False,
    ):
        super().__init__()
        resnet = getattr(torchvision.models, name)(weights=None)
        keep = ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"]
        keep = keep[: keep.index(layer) + 1]
        self.trunk = nn.Sequential(*[getattr(resnet, k) for k in keep])
        self.names = keep
        channels = self.trunk(torch.zeros(1, 3, 32, 32)).shape[1]
        self.head = nn.Conv2d(channels, num_classes, 1)
        self.box_head = nn.Conv2d(channels, 4, 1) if box_head else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """images [B, 3, H, W] -> per-cell logits [B, K, H/16, W/16]."""
        return self.head(self.trunk(x))

    def dense(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """images [B, 3, H, W] -> (per-cell logits [B, K, H/16, W/16], per-cell box distances
        [B, 4, H/16, W/16] (left, top, right, bottom, in cells) or None without box_head)."""
        f = self.trunk(x)
        return self.head(f), (self.box_head(f) if self.box_head is not None else None)

    def torchvision_state_dict(self) -> dict[str, torch.Tensor]:
        """The trunk's weights under torchvision's ResNet names (``layer1.0.conv1.weight``)."""
        out = {}
        for i, k in enumerate(self.names):
            for p, v in self.trunk[i].state_dict().items():
                out[f"{k}.{p}"] = v.detach().clone()
        return out


MEAN = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
STD = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


def _normalize(x_uint8: torch.Tensor) -> torch.Tensor:
    # computed as (x / 255 - mean) / std, the rounding the committed lite CNN was trained
    # with; data.images.normalize rounds differently (by <= 2.4e-7) and would change it
    return (x_uint8.float() / 255.0 - MEAN) / STD


def train_cnn(
    images: list[torch.Tensor],
    labels: list[torch.Tensor],
    num_classes: int,
    steps: int,
    out_dir: str | Path,
    name: str = "resnet18",
    layer: str = "layer3",
    batch_size: int = 32,
    lr: float = 2e-3,
    seed: int = 0,
    bf16: bool | None = None,
    log_every: int = 20,
    background_weight: float = 0.2,
    box_targets: list[torch.Tensor] | None = None,
    box_weight: float = 0.0,
    echo=print,
) -> dict:
    """Train DenseCNN on (image, per-cell label) pairs with per-cell cross-entropy (AdamW, a
    cosine schedule, horizontal flips); write ``cnn.pth`` (torchvision format) and
    ``log.jsonl`` into ``out_dir``. Background cells (class 0, most of an image) weigh
    ``background_weight`` in the loss so that the CNN learns the objects' classes. With
    ``box_weight`` > 0 the loss adds that weight times the L1 distance between a box head's
    output and ``box_targets`` ([4, h, w] per image, ``cell_box_targets``) on owned cells.
    Returns {"steps", "seconds", "final_loss", "cell_acc", "object_acc"} (+ "box_l1")."""
    from updetr_lite.fastpath import bf16_supported

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    bf16 = bf16_supported("cpu") if bf16 is None else bf16
    x_all = torch.stack(images)
    y_all = torch.stack(labels)
    use_box = box_weight > 0
    if use_box and box_targets is None:
        raise ValueError("box_weight > 0 needs box_targets")
    b_all = torch.stack(box_targets) if use_box else None
    model = DenseCNN(name, layer, num_classes, box_head=use_box).to(
        memory_format=torch.channels_last
    )
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    warm = max(1, steps // 20)  # linear warm-up over 5 %, then cosine to zero

    def factor(i: int) -> float:
        if i < warm:
            return (i + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (i - warm) / max(1, steps - warm))))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    class_weight = torch.ones(num_classes)
    class_weight[0] = background_weight
    t0 = time.monotonic()
    model.train()
    stats = {"loss": math.nan, "cell_acc": math.nan, "object_acc": math.nan}
    with open(out_dir / "log.jsonl", "w") as log:
        for step in range(1, steps + 1):
            idx = torch.randint(0, len(x_all), (batch_size,), generator=gen)
            x, y = x_all[idx], y_all[idx]
            flip = torch.rand(batch_size, generator=gen) < 0.5
            x[flip], y[flip] = x[flip].flip(-1), y[flip].flip(-1)
            x = _normalize(x).contiguous(memory_format=torch.channels_last)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                logits, box = model.dense(x)
            logits = logits.float()[..., : y.shape[-2], : y.shape[-1]]
            loss = F.cross_entropy(logits, y, weight=class_weight)
            if use_box:
                t = b_all[idx]
                # a mirrored image swaps the left and right distances
                t[flip] = t[flip].flip(-1)[:, [2, 1, 0, 3]]
                owned = ~t.isnan()
                box_l1 = (box.float()[..., : y.shape[-2], : y.shape[-1]] - t.nan_to_num()).abs()
                box_l1 = box_l1[owned].mean() if owned.any() else box_l1.sum() * 0
                loss = loss + box_weight * box_l1
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if step % log_every == 0 or step == steps:
                pred = logits.argmax(1)
                obj = y > 0
                stats = {
                    "loss": float(loss.detach()),
                    "cell_acc": float((pred == y).float().mean()),
                    "object_acc": float((pred[obj] == y[obj]).float().mean()) if obj.any() else 0.0,
                }
                if use_box:
                    stats["box_l1"] = float(box_l1.detach())
                rec = {
                    "step": step,
                    **stats,
                    "lr": sched.get_last_lr()[0],
                    "time": time.monotonic() - t0,
                }
                log.write(json.dumps(rec) + "\n")
                log.flush()
                echo(
                    f"cnn step {step}/{steps} loss {stats['loss']:.3f} "
                    f"cell acc {stats['cell_acc']:.3f} object-cell acc {stats['object_acc']:.3f}"
                )
    torch.save(model.torchvision_state_dict(), out_dir / "cnn.pth")
    return {"steps": steps, "seconds": time.monotonic() - t0, "final_loss": stats["loss"], **stats}


# ----------------------------------------------------------------------------- the probe


def knn_accuracy(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    k: int = 5,
) -> float:
    """Accuracy of a k-NN classifier (cosine similarity, similarity-weighted votes):
    train_x [n, C], train_y [n] int, test_x [m, C], test_y [m] -> fraction correct."""
    if len(train_x) == 0 or len(test_x) == 0:
        raise ValueError("knn_accuracy needs non-empty train and test sets")
    a = F.normalize(train_x.float(), dim=1)
    b = F.normalize(test_x.float(), dim=1)
    sim = b @ a.T
    k = min(k, len(train_x))
    top, idx = sim.topk(k, dim=1)
    votes = torch.zeros(len(test_x), int(max(train_y.max(), test_y.max())) + 1)
    votes.scatter_add_(1, train_y[idx], top.clamp_min(0) + 1e-6)
    return float((votes.argmax(1) == test_y).float().mean())


def object_crops(
    images: list[torch.Tensor], anns: list[list[dict]], size: int = 64, min_side: int = 8
):
    """Every annotated object cut out and resized: (crops uint8 [n, 3, size, size], labels [n])."""
    from torchvision.transforms.v2 import functional as TF

    crops, labels = [], []
    for img, objs in zip(images, anns):
        for a in objs:
            x, y, w, h = (int(round(v)) for v in a["bbox"])
            if w < min_side or h < min_side:
                continue
            crops.append(TF.resized_crop(img, y, x, h, w, [size, size], antialias=True))
            labels.append(int(a["category_id"]))
    if not crops:
        raise ValueError("object_crops: no object of at least min_side pixels")
    return torch.stack(crops), torch.tensor(labels)


@torch.no_grad()
def embed(backbone: nn.Module, crops_uint8: torch.Tensor, batch: int = 128) -> torch.Tensor:
    """Global-average-pooled features [n, C] of a models.backbone.Backbone (patch_feature)."""
    backbone.eval()
    out = [
        backbone.patch_feature(_normalize(crops_uint8[i : i + batch]))
        for i in range(0, len(crops_uint8), batch)
    ]
    return torch.cat(out)


@torch.no_grad()
def roi_embeddings(backbone: nn.Module, images: list[torch.Tensor], anns: list[list[dict]]):
    """Per object, the mean of a 4x4 RoIAlign of the whole image's feature map over its box
    (what ``pretext.patch_feature='roi'`` feeds the decoder): (features [n, C], labels [n])."""
    from torchvision.ops import roi_align

    backbone.eval()
    feats, labels = [], []
    for img, objs in zip(images, anns):
        if not objs:
            continue
        x = _normalize(img[None])
        fmap, _ = backbone(x, torch.zeros(1, *x.shape[-2:], dtype=torch.bool))
        stride = x.shape[-1] / fmap.shape[-1]
        boxes = torch.tensor([[a, b, a + w, b + h] for a, b, w, h in (o["bbox"] for o in objs)])
        pooled = roi_align(fmap, [boxes.float()], 4, 1.0 / stride, 2, aligned=True)
        feats.append(pooled.mean((2, 3)))
        labels += [int(o["category_id"]) for o in objs]
    return torch.cat(feats), torch.tensor(labels)


def probe(cfg, weights: str | Path, k: int = 5, size: int | None = None, seed: int = 0) -> dict:
    """k-NN accuracy on the objects of the detection val split (neighbours: the train split's
    objects) with the CNN at ``weights`` vs a random CNN of the same shape; objects seen as
    resized crops (``trained``/``random``, the paper's patch feature) and as RoIAlign of the
    whole image's feature map (``trained_roi``/``random_roi``, the lite patch feature)."""
    from updetr_lite.data.embedded import build_embedded
    from updetr_lite.models.backbone import Backbone
    from updetr_lite.models.weights import load_cnn_weights

    paths = build_embedded(cfg.data)
    size = size or cfg.pretext.patch_size
    tr_img, tr_ann = load_coco_split(paths.train_images, paths.train_json)
    va_img, va_ann = load_coco_split(paths.val_images, paths.val_json)
    tr_x, tr_y = object_crops(tr_img, tr_ann, size)
    va_x, va_y = object_crops(va_img, va_ann, size)
    result = {"k": k, "n_train": len(tr_x), "n_test": len(va_x), "crop_size": size}
    for which in ("trained", "random"):
        torch.manual_seed(seed)
        bb = Backbone(cfg.model.backbone, cfg.model.backbone_layer, frozen_cnn=True)
        if which == "trained":
            load_cnn_weights(bb, str(weights))
        result[which] = knn_accuracy(embed(bb, tr_x), tr_y, embed(bb, va_x), va_y, k)
        rtr_x, rtr_y = roi_embeddings(bb, tr_img, tr_ann)
        rva_x, rva_y = roi_embeddings(bb, va_img, va_ann)
        result[f"{which}_roi"] = knn_accuracy(rtr_x, rtr_y, rva_x, rva_y, k)
    counts = torch.bincount(va_y)
    result["chance"] = float(counts.max() / counts.sum())  # always answering the commonest class
    result["num_classes"] = int((counts > 0).sum())
    return result


# ----------------------------------------------------------------------------- the run


def cnn_data_config(cfg, n_images: int):
    """The separate generated set the CNN learns from: the detection data's settings with
    its own seed and sizes (never the detection train/val images)."""
    d = cfg.data
    return dataclasses.replace(
        d,
        embedded_seed=d.embedded_seed + CNN_SEED_OFFSET,
        embedded_train=n_images,
        embedded_val=max(8, n_images // 20),
        embedded_unlabeled=8,
    )


def build_lite_cnn(
    cfg,
    out_dir: str | Path,
    steps: int,
    n_images: int,
    batch_size: int = 32,
    box_weight: float = 0.0,
    echo=print,
) -> dict:
    """The whole lite-CNN run: generate the separate set, derive per-cell labels (and, with
    ``box_weight`` > 0, per-cell box targets) from its COCO JSON, train, save ``cnn.pth``,
    probe it; writes ``summary.json`` and ``probe.json``."""
    from updetr_lite.data.embedded import build_embedded

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    data_cfg = cnn_data_config(cfg, n_images)
    paths = build_embedded(data_cfg)
    images, anns = load_coco_split(paths.train_images, paths.train_json)
    labels = [
        cell_labels([a["bbox"] for a in objs], [a["category_id"] for a in objs], *img.shape[-2:])
        for img, objs in zip(images, anns)
    ]
    boxes = None
    if box_weight > 0:
        boxes = [
            cell_box_targets([a["bbox"] for a in objs], *img.shape[-2:])
            for img, objs in zip(images, anns)
        ]
    echo(f"lite CNN: {len(images)} images of the separate set (seed {data_cfg.embedded_seed})")
    train = train_cnn(
        images,
        labels,
        cfg.model.num_classes,
        steps,
        out_dir,
        cfg.model.backbone,
        cfg.model.backbone_layer,
        batch_size=batch_size,
        seed=cfg.pretrain.seed,
        bf16=cfg.model.cnn_bf16,
        box_targets=boxes,
        box_weight=box_weight,
        echo=echo,
    )
    result = probe(cfg, out_dir / "cnn.pth")
    result["method"] = (
        f"{cfg.model.backbone} up to {cfg.model.backbone_layer}, supervised per-cell labels of "
        f"a separate generated set (seed {data_cfg.embedded_seed}, {len(images)} images), "
        f"{steps} steps of batch {batch_size}"
        + (f", per-cell box distances at weight {box_weight}" if box_weight > 0 else "")
    )
    (out_dir / "probe.json").write_text(json.dumps(result, indent=1) + "\n")
    summary = {
        "train": train,
        "probe": result,
        "data_seed": data_cfg.embedded_seed,
        "seconds": time.monotonic() - t0,
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    echo(
        f"lite CNN probe: k-NN accuracy {result['trained']:.3f} (random CNN "
        f"{result['random']:.3f}, chance {result['chance']:.3f})"
    )
    return summary


# ----------------------------------------------------------------------------- the shipped CNN

SHIPPED_FILES = ("cnn.pth", "log.jsonl")  # the weights and their training curve
RECORD = "record.json"


class ShippedCNNError(RuntimeError):
    """The shipped lite CNN is missing or is not the file its record describes."""


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def ship(run_dir: str | Path, source: str, dest: str | Path = LITE_CNN_DIR) -> dict:
    """Copy a finished lite-CNN run (``run_dir`` with cnn.pth, log.jsonl, summary.json) into
    ``dest`` with ``record.json``: the sha256 and size of cnn.pth, the run's summary (training
    and probe) and ``source``, a sentence saying which run made it, on what machine."""
    from .lite_plan import CNN_BUDGET_KEYS

    run_dir, dest = Path(run_dir), Path(dest)
    summary = json.loads((run_dir / "summary.json").read_text())
    params_file = run_dir / "parameters.json"
    params = json.loads(params_file.read_text()) if params_file.exists() else {}
    dest.mkdir(parents=True, exist_ok=True)
    for name in SHIPPED_FILES:
        shutil.copyfile(run_dir / name, dest / name)
    record = {
        "command": "python -m reproduce.lite_cnn --out DIR; python -m reproduce.lite_cnn "
        "--ship DIR --source TEXT",
        "source": source,
        "sha256": file_sha256(dest / "cnn.pth"),
        "file_bytes": (dest / "cnn.pth").stat().st_size,
        "budget": {k: params[k] for k in CNN_BUDGET_KEYS if k in params},
        "summary": summary,
    }
    (dest / RECORD).write_text(json.dumps(record, indent=1) + "\n")
    return record


def install_shipped(out_dir: str | Path, src: str | Path = LITE_CNN_DIR) -> dict:
    """The lite plan's ``cnn`` run: copy the shipped cnn.pth and its log into ``out_dir``
    after checking the sha256 against its record, and write the record's ``summary.json``
    and ``probe.json`` there (what the report reads). Returns the summary."""
    src, out_dir = Path(src), Path(out_dir)
    rec_file = src / RECORD
    if not rec_file.is_file():
        raise ShippedCNNError(f"{rec_file}: missing (the shipped lite CNN's record)")
    record = json.loads(rec_file.read_text())
    weights = src / "cnn.pth"
    if not weights.is_file():
        raise ShippedCNNError(f"{weights}: missing (the shipped lite CNN)")
    got = file_sha256(weights)
    if got != record["sha256"]:
        raise ShippedCNNError(
            f"{weights}: sha256 {got} is not the recorded {record['sha256']} ({rec_file}): "
            "the file is damaged or was replaced without `python -m reproduce.lite_cnn --ship`"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in SHIPPED_FILES:
        shutil.copyfile(src / name, out_dir / name)
    summary = {**record["summary"], "shipped": {k: record[k] for k in ("source", "sha256")}}
    (out_dir / "probe.json").write_text(json.dumps(summary["probe"], indent=1) + "\n")
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def main(argv=None) -> int:
    from updetr_lite.config import get_config

    from .lite_plan import CNN_BUDGET_KEYS, LITE_BUDGET

    ap = argparse.ArgumentParser(
        prog="python -m reproduce.lite_cnn",
        description="Train the lite CNN with the lite budget (--out), or ship a trained one "
        f"into {LITE_CNN_DIR} (--ship).",
    )
    ap.add_argument("--out", help="train into this folder (every core)")
    ap.add_argument("--ship", metavar="DIR", help="copy a trained run folder into the package")
    ap.add_argument("--source", default="", help="with --ship: which run made it, where")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads")
    args = ap.parse_args(argv)
    if bool(args.out) == bool(args.ship):
        ap.error("give one of --out DIR or --ship DIR")
    if args.ship:
        if not args.source:
            ap.error("--ship needs --source TEXT (which run made the weights, on what machine)")
        rec = ship(args.ship, args.source)
        print(f"shipped {LITE_CNN_DIR / 'cnn.pth'} (sha256 {rec['sha256']})")
        return 0
    torch.set_num_threads(args.threads)
    b = LITE_BUDGET
    params = {k: b[k] for k in CNN_BUDGET_KEYS}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "parameters.json").write_text(json.dumps(params, indent=1) + "\n")
    cfg = get_config("lite", ["model.backbone_weights=random"])
    build_lite_cnn(
        cfg, out, b["cnn_steps"], b["cnn_images"], b["cnn_batch"], box_weight=b["cnn_box_weight"]
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Probe: can a self-supervised lite CNN replace the supervised stand-in?

Dense contrastive learning (one idea of DenseCL / pixel-level InfoNCE): two views of the
same generated image (random square crop with 35-100 % of the area, resized back to 128 px
with RoIAlign, horizontal flip, random channel order, brightness, contrast, 20 % grey);
each layer3 cell of view 1 is pulled towards view 2's feature at the same image point
(bilinear) and pushed from every cell of view 2 in the batch (InfoNCE, temperature 0.2,
a 2-layer 1x1-conv projection). No label is used. The same separate generated set, the
same ResNet-18 up to layer3, optimizer and schedule as the supervised stand-in
(`reproduce.lite_cnn.train_cnn`); then the same k-NN probe as the report's.

    python reproduce/probes/ssl_cnn.py --steps 600 --out runs/ssl_cnn

prints the contrastive accuracy while training and writes cnn.pth, log.jsonl and
probe.json (k-NN accuracy on the detection val objects, trained vs random CNN) into --out.
What came out is in reproduce/results/lite/SUMMARY.md.
"""

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import roi_align

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a file: the checkout

from reproduce import lite_cnn as lc  # noqa: E402
from updetr_lite.config import get_config  # noqa: E402
from updetr_lite.data.embedded import build_embedded  # noqa: E402


def random_views(x: torch.Tensor, g: torch.Generator):
    """x float [B, 3, S, S] in [0, 1] -> views [B, 3, S, S], crop boxes [B, 4] (xyxy image
    pixels), flipped bool [B]."""
    b, size = len(x), x.shape[-1]
    side = torch.empty(b).uniform_(0.35, 1.0, generator=g).sqrt() * size
    x0, y0 = (torch.rand(b, generator=g) * (size - side) for _ in range(2))
    box = torch.stack([x0, y0, x0 + side, y0 + side], 1)
    rois = torch.cat([torch.arange(b, dtype=torch.float32)[:, None], box], 1)
    v = roi_align(x, rois, size, 1.0, 2, aligned=True)
    flip = torch.rand(b, generator=g) < 0.5
    v[flip] = v[flip].flip(-1)
    order = torch.stack([torch.randperm(3, generator=g) for _ in range(b)])
    v = torch.gather(v, 1, order[:, :, None, None].expand_as(v))
    v = v * torch.empty(b, 1, 1, 1).uniform_(0.6, 1.4, generator=g)
    mean = v.mean((1, 2, 3), keepdim=True)
    v = (v - mean) * torch.empty(b, 1, 1, 1).uniform_(0.6, 1.4, generator=g) + mean
    grey = torch.rand(b, generator=g) < 0.2
    v[grey] = v[grey].mean(1, keepdim=True).expand(-1, 3, -1, -1)
    return v.clamp(0, 1), box, flip


def cell_points(box: torch.Tensor, flip: torch.Tensor, n: int) -> torch.Tensor:
    """Image pixel coordinates [B, n, n, 2] (x, y) of the n x n cell centres of each view."""
    c = (torch.arange(n) + 0.5) / n
    u = c.expand(len(box), n, n)
    u = torch.where(flip[:, None, None], 1 - u, u)
    v = c[:, None].expand(len(box), n, n)
    w, h = (box[:, 2] - box[:, 0])[:, None, None], (box[:, 3] - box[:, 1])[:, None, None]
    return torch.stack([box[:, 0, None, None] + u * w, box[:, 1, None, None] + v * h], -1)


def to_grid(points: torch.Tensor, box: torch.Tensor, flip: torch.Tensor):
    """Image points [B, n, n, 2] -> grid_sample coordinates in the view [-1, 1], and whether
    each point lies inside that view."""
    w, h = (box[:, 2] - box[:, 0])[:, None, None], (box[:, 3] - box[:, 1])[:, None, None]
    u = (points[..., 0] - box[:, 0, None, None]) / w
    v = (points[..., 1] - box[:, 1, None, None]) / h
    u = torch.where(flip[:, None, None], 1 - u, u)
    inside = (u > 0) & (u < 1) & (v > 0) & (v < 1)
    return torch.stack([u, v], -1) * 2 - 1, inside


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--tau", type=float, default=0.2)
    ap.add_argument("--images", type=int, default=2000, help="as the supervised stand-in")
    ap.add_argument("--out", default="runs/ssl_cnn")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = get_config("lite")
    paths = build_embedded(lc.cnn_data_config(cfg, args.images))
    images, _ = lc.load_coco_split(paths.train_images, paths.train_json)  # labels unused
    data = torch.stack(images)
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    model = lc.DenseCNN(cfg.model.backbone, cfg.model.backbone_layer)
    proj = nn.Sequential(nn.Conv2d(256, 256, 1), nn.ReLU(), nn.Conv2d(256, 128, 1))
    params = list(model.trunk.parameters()) + list(proj.parameters())
    opt = torch.optim.AdamW(params, lr=2e-3, weight_decay=1e-4, fused=True)
    warm = max(1, args.steps // 20)

    def factor(i: int) -> float:
        if i < warm:
            return (i + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (i - warm) / max(1, args.steps - warm))))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    t0 = time.monotonic()
    with open(out / "log.jsonl", "w") as log:
        for step in range(1, args.steps + 1):
            x = data[torch.randint(0, len(data), (args.batch,), generator=g)].float() / 255
            v1, box1, flip1 = random_views(x, g)
            v2, box2, flip2 = random_views(x, g)
            both = lc._normalize(torch.cat([v1, v2]) * 255)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                z = proj(model.trunk(both.contiguous(memory_format=torch.channels_last)))
            z = F.normalize(z.float(), dim=1)
            z1, z2 = z[: args.batch], z[args.batch :]  # [B, C, n, n]
            grid, inside = to_grid(cell_points(box1, flip1, z1.shape[-1]), box2, flip2)
            same = F.grid_sample(z2, grid, align_corners=False)  # view 2 at view 1's cells
            q = z1.permute(0, 2, 3, 1)[inside]  # [P, C]
            k = F.normalize(same.permute(0, 2, 3, 1)[inside], dim=1)
            others = z2.permute(0, 2, 3, 1).reshape(-1, z2.shape[1])  # every cell of view 2
            logits = torch.cat([(q * k).sum(1, keepdim=True), q @ others.T], 1) / args.tau
            loss = F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if step % 20 == 0 or step == args.steps:
                rec = {
                    "step": step,
                    "loss": float(loss.detach()),
                    "acc": float((logits.argmax(1) == 0).float().mean()),
                    "pairs": len(q),
                    "time": time.monotonic() - t0,
                }
                log.write(json.dumps(rec) + "\n")
                log.flush()
                print(rec, flush=True)
    torch.save(model.torchvision_state_dict(), out / "cnn.pth")
    result = lc.probe(cfg, out / "cnn.pth")
    result["train_seconds"] = time.monotonic() - t0
    (out / "probe.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

"""Training the demo's lite checkpoint: UP-DETR pre-trained on a few photos with 'roi' patch
features, in one process (``ensure_lite_checkpoint(train=True)``, ``make_shipped_checkpoint``).

- ``DEMO_MODEL``, ``demo_config``: the demo checkpoint's settings (lite or smoke sizes);
- ``train_demo_checkpoint``: the training loop (the frozen CNN runs once per photo);
- ``save_demo_checkpoint``: a pretext checkpoint in the engine's format.
"""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import numpy as np
import torch
from torchvision.transforms.v2 import functional as TF

from ..config import Config, get_config
from ..data.images import as_uint8_image
from ..data.query_patches import sample_boxes
from .localize import DemoError, augment_image, prepare_image

# Demo checkpoint steps (one torch thread): lite, the shipped checkpoint's steps (its JSON
# has the measured time); smoke (one 64 px photo, tests only): 1500 steps
STEPS_FULL, STEPS_SMOKE = 2500, 1500
# part of the default checkpoint's name: bump it when the trainer's draws change, so that a
# checkpoint trained by an older trainer is not picked up (2: boxes from data.query_patches)
TRAINER_VERSION = 2


def save_demo_checkpoint(model, cfg: Config, path, **extra) -> Path:
    """A pretext checkpoint in the engine's format (kind, num_classes, model, config)."""
    from ..engine.checkpoint import atomic_save

    path = Path(path)
    atomic_save(
        {
            "kind": "pretext",
            "num_classes": 2,
            "model": model.state_dict(),
            "config": cfg.to_dict(),
            **extra,
        },
        path,
    )
    return path


# The shipped demo checkpoint's model: the lite sizes with the earlier lite transformer (no
# encoder layers, positions in the decoder's values) and 'roi' patch features, which the demo
# trainer pools from a few photos; the lite preset itself now runs the paper's transformer
# and crop patch features (its runs are what `bash run.sh` writes). Its CNN is random: the
# demo learns to find patches from the CNN's maps of the photos, whatever the CNN
DEMO_MODEL = (
    "model.backbone_weights=random",
    "model.enc_layers=0",
    "model.pos_in_values=True",
    "model.enc_layer_scale=0.0",
    "model.cnn_bf16=None",
    "pretext.patch_feature=roi",
    "pretext.crop_bank=0",
)


def demo_config(smoke: bool) -> Config:
    """The demo's checkpoint settings: the lite sizes and ``DEMO_MODEL``; smoke: the smoke
    preset's 64 px images and 1 encoder layer, 'roi' patches, but width 64 and 2 decoder layers
    (the smoke model's width 32 and single decoder layer did not reach IoU 0.5 on its training
    photo in 3000 steps)."""
    if smoke:
        cfg = get_config(
            "smoke",
            [
                "model.hidden_dim=64",
                "model.dim_feedforward=128",
                "model.dec_layers=2",
                "model.enc_layer_scale=0.0",
                "pretext.patch_feature=roi",
                "pretext.crop_bank=0",
            ],
        )
    else:
        cfg = get_config("lite", list(DEMO_MODEL))
    cfg.pretext = dataclasses.replace(cfg.pretext, patch_dropout=0.0 if smoke else 0.1)
    return cfg.validate()


def train_demo_checkpoint(
    cfg: Config,
    images: list[np.ndarray],
    out_path,
    steps: int,
    batch_size: int = 8,
    augmented_copies: int = 2,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Pre-train UP-DETR (random query patch detection, roi patch features) on a few images
    and save the checkpoint. The frozen CNN runs once per image (and per augmented copy);
    each step takes one image, ``batch_size`` sets of M random patches in it.
    Returns {"path", "losses" (per step), "seconds"}."""
    import time
    from functools import partial

    from tqdm.auto import tqdm

    from ..engine.step import train_step
    from ..models import build_criterion, build_updetr

    if cfg.pretext.patch_feature != "roi":
        raise DemoError(
            "train_demo_checkpoint trains roi patch features (pretext.patch_feature='roi')"
        )
    if not images:
        raise DemoError("train_demo_checkpoint: no images to train on")
    torch.manual_seed(seed)
    rng = random.Random(seed)  # which view each set of patches is pooled from
    boxes_rng = torch.Generator().manual_seed(seed)  # the query patch boxes
    model, criterion = build_updetr(cfg), build_criterion(cfg, pretext=True)
    size, max_size = max(cfg.data.pretext_scales), cfg.data.pretext_max_size
    cache = []
    with torch.no_grad():
        model.eval()
        for i, img in enumerate(images):
            # augment at the model's input size: blurring a full-size photo is slow
            x, _ = prepare_image(img, size, max_size)
            small = TF.resize(
                torch.from_numpy(as_uint8_image(img)).permute(2, 0, 1), list(x.shape[-2:])
            )
            small = small.permute(1, 2, 0).numpy()
            views = [small] + [
                augment_image(small, seed * 1000 + i * 10 + a) for a in range(augmented_copies)
            ]
            feats = []
            for v in views:
                x, m = prepare_image(v, size, max_size)
                feats.append(model.backbone(x, m))
            cache.append(feats)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.pretrain.lr, weight_decay=cfg.pretrain.weight_decay)
    model.train()
    losses, t0 = [], time.time()
    m_patches, cpu = cfg.pretext.num_patches, torch.device("cpu")
    bar = tqdm(range(steps), desc="pre-training the demo checkpoint", disable=not progress)
    for step in bar:
        views = cache[step % len(cache)]
        features, fmask = views[0]
        h, w = images[step % len(cache)].shape[:2]
        boxes = torch.stack(
            [
                sample_boxes(h, w, m_patches, cfg.pretext.min_patch, boxes_rng)
                for _ in range(batch_size)
            ]
        )
        # patch features: each set of patches from the clean image or an augmented copy
        pf = torch.cat(
            [
                model.roi_patch_feature(*views[rng.randrange(len(views))], boxes[b : b + 1])
                for b in range(batch_size)
            ]
        )
        feats = features.expand(batch_size, -1, -1, -1)
        targets = [
            {"boxes": bx, "labels": torch.ones(m_patches, dtype=torch.int64)} for bx in boxes
        ]
        forward = partial(
            model.forward_features, feats, fmask.expand(batch_size, -1, -1), patch_feature=pf
        )
        where = f"demo checkpoint step {step + 1}"
        values = train_step(
            forward, targets, criterion, opt, params, cfg.pretrain.clip_max_norm, cpu, where=where
        )
        losses.append(values["loss"])
        if step % 10 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-10:]):.3f}")
    model.eval()
    path = save_demo_checkpoint(model, cfg, out_path, step=steps, losses=losses)
    return {"path": str(path), "losses": losses, "seconds": time.time() - t0}

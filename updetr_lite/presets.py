"""The three presets of ``config.Config`` (``get_config(name)`` picks one):

- ``paper``: the paper's settings exactly (ResNet-50, 6+6 layers, width 256,
  N = 100, M = 10, ...), from the paper's Sec. 3-4 and the authors' release.
- ``lite``: a small model that trains usefully on 2 CPU cores in minutes, on
  the embedded data; ``LITE_SCALE`` and ``LITE_DEVIATIONS`` name every field in which it
  differs from ``paper``.
- ``smoke``: toy sizes for the test suite.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from .config import (
    Config,
    DataConfig,
    ModelConfig,
    PretextConfig,
    TrainConfig,
)

# The lite scale's frozen CNN, shipped inside the package (the SwAV stand-in: no weights can be
# downloaded). reproduce/lite_cnn.py trained it; record.json says how, with its sha256.
LITE_CNN_DIR = Path(__file__).resolve().parent / "lite_cnn"
LITE_CNN = LITE_CNN_DIR / "cnn.pth"


def paper() -> Config:
    """The paper's settings (reference-facts.md); pre-training on ImageNet, fine-tuning on VOC."""
    return Config(
        name="paper",
        pretrain=TrainConfig(epochs=60, lr=1e-4, lr_backbone=0.0, lr_drop=40, batch_size=256),
        finetune=TrainConfig(epochs=150, lr=1e-4, lr_backbone=5e-5, lr_drop=100, batch_size=32),
        data=DataConfig(pretext_root="", detection="voc", detection_root="", num_workers=8),
        model=ModelConfig(num_classes=21),  # VOC: 20 classes + background id 0 unused
        # patches cut and augmented on the training device: per worker 345 against 33
        # samples/s, and less CPU time in all (docs/benchmarks.md)
        pretext=PretextConfig(patch_pipeline="device"),
    ).validate()


def lite() -> Config:
    """Small enough to train in minutes on 2 CPU cores: the paper's transformer scaled down
    (3 encoder + 3 decoder layers, pre-norm, positions on keys and queries only), a ResNet-18
    stand-in CNN (trained by the reproduction kit's lite_cnn), cached frozen features, and
    the paper's patch feature (the CNN on the crop) from a cached bank of crops per image.

    Its deviations from the paper preset other than size are named in ``LITE_DEVIATIONS``
    (each with the measurement that justifies it; tests/test_config.py keeps that list whole).
    """
    return Config(
        name="lite",
        model=ModelConfig(
            backbone="resnet18",
            backbone_layer="layer3",
            backbone_weights=str(LITE_CNN),
            cnn_bf16=False,
            hidden_dim=128,
            nheads=8,
            enc_layers=3,
            enc_layer_scale=0.1,
            dec_layers=3,
            dim_feedforward=512,
            num_queries=20,
            num_classes=6,  # 5 shape classes, ids 1..5
        ),
        pretext=PretextConfig(
            num_patches=4, patch_size=64, min_patch=12, patch_init_gain=4.0, crop_bank=16
        ),
        data=DataConfig(
            pretext_scales=(128,),
            pretext_max_size=128,
            scales=(96, 112, 128),
            max_size=160,
            crop_scales=(96, 112),
            crop_min_max=(80, 128),
            test_size=128,
        ),
        pretrain=TrainConfig(
            epochs=20,
            lr=5e-4,
            lr_backbone=0.0,
            lr_drop=10_000,
            batch_size=32,
            max_steps=2000,
            cache_features=True,
        ),
        finetune=TrainConfig(
            epochs=40,
            lr=1e-3,
            warmup_steps=100,
            lr_backbone=0.0,
            lr_drop=32,
            batch_size=32,
            max_steps=1000,
            cache_features=True,
        ),
    ).validate()


# What the lite preset changes from the paper preset, field by field. LITE_SCALE: sizes,
# data and budgets (a smaller model on the embedded data for fewer steps). LITE_DEVIATIONS:
# every other difference, with the measurement behind it (reproduce/results/lite/SUMMARY.md
# and reproduce/probes/lite_search.md); tests/test_config.py fails on an unnamed difference.
LITE_SCALE = frozenset(
    "model.backbone model.backbone_layer model.hidden_dim model.enc_layers model.dec_layers "
    "model.dim_feedforward model.num_queries model.num_classes pretext.num_patches "
    "pretext.patch_size pretext.min_patch data.pretext_scales data.pretext_max_size data.scales "
    "data.max_size data.crop_scales data.crop_min_max data.test_size data.pretext_root "
    "data.detection data.num_workers pretrain.epochs pretrain.lr_drop pretrain.batch_size "
    "pretrain.max_steps finetune.epochs finetune.lr_drop finetune.max_steps".split()
)
LITE_DEVIATIONS = {
    "model.backbone_weights": "the kit's lite CNN (updetr_lite/lite_cnn/cnn.pth: a ResNet-18 "
    "up to layer3 trained by reproduce/lite_cnn.py on per-cell classes and box edges of a "
    "separate generated set) stands in for SwAV's ResNet-50: nothing can be downloaded; k-NN "
    "accuracy on object crops of the val split 83.1 % against 33.7 % for a random CNN; scratch "
    "DETR AP50 at 800 steps (seed 0) 40.5 % on it against 16.8 % on the earlier classes-only, "
    "600-step CNN (reproduce/probes/lite_search.md)",
    "model.cnn_bf16": "fp32 frozen CNN and lite-CNN training on every CPU, so that the lite "
    "numbers do not depend on AVX-512 BF16 (bf16 maps differ from fp32 by relative L2 0.0063, "
    "and a bf16-trained lite CNN scored k-NN 79.2 % against 77.4 % in fp32)",
    "model.enc_layer_scale": "LayerScale 0.1 on the encoder blocks: without it the encoder "
    "memory collapses during pre-training (token-to-token std 0.094 after 500 steps against "
    "0.471 with it) and scratch DETR reached AP50 11.5 % against 19.8 % with it",
    "pretext.patch_init_gain": "patch projection initialised x4, so that the patch feature, "
    "not the object query, dominates a query at the start of pre-training",
    "pretext.patch_pipeline": "patches cut in the DataLoader workers (the device pipeline "
    "gives other random numbers; with cached features it is never used)",
    "pretext.crop_bank": "the paper's crop patch feature from a cached bank of 16 augmented "
    "patches per image (M drawn per use) instead of fresh crops: the CNN never runs per step",
    "pretrain.cache_features": "the frozen CNN runs once per pretext image (its maps cached): "
    "the lite budget would not pay for the CNN every step",
    "finetune.cache_features": "cached maps of the eval view: no detection augmentation",
    "finetune.lr_backbone": "the CNN stays frozen while fine-tuning (needed for cached maps)",
    "pretrain.lr": "5e-4: the pretext at 1e-4 stayed on its plateau in the lite budget",
    "finetune.lr": "1e-3 with a 100-step warm-up: scratch DETR at 800 steps reached AP50 "
    "1.2 % at 2e-4, 8.3 % at 5e-4 and 11.5 % at 1e-3 (without LayerScale)",
    "finetune.warmup_steps": "the 1e-3 fine-tuning lr needs a warm-up (see finetune.lr)",
}


def smoke() -> Config:
    """Toy sizes for tests: seconds per run on a CPU."""
    c = lite()
    c.name = "smoke"
    c.model = dataclasses.replace(
        c.model,
        hidden_dim=32,
        nheads=2,
        enc_layers=1,
        # two decoder layers: aux outputs exist, and the group mask changes the answer (in a
        # first decoder layer every query's self-attention value is the same, so no mask matters)
        dec_layers=2,
        dim_feedforward=64,
        num_queries=8,
        dropout=0.0,
        fast_path=False,  # tests compare exact numbers; tests/test_fastpath.py covers the fast path
        backbone_weights=None,  # a random CNN: the tests' runs do not read the shipped file
    )
    c.pretext = dataclasses.replace(c.pretext, num_patches=2, patch_size=32, crop_bank=4)
    c.data = dataclasses.replace(
        c.data,
        pretext_scales=(64,),
        pretext_max_size=64,
        scales=(48, 64),
        max_size=80,
        crop_scales=(48,),
        crop_min_max=(40, 64),
        test_size=64,
        embedded_image_size=64,
        embedded_train=16,
        embedded_val=8,
        embedded_unlabeled=16,
        num_workers=0,
    )
    c.pretrain = dataclasses.replace(c.pretrain, epochs=2, batch_size=4, max_steps=0, lr_drop=100)
    c.finetune = dataclasses.replace(
        c.finetune, epochs=2, batch_size=4, max_steps=0, lr_drop=100, warmup_steps=0
    )
    return c.validate()


PRESETS = {"paper": paper, "lite": lite, "smoke": smoke}

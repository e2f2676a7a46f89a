"""The CNN: a torchvision ResNet with frozen batch norm, cut after layer3 or layer4.

Module names follow DETR (``body.conv1``, ``body.layer1`` ...), so that inside a DETR the
keys read ``backbone.0.body.layer1...`` exactly as in the authors' checkpoints. The speed
switches (batch norm folded, no autograd, bf16) are `updetr_lite.fastpath`'s, applied to the
built model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.ops import FrozenBatchNorm2d

RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101")
STAGES = ("layer1", "layer2", "layer3", "layer4")


class Backbone(nn.Module):
    """ResNet trunk returning its last used stage and the padding mask at that resolution.

    Args:
        name: resnet18 | resnet34 | resnet50 | resnet101 (built with ``weights=None``: offline).
        layer: last stage used, ``layer3`` (stride 16) or ``layer4`` (stride 32).
        frozen_cnn: no CNN weight trains (``requires_grad`` False everywhere; the paper's frozen
            pre-training CNN). `updetr_lite.models.build.cnn_trains` decides it from the settings.
        train_layers_from: when not frozen, stages from this one on train (DETR: layer2..layer4);
            the stem and earlier stages stay fixed (``requires_grad`` False).
    """

    def __init__(
        self,
        name: str = "resnet50",
        layer: str = "layer4",
        frozen_cnn: bool = False,
        train_layers_from: str = "layer2",
    ):
        super().__init__()
        if name not in RESNETS:
            raise ValueError(f"unknown backbone {name!r}: choose one of {', '.join(RESNETS)}")
        if layer not in ("layer3", "layer4"):
            raise ValueError(f"backbone layer must be layer3 or layer4, not {layer!r}")
        if train_layers_from not in STAGES:
            raise ValueError(
                f"train_layers_from must be one of {STAGES}, not {train_layers_from!r}"
            )
        resnet = getattr(torchvision.models, name)(weights=None, norm_layer=FrozenBatchNorm2d)
        self.body = IntermediateLayerGetter(resnet, return_layers={layer: "0"})
        self.name, self.layer = name, layer
        # output channels of the stage: x4 for bottleneck blocks
        self.num_channels = {"layer3": 256, "layer4": 512}[layer] * (
            4 if name in ("resnet50", "resnet101") else 1
        )
        trainable = STAGES[STAGES.index(train_layers_from) :]
        for pname, p in self.body.named_parameters():
            if frozen_cnn or not pname.startswith(trainable):
                p.requires_grad_(False)

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, 3, H, W] -> the last used stage's map [B, C, H/16 or H/32, W/16 or W/32]."""
        return self.body(x)["0"]

    def forward(
        self, images: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """images [B, 3, H, W], mask bool [B, H, W] (True = padding)
        -> features [B, C, h, w], mask bool [B, h, w] (nearest downsampling, as DETR)."""
        features = self.trunk(images)
        small = F.interpolate(mask[None].float(), size=features.shape[-2:])[0].to(torch.bool)
        return features, small

    def patch_feature(self, patches: torch.Tensor) -> torch.Tensor:
        """patches [P, 3, p, p] -> [P, C]: global average pool of the last used stage."""
        return self.trunk(patches).mean(dim=(2, 3))

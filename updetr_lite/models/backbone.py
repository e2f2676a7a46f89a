"""The CNN: a torchvision ResNet with frozen batch norm, cut after layer3 or layer4.

Module names follow DETR (``body.conv1``, ``body.layer1`` ...), so that inside a DETR the
keys read ``backbone.0.body.layer1...`` exactly as in the authors' checkpoints.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.ops import FrozenBatchNorm2d

from ..fastpath import FrozenCNN

RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101")
STAGES = ("layer1", "layer2", "layer3", "layer4")


class Backbone(nn.Module):
    """ResNet trunk returning its last used stage and the padding mask at that resolution.

    Args:
        name: resnet18 | resnet34 | resnet50 | resnet101 (built with ``weights=None``: offline).
        layer: last stage used, ``layer3`` (stride 16) or ``layer4`` (stride 32).
        frozen_cnn: no CNN weight trains, and the CNN runs under ``torch.no_grad`` so no
            autograd graph is built (the paper's frozen pre-training CNN).
        train_layers_from: when not frozen, stages from this one on train (DETR: layer2..layer4);
            the stem and earlier stages stay fixed.
        fast: run the part of the CNN that never trains (all of it when frozen; else the stem
            and the stages before ``train_layers_from``) through
            `updetr_lite.fastpath.FrozenCNN` (batch norm folded into the convolutions,
            channels_last, no autograd graph, bf16 where the hardware has it). The folded copy
            is derived state: rebuilt after a weight load, never saved.
    """

    def __init__(
        self,
        name: str = "resnet50",
        layer: str = "layer4",
        frozen_cnn: bool = False,
        train_layers_from: str = "layer2",
        fast: bool = False,
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
        self.name, self.layer, self.frozen_cnn = name, layer, frozen_cnn
        self.fast = fast
        self._fast_cnn: dict[torch.device, FrozenCNN] = {}  # not a submodule: not in state_dict
        self.body.register_load_state_dict_post_hook(lambda *_: self._fast_cnn.clear())
        # output channels of the stage: x4 for bottleneck blocks
        self.num_channels = {"layer3": 256, "layer4": 512}[layer] * (
            4 if name in ("resnet50", "resnet101") else 1
        )
        trainable = STAGES[STAGES.index(train_layers_from) :]
        for pname, p in self.body.named_parameters():
            if frozen_cnn or not pname.startswith(trainable):
                p.requires_grad_(False)
        # the stages that run after the fixed part when the CNN trains
        self._trained_stages = () if frozen_cnn else tuple(s for s in trainable if s in self.body)

    def _fixed_part(self) -> nn.Module:
        """The modules of ``body`` whose weights never train, in order (all when frozen)."""
        if self.frozen_cnn:
            return self.body
        return nn.Sequential(
            OrderedDict((n, m) for n, m in self.body.items() if n not in self._trained_stages)
        )

    def _trunk(self, x: torch.Tensor) -> torch.Tensor:
        if not self.fast:
            with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen_cnn):
                return self.body(x)["0"]
        if x.device not in self._fast_cnn:
            self._fast_cnn.clear()
            self._fast_cnn[x.device] = FrozenCNN(self._fixed_part()).to(x.device)
        x = self._fast_cnn[x.device](x)
        if self.frozen_cnn:
            return x["0"]
        # the stages that train run as usual (autograd, autocast if on)
        for name in self._trained_stages:
            x = self.body[name](x)
        return x

    def forward(
        self, images: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """images [B, 3, H, W], mask bool [B, H, W] (True = padding)
        -> features [B, C, h, w], mask bool [B, h, w] (nearest downsampling, as DETR)."""
        features = self._trunk(images)
        small = F.interpolate(mask[None].float(), size=features.shape[-2:])[0].to(torch.bool)
        return features, small

    def patch_feature(self, patches: torch.Tensor) -> torch.Tensor:
        """patches [P, 3, p, p] -> [P, C]: global average pool of the last used stage."""
        return self._trunk(patches).mean(dim=(2, 3))

"""DETR: CNN + transformer + set prediction heads (Carion et al., 2020)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .backbone import Backbone
from .position_encoding import PositionEmbeddingSine
from .transformer import Transformer


class MLP(nn.Module):
    """``num_layers`` Linear layers with ReLU between them (DETR's box head: d, d, 4)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int):
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1)
        outs = [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims, outs))

    def forward(self, x):
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == len(self.layers) - 1 else F.relu(layer(x))
        return x


class Joiner(nn.Sequential):
    """[CNN, positional encoding], as DETR's ``backbone`` (so keys read ``backbone.0.body...``)."""

    def __init__(self, cnn: Backbone, position_embedding: nn.Module):
        super().__init__(cnn, position_embedding)

    @property
    def num_channels(self) -> int:
        return self[0].num_channels

    def patch_feature(self, patches: torch.Tensor) -> torch.Tensor:
        return self[0].patch_feature(patches)

    def forward(self, images, mask):
        return self[0](images, mask)


class DETR(nn.Module):
    """forward(images [B, 3, H, W], mask bool [B, H, W]) -> dict(
    pred_logits [B, N, K+1] (last index = no-object), pred_boxes [B, N, 4] cxcywh in [0, 1]
    relative to the unpadded image, aux_outputs: the same for decoder layers 0..L-2)."""

    def __init__(
        self,
        backbone: Backbone | Joiner,
        transformer: Transformer,
        num_classes: int,
        num_queries: int,
        aux_loss: bool = True,
    ):
        super().__init__()
        d = transformer.d_model
        if not isinstance(backbone, Joiner):
            backbone = Joiner(backbone, PositionEmbeddingSine(d // 2, normalize=True))
        self.backbone, self.transformer = backbone, transformer
        self.num_queries, self.num_classes, self.aux_loss = num_queries, num_classes, aux_loss
        self.input_proj = nn.Conv2d(backbone.num_channels, d, kernel_size=1)
        self.query_embed = nn.Embedding(num_queries, d)
        self.class_embed = nn.Linear(d, num_classes + 1)
        self.bbox_embed = MLP(d, d, 4, 3)

    def forward(self, images: torch.Tensor, mask: torch.Tensor) -> dict:
        features, mask = self.backbone(images, mask)
        return self.forward_features(features, mask)

    def _decode(self, features, mask, query_pos, tgt_mask=None):
        """features [B, C, h, w] -> hs [L, B, N', d] for the given query_pos [B, N', d]."""
        pos = self.backbone[1](mask).to(features.dtype)
        hs, _ = self.transformer(
            src=self.input_proj(features),
            mask=mask,
            query_pos=query_pos,
            pos=pos,
            tgt_mask=tgt_mask,
        )
        return hs

    def _heads(self, hs: torch.Tensor) -> list[dict]:
        logits = self.class_embed(hs)
        boxes = self.bbox_embed(hs).sigmoid()
        return [{"pred_logits": lg, "pred_boxes": bx} for lg, bx in zip(logits, boxes)]

    def _pack(self, per_layer: list[dict]) -> dict:
        out = dict(per_layer[-1])
        if self.aux_loss:
            out["aux_outputs"] = per_layer[:-1]
        return out

    def forward_features(self, features: torch.Tensor, mask: torch.Tensor) -> dict:
        """The same as forward from CNN features [B, C, h, w] and their mask [B, h, w]
        (lets the engine cache a frozen CNN's output)."""
        query_pos = self.query_embed.weight[None].expand(features.shape[0], -1, -1)
        return self._pack(self._heads(self._decode(features, mask, query_pos)))

"""UP-DETR: DETR pre-trained by random query patch detection (Dai et al., CVPR 2021).

M query patches are cropped from an image; each patch's feature (the same CNN, global
average pooled) is projected to d and added to a group of N/M object queries. The model must
find each patch's box in the image (class 1 = "query patch"; num_classes = 2 + no-object as
the authors' release) and reconstruct the patch feature.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.ops import box_convert, roi_align

from .detr import DETR


def group_attention_mask(num_queries: int, num_patches: int) -> torch.Tensor:
    """[N, N] additive mask for decoder self-attention: 0 within a group of N/M queries
    (queries g*N/M .. (g+1)*N/M - 1 carry patch g), -inf across groups. Right for any N
    divisible by M (the authors' loop assumed N = M*M)."""
    if num_patches < 1 or num_queries % num_patches:
        raise ValueError(
            f"num_queries {num_queries} must be divisible by num_patches {num_patches}"
        )
    group = torch.arange(num_queries) // (num_queries // num_patches)
    mask = torch.full((num_queries, num_queries), float("-inf"))
    mask[group[:, None] == group[None, :]] = 0.0
    return mask


def localize(outputs: dict, queries_per_patch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep the most confident query of each group.

    outputs: pred_logits [B, k*n, 3], pred_boxes [B, k*n, 4] with n = queries_per_patch.
    -> boxes [B, k, 4] cxcywh normalised, scores [B, k] (probability of the query-patch class).
    """
    logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]
    b, nq = logits.shape[:2]
    scores = logits.softmax(-1)[..., 1].view(b, nq // queries_per_patch, queries_per_patch)
    best, idx = scores.max(-1)
    grouped = boxes.view(b, nq // queries_per_patch, queries_per_patch, 4)
    return grouped.gather(2, idx[..., None, None].expand(-1, -1, 1, 4)).squeeze(2), best


class UPDETR(DETR):
    """forward(images [B, 3, H, W], mask [B, H, W], patches [B, k, 3, p, p] or None,
    patch_boxes [B, k, 4] cxcywh normalised or None) -> dict(pred_logits [B, k*N/M, 3],
    pred_boxes [B, k*N/M, 4], pred_feature [B, k*N/M, C], patch_feature [B, k, C] (the
    reconstruction target), aux_outputs). k = M in training; k <= M at evaluation.

    patch_feature: 'crop' runs the CNN on the resized crops (the paper); 'roi' averages a
    RoIAlign of the image feature map over each patch box (a variant the lite report runs
    beside the paper's way: the CNN never sees the crops). Either feature may also come in
    precomputed through ``forward_features`` (the lite scale's cached bank of crops).

    patch_init_gain (lite deviation, ``pretext.patch_init_gain``) multiplies patch_proj's
    initial weights: a query is object query + patch feature, and with PyTorch's init the
    N(0, 1) object query outweighs the projected patch feature; x4 lets the patch lead, and
    the lite pretext left its plateau hundreds of steps sooner.

    The returned patch_feature is not detached: with a frozen CNN it carries no gradient
    anyway; with a trainable CNN the reconstruction loss reaches the CNN through both sides,
    as in the authors' code.
    """

    def __init__(
        self,
        backbone,
        transformer,
        num_classes: int = 2,
        num_queries: int = 100,
        aux_loss: bool = True,
        num_patches: int = 10,
        attention_mask: bool = True,
        query_shuffle: bool = False,
        patch_dropout: float = 0.1,
        patch_feature: str = "crop",
        roi_size: int = 4,
        patch_init_gain: float = 1.0,
    ):
        super().__init__(backbone, transformer, num_classes, num_queries, aux_loss)
        if patch_feature not in ("crop", "roi"):
            raise ValueError(f"patch_feature must be 'crop' or 'roi', not {patch_feature!r}")
        d, c = transformer.d_model, self.backbone.num_channels
        self.num_patches = num_patches
        self.attention_mask, self.query_shuffle = attention_mask, query_shuffle
        self.patch_dropout, self.patch_feature, self.roi_size = (
            patch_dropout,
            patch_feature,
            roi_size,
        )
        self.patch_proj = nn.Linear(c, d)
        if patch_init_gain != 1.0:
            with torch.no_grad():
                self.patch_proj.weight.mul_(patch_init_gain)
                self.patch_proj.bias.mul_(patch_init_gain)
        self.reconstruction_head = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, c))
        self.register_buffer(
            "group_mask", group_attention_mask(num_queries, num_patches), persistent=False
        )

    @property
    def queries_per_patch(self) -> int:
        return self.num_queries // self.num_patches

    def roi_patch_feature(self, features, mask, patch_boxes) -> torch.Tensor:
        """features [B, C, h, w], mask [B, h, w], patch_boxes [B, k, 4] cxcywh normalised to the
        unpadded image -> [B, k, C], the mean of a roi_size x roi_size RoIAlign per box."""
        b, k = patch_boxes.shape[:2]
        # valid (unpadded) extent of each image in feature cells: padding is bottom/right
        valid_h = (~mask[:, :, 0]).sum(1).to(features.dtype)
        valid_w = (~mask[:, 0, :]).sum(1).to(features.dtype)
        scale = torch.stack((valid_w, valid_h, valid_w, valid_h), -1)[:, None]
        xyxy = box_convert(patch_boxes.to(features.dtype), "cxcywh", "xyxy") * scale
        pooled = roi_align(features, list(xyxy), self.roi_size, 1.0, 2, aligned=True)
        return pooled.mean((2, 3)).view(b, k, -1)

    def forward(self, images, mask, patches=None, patch_boxes=None) -> dict:
        features, fmask = self.backbone(images, mask)
        patch_feature = None
        if self.patch_feature == "crop":
            if patches is None:
                raise ValueError(
                    "UPDETR with patch_feature='crop' needs the patches [B, M, 3, p, p]"
                )
            b, k = patches.shape[:2]
            patch_feature = self.backbone.patch_feature(patches.flatten(0, 1)).view(b, k, -1)
        return self.forward_features(features, fmask, patch_feature, patch_boxes)

    def forward_features(self, features, mask, patch_feature=None, patch_boxes=None) -> dict:
        """From CNN features [B, C, h, w], mask [B, h, w] and either precomputed patch features
        [B, k, C] or patch_boxes [B, k, 4] (roi mode)."""
        if patch_feature is None:
            if patch_boxes is None:
                raise ValueError("UPDETR needs patch features [B, M, C] or patch_boxes [B, M, 4]")
            patch_feature = self.roi_patch_feature(features, mask, patch_boxes)
        b, k = patch_feature.shape[:2]
        if k > self.num_patches:
            raise ValueError(f"got {k} query patches, the model has num_patches={self.num_patches}")
        n = self.queries_per_patch
        nq = k * n
        queries = self.query_embed.weight
        if self.training and self.query_shuffle:
            # one permutation per forward, shared by the batch: it changes which object query
            # embeddings serve a group, never which patch a group carries
            queries = queries[torch.randperm(self.num_queries, device=queries.device)]
        queries = queries[:nq]
        # patch g goes to queries g*n .. (g+1)*n - 1
        carried = self.patch_proj(patch_feature).repeat_interleave(n, dim=1)  # [B, nq, d]
        if self.training and self.patch_dropout > 0:
            # zero each (query, image) copy independently, no rescaling (as the authors)
            keep = torch.rand(b, nq, 1, device=carried.device) >= self.patch_dropout
            carried = carried * keep
        query_pos = queries[None] + carried
        tgt_mask = self.group_mask[:nq, :nq] if self.attention_mask else None
        hs = self._decode(features, mask, query_pos, tgt_mask)
        per_layer = self._heads(hs)
        for out, feat in zip(per_layer, self.reconstruction_head(hs)):
            out["pred_feature"] = feat
            out["patch_feature"] = patch_feature
        return self._pack(per_layer)

    def localize(self, outputs: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Per patch best box [B, k, 4] cxcywh and its score [B, k]."""
        return localize(outputs, self.queries_per_patch)

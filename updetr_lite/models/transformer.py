"""DETR's encoder-decoder transformer, pre-norm or post-norm.

Module names follow DETR (``encoder.layers.i.self_attn``, ``decoder.layers.i.multihead_attn``,
``linear1``, ``norm1`` ...) so the authors' state dicts load directly. Tensors are batch first.
Plain ``nn.MultiheadAttention`` and ``nn.Dropout``: `updetr_lite.fastpath.enable` swaps in
its CPU variants (same arithmetic, cheaper dropout masks) after the model is built.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _with_pos(x: torch.Tensor, pos: torch.Tensor | None) -> torch.Tensor:
    return x if pos is None else x + pos


def _attend(mha: nn.MultiheadAttention, query, key, value, key_padding_mask=None, attn_mask=None):
    """query [B, L, d], key and value [B, S, d]; key_padding_mask bool [B, S] (True = ignore);
    attn_mask [L, S] additive -> [B, L, d] (the attention weights are not returned)."""
    return mha(
        query,
        key,
        value,
        key_padding_mask=key_padding_mask,
        attn_mask=attn_mask,
        need_weights=False,
    )[0]


class EncoderLayer(nn.Module):
    """``layer_scale`` > 0 (``model.enc_layer_scale``, off at 0): each residual branch is
    multiplied by a learnable per-channel gain that starts at this value (LayerScale), so the
    layer starts near the identity; the parameters ``gamma1``, ``gamma2`` [d] exist only then."""

    def __init__(
        self,
        d_model,
        nhead,
        dim_feedforward,
        dropout,
        normalize_before,
        layer_scale=0.0,
    ):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout, batch_first=True)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1, self.norm2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.dropout1, self.dropout2 = nn.Dropout(dropout), nn.Dropout(dropout)
        self.normalize_before = normalize_before
        self.gamma1 = self.gamma2 = None
        if layer_scale > 0:
            self.gamma1 = nn.Parameter(torch.full((d_model,), float(layer_scale)))
            self.gamma2 = nn.Parameter(torch.full((d_model,), float(layer_scale)))

    def _ffn(self, x):
        return self.linear2(self.dropout(F.relu(self.linear1(x))))

    @staticmethod
    def _scaled(x, gamma):
        return x if gamma is None else x * gamma

    def forward(self, src, key_padding_mask, pos):
        """src, pos [B, S, d]; key_padding_mask bool [B, S] (True = padding)."""
        if self.normalize_before:
            x = self.norm1(src)
            q = k = _with_pos(x, pos)
            src = src + self._scaled(
                self.dropout1(_attend(self.self_attn, q, k, x, key_padding_mask)), self.gamma1
            )
            return src + self._scaled(self.dropout2(self._ffn(self.norm2(src))), self.gamma2)
        q = k = _with_pos(src, pos)
        attn = _attend(self.self_attn, q, k, src, key_padding_mask)
        src = self.norm1(src + self._scaled(self.dropout1(attn), self.gamma1))
        return self.norm2(src + self._scaled(self.dropout2(self._ffn(src)), self.gamma2))


class DecoderLayer(nn.Module):
    def __init__(
        self,
        d_model,
        nhead,
        dim_feedforward,
        dropout,
        normalize_before,
        pos_in_values=False,
    ):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout, batch_first=True)
        self.multihead_attn = nn.MultiheadAttention(
            d_model, nhead, dropout=dropout, batch_first=True
        )
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1, self.norm2, self.norm3 = (nn.LayerNorm(d_model) for _ in range(3))
        self.dropout1, self.dropout2, self.dropout3 = (nn.Dropout(dropout) for _ in range(3))
        self.normalize_before = normalize_before
        self.pos_in_values = pos_in_values

    def _ffn(self, x):
        return self.linear2(self.dropout(F.relu(self.linear1(x))))

    def _self(self, x, query_pos, tgt_mask):
        q = k = _with_pos(x, query_pos)
        return _attend(self.self_attn, q, k, x, attn_mask=tgt_mask)

    def _cross(self, x, memory, memory_mask, pos, query_pos):
        key = _with_pos(memory, pos)
        value = key if self.pos_in_values else memory
        return _attend(self.multihead_attn, _with_pos(x, query_pos), key, value, memory_mask)

    def forward(self, tgt, memory, tgt_mask, memory_mask, pos, query_pos):
        """tgt, query_pos [B, N, d]; memory, pos [B, S, d]; tgt_mask additive [N, N] or None;
        memory_mask bool [B, S]."""
        if self.normalize_before:
            tgt = tgt + self.dropout1(self._self(self.norm1(tgt), query_pos, tgt_mask))
            tgt = tgt + self.dropout2(
                self._cross(self.norm2(tgt), memory, memory_mask, pos, query_pos)
            )
            return tgt + self.dropout3(self._ffn(self.norm3(tgt)))
        tgt = self.norm1(tgt + self.dropout1(self._self(tgt, query_pos, tgt_mask)))
        tgt = self.norm2(tgt + self.dropout2(self._cross(tgt, memory, memory_mask, pos, query_pos)))
        return self.norm3(tgt + self.dropout3(self._ffn(tgt)))


class Encoder(nn.Module):
    def __init__(self, layers: list[nn.Module], norm: nn.Module | None):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.norm = norm  # only with pre-norm: the residual stream is never normalised otherwise

    def forward(self, src, key_padding_mask, pos):
        for layer in self.layers:
            src = layer(src, key_padding_mask, pos)
        return src if self.norm is None else self.norm(src)


class Decoder(nn.Module):
    def __init__(self, layers: list[nn.Module], norm: nn.Module):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.norm = norm

    def forward(self, tgt, memory, tgt_mask, memory_mask, pos, query_pos):
        """-> [L, B, N, d]: every layer's output after the shared final LayerNorm (aux losses)."""
        outs = []
        for layer in self.layers:
            tgt = layer(tgt, memory, tgt_mask, memory_mask, pos, query_pos)
            outs.append(self.norm(tgt))
        return torch.stack(outs)


class Transformer(nn.Module):
    """DETR's transformer.

    forward(src [B, d, h, w], mask bool [B, h, w], query_pos [B, N, d], pos [B, d, h, w],
    tgt_mask additive float [N, N] or None) -> (hs [L, B, N, d], memory [B, h*w, d]).
    The decoder input starts at zeros; the object queries (plus patch features in UP-DETR)
    enter only as ``query_pos``, added to queries and keys as in DETR.

    ``pos_in_values`` (lite deviation, ``model.pos_in_values``): the cross-attention values
    are memory + pos, like its keys. DETR's values carry position only through what the
    encoder mixed in; with no encoder (``enc_layers=0``) they would carry none, and no
    decoder could say *where* the token it attends to is.
    """

    def __init__(
        self,
        d_model: int = 256,
        nhead: int = 8,
        num_encoder_layers: int = 6,
        num_decoder_layers: int = 6,
        dim_feedforward: int = 2048,
        dropout: float = 0.1,
        normalize_before: bool = False,
        pos_in_values: bool = False,
        enc_layer_scale: float = 0.0,
    ):
        super().__init__()
        args = (d_model, nhead, dim_feedforward, dropout, normalize_before)
        self.encoder = Encoder(
            [EncoderLayer(*args, enc_layer_scale) for _ in range(num_encoder_layers)],
            nn.LayerNorm(d_model) if normalize_before else None,
        )
        self.decoder = Decoder(
            [DecoderLayer(*args, pos_in_values) for _ in range(num_decoder_layers)],
            nn.LayerNorm(d_model),
        )
        self.d_model, self.nhead = d_model, nhead
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(self, src, mask, query_pos, pos, tgt_mask=None):
        src = src.flatten(2).transpose(1, 2)  # [B, h*w, d]
        pos = pos.flatten(2).transpose(1, 2)
        mask = mask.flatten(1)
        memory = self.encoder(src, mask, pos)
        tgt = torch.zeros_like(query_pos)
        hs = self.decoder(tgt, memory, tgt_mask, mask, pos, query_pos)
        return hs, memory

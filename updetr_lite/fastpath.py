"""The fast path: speed switches applied to a model built in plain PyTorch.

``enable(model)`` (called by `updetr_lite.models.build` when ``model.fast_path``, the default)
changes a DETR / UPDETR in place, keeping every parameter, buffer and state-dict key, so
checkpoints load and save the same way with the fast path on or off:

- The CNN becomes a `FastBackbone`: the stages whose weights never train (all of them with
  the paper's frozen pre-training CNN; else the stem and layer1, DETR's rule) run as a
  `FrozenCNN`, a copy with each frozen BatchNorm folded into the convolution before it,
  channels_last, under ``torch.no_grad`` and, where the CPU has bf16 instructions (or on
  CUDA), in bf16 (a bf16 copy of the folded weights: the numbers of bf16 autocast without
  casting every weight on every call). The copy is derived state: rebuilt after a weight
  load, never saved. ``tests/test_fastpath.py`` states how close it stays to fp32.
- Every ``nn.Dropout`` becomes `Dropout` and every ``nn.MultiheadAttention`` becomes
  `MultiheadAttention`: on the CPU in training, dropout draws its keep masks 4 per 64-bit
  random word (`dropout`) instead of ATen's one random number per element (``bernoulli_``,
  ~6 ns an element: 15 % of a paper-preset pretext step on 2 cores went there).
  Elsewhere (eval, CUDA) they are the plain modules.

Also here: where bf16 autocast is fast (`bf16_supported`, `amp_enabled`).
"""

from __future__ import annotations

import copy
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights
from torchvision.ops import FrozenBatchNorm2d

from .models.backbone import Backbone

_BATCH_NORMS = (FrozenBatchNorm2d, nn.BatchNorm2d)


def bf16_supported(device: torch.device | str) -> bool:
    """True where bf16 autocast is fast: CUDA with bf16, or a CPU with AVX-512 BF16 / AMX
    whose AVX-512 kernels torch runs. ``ATEN_CPU_CAPABILITY=avx2`` (with ``ONEDNN_MAX_CPU_ISA=AVX2``)
    caps torch at what a CPU without AVX-512 runs, and then bf16 is as slow as there."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if torch.backends.cpu.get_cpu_capability() != "AVX512":
        return False
    cpu = torch.cpu
    return bool(
        getattr(cpu, "_is_avx512_bf16_supported", lambda: False)()
        or getattr(cpu, "_is_amx_tile_supported", lambda: False)()
    )


def amp_enabled(
    requested: bool, device: torch.device | str, setting: str = "amp", warn: bool = True
) -> bool:
    """bf16 autocast only where it is fast: ``requested`` on a device with bf16 arithmetic
    (``bf16_supported``). Elsewhere it falls back to fp32 with one printed line: on a CPU with
    AVX2 only, bf16 autocast emulates every product (one Linear 532x256 -> 2048 forward +
    backward: 776 ms in bf16 against 18.5 ms in fp32, measured on an AVX2 EPYC)."""
    if not requested or bf16_supported(device):
        return requested
    if not warn:
        return False
    device = torch.device(device)
    what = "GPU" if device.type == "cuda" else f"CPU ({torch.backends.cpu.get_cpu_capability()})"
    print(
        f"[updetr-lite] warning: {setting}=True ignored: this {what} has no fast bf16 "
        f"(AVX-512 BF16 or AMX on a CPU), so bf16 autocast would be many times slower; "
        f"running in fp32"
    )
    return False


def _fold(conv: nn.Conv2d, bn: nn.Module) -> nn.Conv2d:
    fused = copy.deepcopy(conv)
    weight, bias = fuse_conv_bn_weights(
        conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias
    )
    fused.weight, fused.bias = weight, bias
    return fused


def fold_batch_norms(module: nn.Module) -> nn.Module:
    """Return a copy of ``module`` with every (conv, frozen BN) pair folded into one conv.

    Pairs are found as torchvision's ResNet writes them: ``convK``/``bnK`` attributes of a
    block (the stem's ``conv1``/``bn1`` included) and ``Conv2d`` followed by a BN inside an
    ``nn.Sequential`` (the ``downsample`` branch). The BN is replaced by ``nn.Identity``.
    """
    module = copy.deepcopy(module)
    for parent in list(module.modules()):
        children = dict(parent.named_children())
        for name, child in children.items():
            if isinstance(child, nn.Conv2d) and name.startswith("conv"):
                bn_name = "bn" + name[len("conv") :]
                bn = children.get(bn_name)
                if isinstance(bn, _BATCH_NORMS):
                    setattr(parent, name, _fold(child, bn))
                    setattr(parent, bn_name, nn.Identity())
        if isinstance(parent, nn.Sequential):
            for i in range(len(parent) - 1):
                if isinstance(parent[i], nn.Conv2d) and isinstance(parent[i + 1], _BATCH_NORMS):
                    parent[i] = _fold(parent[i], parent[i + 1])
                    parent[i + 1] = nn.Identity()
    return module


def cnn_bf16(setting: bool | None, device: torch.device | str) -> bool:
    """Whether the frozen CNN runs in bf16: ``model.cnn_bf16`` (None: where the hardware has
    it, `bf16_supported`)."""
    return bf16_supported(device) if setting is None else setting


class FrozenCNN(nn.Module):
    """Wrap a frozen CNN (any module mapping [B,3,H,W] to a feature map) for inference.

    ``forward(x [B, 3, H, W]) -> [B, C, h, w]`` float32, contiguous, no autograd graph (a
    dict of such maps when the CNN returns a dict, as torchvision's IntermediateLayerGetter).
    ``bf16=None`` picks bf16 autocast where the hardware supports it.
    """

    def __init__(self, cnn: nn.Module, bf16: bool | None = None):
        super().__init__()
        self.cnn = fold_batch_norms(cnn).eval().to(memory_format=torch.channels_last)
        for p in self.cnn.parameters():
            p.requires_grad_(False)
        self.bf16 = bf16
        # a bf16 copy of the folded weights, made at the first bf16 call: autocast would cast
        # every weight again on every call (it caches casts only for weights that need grad)
        self._bf16_cnn: dict[torch.device, nn.Module] = {}  # not a submodule: not in state_dict

    def _apply(self, fn, recurse=True):  # .to(device) / .float(): drop the stale bf16 copy
        self._bf16_cnn = {}
        return super()._apply(fn, recurse)

    def train(self, mode: bool = True):  # always inference: dropout-free, BN folded
        return super().train(False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        use_bf16 = cnn_bf16(self.bf16, x.device)
        cnn = self.cnn
        if use_bf16:
            if x.device not in self._bf16_cnn:
                self._bf16_cnn[x.device] = copy.deepcopy(self.cnn).to(torch.bfloat16)
            cnn, x = self._bf16_cnn[x.device], x.to(torch.bfloat16)
        # all in bf16 (weights, activations), as autocast would run the convolutions; the
        # in-between ops (ReLU, residual add, max pool) in bf16 too, as under autocast
        with torch.autocast(x.device.type, enabled=False):
            out = cnn(x.contiguous(memory_format=torch.channels_last))
        if isinstance(out, dict):
            return {k: v.float().contiguous() for k, v in out.items()}
        return out.float().contiguous()


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """``F.dropout`` with cheaper random bits on the CPU (elsewhere it is ``F.dropout``).

    Each element is dropped when a uniform 16-bit draw falls below ``round(65536 p)``: the
    drop probability is ``round(65536 p) / 65536`` (p = 0.1: 0.1000061) and the kept ones
    are scaled by the inverse of the keep probability, so the expectation is ``x``. Four
    draws come from one 64-bit word of the default generator (``torch.manual_seed`` holds).
    """
    if not training or p <= 0.0 or p >= 1.0 or x.device.type != "cpu":
        return F.dropout(x, p, training)
    drop = round(p * 65536)
    words = torch.empty((x.numel() + 3) // 4, dtype=torch.int64).random_(-(2**63), None)
    keep = (words.view(torch.int16)[: x.numel()] >= drop - 32768).view(x.shape)
    scale = 65536 / (65536 - drop)
    if x.dtype in (torch.float32, torch.float64):
        # one mask holding the scale: 1.5x faster than x * bool mask * scale, the same bits
        # forward and backward (1 * scale is exact; dropped elements keep their sign of zero)
        return x.mul(keep.to(x.dtype).mul_(scale))
    return x.mul(keep).mul_(scale)  # bf16 / fp16: the scale is applied in fp32 arithmetic


class Dropout(nn.Dropout):
    """``nn.Dropout`` drawing its masks with `dropout` (no parameters: state dicts unchanged)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)


class MultiheadAttention(nn.MultiheadAttention):
    """``nn.MultiheadAttention`` (batch first) whose attention dropout uses `dropout`.

    While training on the CPU with attention dropout and ``need_weights=False``, the same
    arithmetic is written out (projections from the module's own weights, scaled dot
    product, softmax, `dropout` on the attention weights, output projection); otherwise
    (eval, CUDA's fused kernels, weights asked for) it is ``nn.MultiheadAttention`` itself.
    query [B, L, d]; key, value [B, S, d]; key_padding_mask bool [B, S] (True = ignore);
    attn_mask [L, S], additive float or bool (True = blocked) -> ([B, L, d], None).
    """

    def forward(
        self,
        query,
        key,
        value,
        key_padding_mask=None,
        need_weights=True,
        attn_mask=None,
        average_attn_weights=True,
        is_causal=False,
    ):
        written_out = (
            self.training
            and self.dropout > 0
            and query.device.type == "cpu"
            and not need_weights
            and not is_causal
            and self.batch_first
            and self._qkv_same_embed_dim
            and self.in_proj_bias is not None
            and self.bias_k is None
            and not self.add_zero_attn
        )
        if not written_out:
            return super().forward(
                query,
                key,
                value,
                key_padding_mask=key_padding_mask,
                need_weights=need_weights,
                attn_mask=attn_mask,
                average_attn_weights=average_attn_weights,
                is_causal=is_causal,
            )
        (b, n, d), h = query.shape, self.num_heads
        w, bias = self.in_proj_weight.chunk(3), self.in_proj_bias.chunk(3)
        q, k, v = (
            F.linear(t, wi, bi).unflatten(-1, (h, d // h)).transpose(1, 2)
            for t, wi, bi in zip((query, key, value), w, bias)
        )  # [B, h, L or S, d/h]
        scores = (q * (d // h) ** -0.5) @ k.transpose(-2, -1)  # [B, h, L, S]
        if attn_mask is not None:
            if attn_mask.dtype == torch.bool:
                scores = scores.masked_fill(attn_mask, float("-inf"))
            else:
                scores = scores + attn_mask
        # a batch of equal-size images has no padding: skip the copy (the same result)
        if key_padding_mask is not None and bool(key_padding_mask.any()):
            scores = scores.masked_fill(key_padding_mask[:, None, None, :], float("-inf"))
        weights = dropout(scores.softmax(-1), self.dropout, True)
        return self.out_proj((weights @ v).transpose(1, 2).reshape(b, n, d)), None


class FastBackbone(Backbone):
    """A `Backbone` whose fixed stages run as a `FrozenCNN`; the same ``body`` module.

    The fixed part is the leading stages of ``body`` none of whose weights require grad when
    the FastBackbone is made (all of them for a frozen CNN); the stages after it run as
    usual (autograd, autocast if on). The FrozenCNN is made at the first forward on a device
    and dropped when weights are loaded into ``body`` (never saved: not a submodule).
    """

    def __init__(self, plain: Backbone, bf16: bool | None = None):
        nn.Module.__init__(self)  # not Backbone.__init__: take plain's modules, build none
        self.body = plain.body  # the same modules: the same parameters and state-dict keys
        self.name, self.layer, self.num_channels = plain.name, plain.layer, plain.num_channels
        stages = list(self.body)
        trains = [any(p.requires_grad for p in self.body[s].parameters()) for s in stages]
        n_fixed = trains.index(True) if any(trains) else len(stages)
        self.fixed, self.trained = tuple(stages[:n_fixed]), tuple(stages[n_fixed:])
        self.bf16 = bf16  # FrozenCNN's: None = where the hardware has it
        runners: dict[torch.device, FrozenCNN] = {}
        self._runners = runners
        self.body.register_load_state_dict_post_hook(lambda *_: runners.clear())

    def _fixed_part(self) -> nn.Module:
        if not self.trained:
            return self.body
        return nn.Sequential(OrderedDict((n, self.body[n]) for n in self.fixed))

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        if x.device not in self._runners:
            self._runners.clear()
            self._runners[x.device] = FrozenCNN(self._fixed_part(), self.bf16).to(x.device)
        x = self._runners[x.device](x)
        if not self.trained:
            return x["0"]
        for name in self.trained:
            x = self.body[name](x)
        return x


def enable(model: nn.Module, bf16: bool | None = None) -> nn.Module:
    """Put ``model`` (a DETR, UPDETR or Backbone built plain) on the fast path; returns it.

    In place: the `Backbone` is replaced by a `FastBackbone` holding the same ``body``, and
    each ``nn.Dropout`` / ``nn.MultiheadAttention`` object becomes this module's subclass
    (the same object, parameters and state-dict keys; the subclass only adds a forward), so
    optimizers, checkpoints and the RNG stream are untouched; a second call changes nothing.
    Call it once ``requires_grad`` is final: it reads which CNN stages are fixed. A bare
    Backbone cannot be replaced in place: its FastBackbone is returned instead. ``bf16``: the
    frozen CNN's precision (`FrozenCNN`; None: bf16 where the hardware has it).
    """
    if type(model) is Backbone:
        return FastBackbone(model, bf16)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is Backbone:
                setattr(parent, name, FastBackbone(child, bf16))
            elif type(child) is nn.Dropout:
                child.__class__ = Dropout
            elif type(child) is nn.MultiheadAttention:
                child.__class__ = MultiheadAttention
    return model


def is_enabled(model: nn.Module) -> dict[str, bool]:
    """Which switches ``model`` carries: {'fast_cnn': a FastBackbone, 'fast_dropout': a
    fast-path Dropout or MultiheadAttention (active on the CPU only)}."""
    mods = list(model.modules())
    return {
        "fast_cnn": any(isinstance(m, FastBackbone) for m in mods),
        "fast_dropout": any(isinstance(m, (Dropout, MultiheadAttention)) for m in mods),
    }

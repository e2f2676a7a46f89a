"""Every setting of the kit, in one place.

A `Config` has five sections: the model, the pretext task (random query patch
detection), the data, and one training schedule each for pre-training and
fine-tuning. Three presets fill them in (presets.py: ``paper``, ``lite``, ``smoke``);
``get_config(preset, overrides)`` returns one.

Any field can be overridden with a dotted ``section.field=value`` string, the
same syntax the command line takes (``--set pretrain.lr=2e-4``).
"""

from __future__ import annotations

import ast
import dataclasses
import json
import math
from dataclasses import dataclass, field


class ConfigError(ValueError):
    """A setting that cannot work; the message is one line for the user."""


# model.backbone_weights=random: no CNN weights, on purpose (the paper preset warns without)
RANDOM_CNN = "random"


@dataclass
class ModelConfig:
    backbone: str = "resnet50"  # resnet18 | resnet34 | resnet50 | resnet101
    backbone_layer: str = "layer4"  # last CNN stage used (lite stops at layer3)
    backbone_weights: str | None = None  # local file: torchvision, SwAV, DETR or UP-DETR format
    frozen_cnn: bool = True  # pre-training: no CNN weight trains (the paper's frozen CNN)
    # The fast path (fastpath.enable, applied by the model builders): the CNN's fixed part runs
    # folded (BN into conv), channels_last, without autograd, in bf16 where the hardware has it;
    # on the CPU dropout draws 16-bit keep masks. False: the plain fp32 models/ as written.
    fast_path: bool = True
    # The frozen CNN's precision on the fast path, and the lite CNN's training precision:
    # None: bf16 where the hardware has it (AVX-512 BF16 / AMX, CUDA), else fp32; False: fp32
    # everywhere, so that the numbers do not depend on the CPU (the lite scale); True: bf16
    cnn_bf16: bool | None = None
    hidden_dim: int = 256
    nheads: int = 8
    enc_layers: int = 6
    dec_layers: int = 6
    dim_feedforward: int = 2048
    dropout: float = 0.1
    pre_norm: bool = True  # the authors' release pre-trains with pre-norm
    # Lite deviation (models/transformer.py): positions added to the decoder's
    # cross-attention values as well as its keys, for a transformer without encoder layers
    pos_in_values: bool = False
    # > 0: each encoder block's residual branches start scaled by a learnable per-channel gain
    # of this value (LayerScale), against the encoder memory collapse at lite scale; 0: off
    enc_layer_scale: float = 0.0
    num_queries: int = 100  # N
    num_classes: int = 91  # detection classes for fine-tuning (COCO ids), no-object added
    aux_loss: bool = True


@dataclass
class PretextConfig:
    num_patches: int = 10  # M
    patch_size: int = 128  # query patches are resized to patch_size x patch_size
    attention_mask: bool = True  # group mask in decoder self-attention
    query_shuffle: bool = True  # the paper shuffles; the authors' release defaults to off
    patch_dropout: float = 0.1
    reconstruction: bool = True  # patch feature reconstruction loss
    # 'crop': the CNN on the resized crop (the paper's way).
    # 'roi': RoIAlign of the image's feature map over the patch box (a variant the lite
    #        report runs beside the paper's way: the CNN never sees the crops).
    patch_feature: str = "crop"
    min_patch: int = 8  # patch sides drawn uniformly in [min_patch, side - min_patch] pixels
    # Lite deviation: patch_proj's initial weights x this, so that the patch feature, not the
    # object query, dominates a query at the start of pre-training (1.0: PyTorch's init)
    patch_init_gain: float = 1.0
    # 'worker': each DataLoader worker crops, resizes and augments the M patches one by one;
    # 'device': the worker ships the uint8 image and per-patch parameters, and the patches
    # are cut (roi_align) and augmented in one batched pass on the training device
    # (data/device_patches.py; other numbers than 'worker', so lite and smoke keep 'worker';
    # the paper preset uses 'device')
    patch_pipeline: str = "worker"
    # > 0 (with pretrain.cache_features and 'crop'): the frozen CNN embeds this many augmented
    # query patches per image once, into the feature cache, and each step draws M of them
    # with their boxes (the crop patch feature at the cost of a cached 'roi' step); 0: the
    # crops are cut and embedded afresh every step
    crop_bank: int = 0


@dataclass
class LossConfig:
    ce: float = 1.0
    bbox: float = 5.0  # L1
    giou: float = 2.0
    rec: float = 1.0
    eos_coef: float = 0.1  # no-object weight; pretext uses M/N when eos_from_groups
    eos_from_groups: bool = True  # the paper's balance weight M/N (= 0.1 at M=10, N=100)
    cost_class: float = 1.0
    cost_bbox: float = 5.0
    cost_giou: float = 2.0


@dataclass
class DataConfig:
    # pretext images: shortest side drawn from pretext_scales, longest <= pretext_max_size
    pretext_scales: tuple[int, ...] = tuple(range(320, 481, 16))
    pretext_max_size: int = 600
    # detection (DETR augmentation): multi-scale resize and random crop
    scales: tuple[int, ...] = tuple(range(480, 801, 32))
    max_size: int = 1333
    crop_scales: tuple[int, ...] = (400, 500, 600)
    crop_min_max: tuple[int, int] = (384, 600)
    test_size: int = 800
    # where the data is: 'embedded' builds the procedural set into cache_dir
    pretext_root: str = "embedded"  # a folder tree of images, or 'embedded'
    detection: str = "embedded"  # 'embedded' | 'coco' | 'voc'
    detection_root: str = ""
    cache_dir: str = ".cache/updetr_lite"
    # embedded data sizes
    embedded_image_size: int = 128
    embedded_train: int = 1000
    embedded_val: int = 300
    embedded_unlabeled: int = 4000
    embedded_seed: int = 0
    num_workers: int = 2


@dataclass
class TrainConfig:
    epochs: int = 60
    lr: float = 1e-4
    lr_backbone: float = 0.0  # 0: the CNN does not train (no gradient either)
    weight_decay: float = 1e-4
    clip_max_norm: float = 0.1
    lr_drop: int = 40  # epoch at which lr is multiplied by 0.1
    batch_size: int = 32  # global, split across processes
    max_steps: int = 0  # > 0: stop after this many optimizer steps (smoke, lite)
    warmup_steps: int = 0  # > 0: lr rises linearly from lr/warmup_steps over these first steps
    eval_every: int = 1  # epochs
    checkpoint_every: int = 10  # epochs; last.pth is written every epoch
    amp: bool = False  # bf16 autocast
    seed: int = 42
    # Lite deviation: run the frozen CNN once per image and train on its cached features
    # (no image augmentation then). Needs lr_backbone == 0.
    cache_features: bool = False
    deterministic: bool = False  # torch.use_deterministic_algorithms, for exact resume tests
    log_every: int = 10  # steps between JSON-lines log records


@dataclass
class Config:
    name: str = "paper"
    model: ModelConfig = field(default_factory=ModelConfig)
    pretext: PretextConfig = field(default_factory=PretextConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    data: DataConfig = field(default_factory=DataConfig)
    pretrain: TrainConfig = field(default_factory=TrainConfig)
    finetune: TrainConfig = field(
        default_factory=lambda: TrainConfig(
            epochs=150, lr=1e-4, lr_backbone=5e-5, lr_drop=100, batch_size=32
        )
    )

    def validate(self) -> Config:
        """Check every setting's type and range (and the ones that must agree); returns self.

        The one place settings are checked: every entry point (``get_config``, ``from_dict``,
        ``override``, ``train``, the model builders) calls it before any work starts. A bad
        setting raises ConfigError with one line naming it, e.g. ``pretrain.lr='abc'``."""
        for section, rules in _RULES.items():
            sub = getattr(self, section) if section else self
            for f in dataclasses.fields(sub):
                _check_field(
                    f"{section}.{f.name}" if section else f.name,
                    getattr(sub, f.name),
                    f.type,
                    rules.get(f.name),
                )
        m, p = self.model, self.pretext
        if m.num_queries % p.num_patches:
            raise ConfigError(
                f"num_queries N={m.num_queries} must be divisible by num_patches M={p.num_patches}"
            )
        if p.patch_feature not in ("crop", "roi"):
            raise ConfigError(f"patch_feature must be 'crop' or 'roi', not {p.patch_feature!r}")
        if p.patch_pipeline not in ("worker", "device"):
            raise ConfigError(
                f"pretext.patch_pipeline must be 'worker' or 'device', not {p.patch_pipeline!r}"
            )
        if p.patch_init_gain <= 0:
            raise ConfigError(f"pretext.patch_init_gain must be > 0, not {p.patch_init_gain}")
        if m.enc_layers < 0 or m.dec_layers < 1:
            raise ConfigError(
                f"model.enc_layers must be >= 0 and dec_layers >= 1, not {m.enc_layers}, "
                f"{m.dec_layers}"
            )
        if m.hidden_dim % 4:  # the sine positions: x and y halves, each of sin/cos pairs
            raise ConfigError(f"model.hidden_dim={m.hidden_dim}: must be a multiple of 4")
        if m.hidden_dim % m.nheads:
            raise ConfigError(f"hidden_dim {m.hidden_dim} must be divisible by nheads {m.nheads}")
        lo, hi = self.data.crop_min_max
        if lo > hi:
            raise ConfigError(f"data.crop_min_max={self.data.crop_min_max!r}: min must be <= max")
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, d: dict) -> Config:
        kw = {}
        for f in dataclasses.fields(cls):
            if f.name not in d:
                continue
            sub = d[f.name]
            if isinstance(sub, dict):
                if "fast_cnn" in sub:  # its name in configs saved before 27 Nov 2026
                    sub = {("fast_path" if k == "fast_cnn" else k): v for k, v in sub.items()}
                sub_cls = type(getattr(cls(), f.name))
                names = {g.name: g for g in dataclasses.fields(sub_cls)}
                unknown = set(sub) - set(names)
                if unknown:
                    raise ConfigError(f"unknown settings in {f.name}: {sorted(unknown)}")
                sub = sub_cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in sub.items()})
            kw[f.name] = sub
        return cls(**kw).validate()

    def override(self, assignments: list[str]) -> Config:
        """Apply ``section.field=value`` strings; values are Python literals or bare strings."""
        d = self.to_dict()
        for a in assignments:
            key, sep, raw = a.partition("=")
            section, _, name = key.strip().partition(".")
            if (
                not sep
                or section not in d
                or not isinstance(d[section], dict)
                or name not in d[section]
            ):
                raise ConfigError(
                    f"cannot set {a!r}: expected section.field=value with a known field"
                )
            try:
                value = ast.literal_eval(raw)
            except (ValueError, SyntaxError):
                value = raw
            if raw in ("None", "null"):
                value = None
            d[section][name] = value
        return Config.from_dict(d)


# Per field: a choice tuple, or (low, high) bounds of a number (None: unbounded; a float low
# bound of 0.0 with ``open`` means > 0). Types come from the dataclass annotations.
_POS = (1, None)  # an integer >= 1
_NONNEG = (0, None)
_RULES: dict[str, dict] = {
    "": {},
    "model": {
        "backbone": ("resnet18", "resnet34", "resnet50", "resnet101"),
        "backbone_layer": ("layer3", "layer4"),
        "hidden_dim": _POS,
        "nheads": _POS,
        "enc_layers": _NONNEG,
        "dec_layers": _POS,
        "dim_feedforward": _POS,
        "dropout": (0.0, 1.0, "below"),
        "enc_layer_scale": (0.0, None),
        "num_queries": _POS,
        "num_classes": _POS,
    },
    "pretext": {
        "num_patches": _POS,
        "patch_size": (2, None),
        "patch_dropout": (0.0, 1.0, "below"),
        "patch_feature": ("crop", "roi"),
        "min_patch": _POS,
        "patch_init_gain": (0.0, None, "open"),
        "crop_bank": _NONNEG,
    },
    "loss": {
        k: (0.0, None)
        for k in ("ce", "bbox", "giou", "rec", "eos_coef", "cost_class", "cost_bbox", "cost_giou")
    },
    "data": {
        "pretext_scales": _POS,
        "pretext_max_size": _POS,
        "scales": _POS,
        "max_size": _POS,
        "crop_scales": _POS,
        "crop_min_max": _POS,
        "test_size": _POS,
        "detection": ("embedded", "coco", "voc"),
        "embedded_image_size": (32, None),
        "embedded_train": _POS,
        "embedded_val": _POS,
        "embedded_unlabeled": _POS,
        "embedded_seed": _NONNEG,
        "num_workers": _NONNEG,
    },
}
_RULES["pretrain"] = _RULES["finetune"] = {
    "epochs": _POS,
    "lr": (0.0, None),
    "lr_backbone": (0.0, None),
    "weight_decay": (0.0, None),
    "clip_max_norm": (0.0, None),
    "lr_drop": _POS,
    "batch_size": _POS,
    "max_steps": _NONNEG,
    "warmup_steps": _NONNEG,
    "eval_every": _POS,
    "checkpoint_every": _NONNEG,
    "seed": _NONNEG,
    "log_every": _POS,
}


def _type_error(name: str, value, what: str) -> ConfigError:
    return ConfigError(f"{name}={value!r}: must be {what}")


def _check_number(name: str, value, kind: str, rule) -> None:
    """``value`` is a ``kind`` ('int' | 'float') inside ``rule`` = (low, high[, 'open' |
    'below'])."""
    is_int = isinstance(value, int) and not isinstance(value, bool)
    if kind == "int" and not is_int:
        raise _type_error(name, value, "an integer")
    if kind == "float" and not (is_int or isinstance(value, float)):
        raise _type_error(name, value, "a number")
    if not math.isfinite(value):
        raise _type_error(name, value, "a finite number")
    if rule is None:
        return
    low, high, *how = rule
    open_low, open_high = how == ["open"], how == ["below"]
    if low is not None and (value < low or (open_low and value == low)):
        raise _type_error(name, value, f"{'>' if open_low else '>='} {low}")
    if high is not None and (value > high or (open_high and value == high)):
        raise _type_error(name, value, f"{'<' if open_high else '<='} {high}")


def _check_field(name: str, value, annotation: str, rule) -> None:
    """Type (from the dataclass annotation string) and range or choice of one setting."""
    if annotation == "str | None":
        if value is not None and not isinstance(value, str):
            raise _type_error(name, value, "a path (a string) or None")
    elif annotation == "str":
        if not isinstance(value, str):
            raise _type_error(name, value, "a string")
    elif annotation == "bool":
        if not isinstance(value, bool):
            raise _type_error(name, value, "True or False")
    elif annotation in ("int", "float"):
        _check_number(name, value, annotation, rule)
        return
    elif annotation.startswith("tuple[int"):
        pair = annotation == "tuple[int, int]"
        what = "a pair of integers, e.g. (384, 600)" if pair else "a tuple of integers, e.g. (64,)"
        if (
            not isinstance(value, tuple)
            or not value
            or (pair and len(value) != 2)
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        ):
            raise _type_error(name, value, what)
        for v in value:
            _check_number(name, v, "int", rule)
        return
    else:
        return  # a section (ModelConfig, ...): checked field by field on its own
    if isinstance(rule, tuple) and rule and isinstance(rule[0], str) and value not in rule:
        field_name = name.rpartition(".")[2]
        raise ConfigError(
            f"unknown {field_name} {value!r} ({name}): choose one of {', '.join(rule)}"
        )


def get_config(preset: str, overrides: list[str] | None = None) -> Config:
    """The preset ``paper``, ``lite`` or ``smoke`` (presets.py) with ``overrides`` applied."""
    # imported here: presets.py builds on this module's dataclasses
    from .presets import PRESETS

    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}: choose one of {', '.join(PRESETS)}")
    return PRESETS[preset]().override(overrides or [])

"""Loading weights: CNN checkpoints in three formats, pretext -> detector, parameter counts."""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field

import torch
from torch import nn

log = logging.getLogger(__name__)

DETR_CNN_PREFIX = "backbone.0.body."
# the authors' UP-DETR names -> this kit's (the rest of DETR's naming is shared)
AUTHOR_NAMES = {
    "patch2query.": "patch_proj.",
    "feature_align.layers.0.": "reconstruction_head.0.",
    "feature_align.layers.1.": "reconstruction_head.2.",
}
PRETEXT_ONLY = ("patch_proj.", "reconstruction_head.")


class WeightsError(ValueError):
    """A weights file that does not fit the model; the message names the file."""


@dataclass
class LoadReport:
    path: str
    format: str  # torchvision | swav | detr
    loaded: list[str] = field(default_factory=list)
    ignored: dict[str, str] = field(default_factory=dict)  # key -> why

    def reasons(self) -> dict[str, int]:
        """How many keys were ignored, per reason."""
        counts: dict[str, int] = {}
        for why in self.ignored.values():
            counts[why] = counts.get(why, 0) + 1
        return counts

    def summary(self) -> dict:
        """A JSON-able record: path, format, loaded (count), ignored (count per reason)."""
        return {
            "path": self.path,
            "format": self.format,
            "loaded": len(self.loaded),
            "ignored": self.reasons(),
        }

    def __str__(self) -> str:
        why = "; ".join(f"{n} {r}" for r, n in self.reasons().items()) or "none"
        return (
            f"{self.path} ({self.format} format): {len(self.loaded)} tensors loaded, ignored: {why}"
        )


def _read(path: str) -> dict:
    """The file's tensors, read without running pickled code (``checkpoint.safe_load``:
    tensors, numpy arrays and DETR's argparse ``args`` only). Anything else is refused, since
    unpickling runs arbitrary code, unless the user sets UPDETR_LITE_TRUST_PICKLE=1."""
    from ..engine.checkpoint import TRUST_PICKLE_ENV, safe_load

    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights file not found: {path}")
    try:
        return safe_load(path)
    except Exception as e:
        reason = " ".join(str(e).split())[:160]
        raise WeightsError(
            f"weights file {path}: not a plain tensor file ({type(e).__name__}: {reason}); "
            f"if it is a pickle you trust, set {TRUST_PICKLE_ENV}=1"
        ) from e


def _cnn(model: nn.Module) -> nn.Module:
    """The Backbone of a Backbone, a Joiner, or a DETR/UPDETR."""
    from .backbone import Backbone

    if isinstance(model, Backbone):
        return model
    if hasattr(model, "backbone"):
        return _cnn(model.backbone)
    if isinstance(model, nn.Sequential) and isinstance(model[0], Backbone):
        return model[0]
    raise TypeError(f"expected a Backbone, Joiner or DETR, got {type(model).__name__}")


def load_cnn_weights(backbone: nn.Module, path: str) -> LoadReport:
    """Load a local CNN checkpoint into ``backbone`` (a Backbone, or the model holding it).

    Formats (detected from the keys):
    - torchvision: a ResNet state dict; ``fc.*`` ignored.
    - SwAV: keys prefixed ``module.``; ``projection_head.*`` and ``prototypes.*`` ignored.
    - DETR / UP-DETR checkpoint: ``{"model": {...}}`` with ``backbone.0.body.`` CNN keys;
      every other key (transformer, heads) ignored.
    In every format ``num_batches_tracked`` (frozen batch norm keeps none) and the stages after
    the backbone's last layer are ignored. Anything else missing or unexpected is an error.
    """
    cnn = _cnn(backbone)
    ckpt = _read(path)
    if not isinstance(ckpt, dict):
        raise WeightsError(f"{path}: expected a state dict, got {type(ckpt).__name__}")
    sd = ckpt.get("model", ckpt.get("state_dict", ckpt))
    report = LoadReport(path, "torchvision")
    if any(k.startswith(DETR_CNN_PREFIX) for k in sd):
        report.format = "detr"
    elif sd and all(k.startswith("module.") for k in sd):
        report.format = "swav"
    body = cnn.body.state_dict()
    later = ("layer4.",) if cnn.layer == "layer3" else ()
    wanted: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        name = key
        if report.format == "detr":
            if not key.startswith(DETR_CNN_PREFIX):
                report.ignored[key] = "not part of the CNN"
                continue
            name = key[len(DETR_CNN_PREFIX) :]
        elif report.format == "swav":
            name = key[len("module.") :]
            if name.startswith(("projection_head.", "prototypes.")):
                report.ignored[key] = "SwAV head"
                continue
        if name.startswith("fc."):
            report.ignored[key] = "classifier (fc)"
        elif name.endswith("num_batches_tracked"):
            report.ignored[key] = "batch norm counter"
        elif name.startswith(later):
            report.ignored[key] = f"after {cnn.layer}"
        else:
            wanted[name] = value
    missing = sorted(set(body) - set(wanted))
    unexpected = sorted(set(wanted) - set(body))
    if missing or unexpected:
        raise WeightsError(
            f"{path} ({report.format} format) does not fit {cnn.name} up to {cnn.layer}: "
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''} ({len(missing)}), "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''} ({len(unexpected)})"
        )
    bad = [k for k in wanted if wanted[k].shape != body[k].shape]
    if bad:
        raise WeightsError(
            f"{path}: shape mismatch for {bad[0]}: {tuple(wanted[bad[0]].shape)} in the file, "
            f"{tuple(body[bad[0]].shape)} in {cnn.name} ({len(bad)} such keys)"
        )
    cnn.body.load_state_dict(wanted, strict=True)
    report.loaded = sorted(wanted)
    return report


def kit_name(key: str) -> str:
    """A key with the authors' UP-DETR names (AUTHOR_NAMES) renamed to this kit's."""
    for old, new in AUTHOR_NAMES.items():
        if key.startswith(old):
            return new + key[len(old) :]
    return key


def kit_names(state: dict) -> dict:
    """A state dict with kit_name keys: the same tensors in the same order."""
    return {kit_name(k): v for k, v in state.items()}


def _setting_for(keys: list[str], file_keys) -> str:
    """The model setting that most likely explains keys that one side has and the other not."""
    layers = {"encoder": "model.enc_layers", "decoder": "model.dec_layers"}
    for key in keys:
        if key.startswith("transformer.encoder.norm."):
            # DETR's encoder has a final LayerNorm only with pre-norm
            return "model.pre_norm"
        m = re.match(r"transformer\.(encoder|decoder)\.layers\.\d+\.", key)
        if m:
            prefix = f"transformer.{m.group(1)}.layers."
            n = len({k.split(".")[3] for k in file_keys if k.startswith(prefix)})
            return f"{layers[m.group(1)]} (the file has {n} {m.group(1)} layers)"
        if key.startswith(DETR_CNN_PREFIX + "layer4."):
            return "model.backbone_layer"
        if key.startswith(DETR_CNN_PREFIX):
            return "model.backbone"
    return "the model settings"


def _setting_for_shape(key: str) -> str:
    if key.startswith(DETR_CNN_PREFIX):
        return "model.backbone"
    if key == "query_embed.weight":
        return "model.num_queries or model.hidden_dim"
    if ".linear1." in key or ".linear2." in key:
        return "model.dim_feedforward or model.hidden_dim"
    return "model.hidden_dim"


def init_detr_from_pretext(detr: nn.Module, state_dict: dict) -> dict[str, list[str]]:
    """Initialise a DETR from a pretext (UP-DETR) state dict, this kit's or the authors'.

    Keeps the CNN, transformer, query_embed, input_proj and bbox_embed; drops class_embed (2
    pretext classes) and the pretext-only patch projection and reconstruction head.
    Returns and logs {"dropped": keys of the state dict not used, "new": keys of the DETR left
    at their fresh initialisation}, both sorted. Anything else that differs (a key only one side
    has, or a kept key of another shape) is a WeightsError naming the model setting that
    differs, e.g. model.pre_norm when only one side has transformer.encoder.norm.*.
    """
    sd = state_dict.get("model", state_dict)
    own = detr.state_dict()
    keep, dropped, unexpected = {}, [], []
    for key, value in sd.items():
        name = kit_name(key)
        if name.startswith(("class_embed.",) + PRETEXT_ONLY):
            dropped.append(key)
            continue
        if name not in own:
            unexpected.append(name)
            continue
        if own[name].shape != value.shape:
            raise WeightsError(
                f"pretext checkpoint key {key}: shape {tuple(value.shape)} does not fit the "
                f"detector's {tuple(own[name].shape)}: {_setting_for_shape(name)} differs"
            )
        keep[name] = value
    missing = sorted(k for k in set(own) - set(keep) if not k.startswith("class_embed."))
    if missing or unexpected:
        setting = _setting_for(unexpected + missing, list(keep) + unexpected)
        raise WeightsError(
            f"pretext checkpoint does not fit the detector: {setting} differs "
            f"(only in the file: {sorted(unexpected)[:3]}{'...' if len(unexpected) > 3 else ''}"
            f" ({len(unexpected)}); only in the detector: {missing[:3]}"
            f"{'...' if len(missing) > 3 else ''} ({len(missing)}))"
        )
    new = sorted(set(own) - set(keep))
    detr.load_state_dict(keep, strict=False)
    result = {"dropped": sorted(dropped), "new": new}
    msg = f"init from pretext: dropped {result['dropped']}; newly initialised {result['new']}"
    log.info(msg)
    print(msg)
    return result


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """Parameter counts: total, trainable, and total per part (backbone = CNN, transformer,
    heads = everything else: input_proj, query_embed, class/box heads, pretext layers)."""
    counts = {"total": 0, "trainable": 0, "backbone": 0, "transformer": 0, "heads": 0}
    for name, p in model.named_parameters():
        n = p.numel()
        counts["total"] += n
        counts["trainable"] += n if p.requires_grad else 0
        part = name.split(".")[0]
        counts[part if part in ("backbone", "transformer") else "heads"] += n
    return counts

"""Checkpoints: atomic writes, RNG states, and checks of what kind of model a file holds.

A training checkpoint is a dict::

    kind          'pretext' (UP-DETR pre-training) or 'detection' (DETR fine-tuning)
    num_classes   the model's class count (no-object excluded)
    model         state dict of the bare model (never the DDP wrapper)
    optimizer, scheduler  their state dicts (bf16 autocast needs no loss scaler)
    epoch         the epoch in progress (== epochs done when batches_done == 0)
    batches_done  batches of that epoch already trained (mid-epoch checkpoints)
    step          optimizer steps done
    rng           one RNG state dict per rank (python, numpy, torch, cuda)
    config        the full configuration (Config.to_dict())
    best, epoch_stats, log_records  bookkeeping for an exact resume

Files are written to a temporary file in the same folder, fsync'ed and moved over the old
file with ``os.replace``: a crash during a save leaves the previous file intact.
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path

import numpy as np
import torch

KINDS = ("pretext", "detection")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used here (wrong kind, class count, unreadable file)."""


class CheckpointWriteError(CheckpointError, RuntimeError):
    """A file that could not be written (disk full, file size limit, read-only folder)."""


def _write_failure(e: BaseException, path: Path) -> str:
    import errno
    import shutil

    code = getattr(e, "errno", None)
    if code == errno.ENOSPC:
        return "the disk is full"
    if code == errno.EFBIG:
        return "the file is larger than the file size limit (ulimit -f)"
    if code in (errno.EACCES, errno.EROFS, errno.EPERM):
        return "the folder is not writable"
    try:
        free = shutil.disk_usage(path.parent).free / 2**20
    except OSError:
        free = float("nan")
    why = " ".join(str(e).split())[:120]
    return f"the write failed ({why}); {free:.0f} MiB free there (disk full or ulimit -f?)"


def atomic_save(obj, path: str | os.PathLike) -> None:
    """torch.save ``obj`` to ``path`` so that ``path`` is always either the old or the new file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:  # torch.save's own "[enforce fail at ...]" too
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise CheckpointWriteError(f"cannot write {path}: {_write_failure(e, path)}") from e
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:  # some file systems refuse fsync on a directory
        pass


TRUST_PICKLE_ENV = "UPDETR_LITE_TRUST_PICKLE"  # =1: the user vouches for a pickled file


def safe_load(path, map_location="cpu"):
    """torch.load without running pickled code (``weights_only=True``), allowing only what
    checkpoints hold besides tensors: numpy arrays (the RNG states) and argparse's Namespace
    (the authors' ``args``). UPDETR_LITE_TRUST_PICKLE=1 unpickles anything (trusted files)."""
    import argparse

    if os.environ.get(TRUST_PICKLE_ENV) == "1":
        return torch.load(path, map_location=map_location, weights_only=False)
    core = getattr(np, "_core", None) or np.core
    allowed = [argparse.Namespace, np.ndarray, np.dtype, core.multiarray._reconstruct]
    allowed += [type(np.dtype(t)) for t in (np.uint32, np.int64, np.float64, np.bool_)]
    with torch.serialization.safe_globals(allowed):
        return torch.load(path, map_location=map_location, weights_only=True)


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """Read a checkpoint file; one-line errors for a missing or unreadable file."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path}: is a folder, not a checkpoint file")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path}: no such file")
    try:
        ckpt = safe_load(path, map_location)
    except Exception as e:  # truncated, not a torch file, or a pickle of other classes
        raise CheckpointError(
            f"checkpoint {path}: cannot be read ({type(e).__name__}: "
            f"{' '.join(str(e).split())[:200]})"
        ) from e
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"checkpoint {path}: expected a dict, found {type(ckpt).__name__}")
    return ckpt


def model_state(ckpt: dict) -> dict:
    """The model's state dict in a checkpoint (ours, the authors' {'model': ...}, or bare)."""
    state = ckpt.get("model", ckpt)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError("checkpoint holds no model state dict")
    return state


def infer_kind(ckpt: dict) -> tuple[str, int]:
    """(kind, num_classes) of a checkpoint: from its fields, else from its keys and shapes."""
    if "kind" in ckpt and "num_classes" in ckpt:
        return ckpt["kind"], int(ckpt["num_classes"])
    from ..models.weights import PRETEXT_ONLY, kit_names

    # the authors' release names the pretext layers patch2query / feature_align: rename first
    state = kit_names(model_state(ckpt))
    kind = "pretext" if any(k.startswith(PRETEXT_ONLY) for k in state) else "detection"
    if "class_embed.weight" not in state:
        raise CheckpointError("checkpoint has no class_embed.weight: not a DETR/UP-DETR model")
    return kind, int(state["class_embed.weight"].shape[0]) - 1


def check_kind(
    ckpt: dict, kind: str, num_classes: int | None, path: str | os.PathLike = ""
) -> None:
    """Raise CheckpointError unless the checkpoint holds a ``kind`` model with ``num_classes``."""
    found, classes = infer_kind(ckpt)
    where = f"checkpoint {path}" if path else "checkpoint"
    if found != kind:
        raise CheckpointError(
            f"{where} holds a {found} model, but a {kind} model is needed here"
            + (" (fine-tune from it with init=..., not resume)" if found == "pretext" else "")
        )
    if num_classes is not None and classes != num_classes:
        raise CheckpointError(f"{where} has {classes} classes but model.num_classes={num_classes}")


# model settings that change the network (keys, shapes or what the weights compute)
STRUCTURAL = (
    "backbone",
    "backbone_layer",
    "hidden_dim",
    "nheads",
    "enc_layers",
    "dec_layers",
    "dim_feedforward",
    "pre_norm",
    "pos_in_values",
    "num_queries",
)


def check_settings(ckpt: dict, model_cfg, path: str | os.PathLike = "") -> None:
    """Raise CheckpointError naming every model setting (STRUCTURAL) that differs between
    ``model_cfg`` (a ModelConfig) and the settings saved in the checkpoint: this kit's
    ``config["model"]`` or the authors' argparse ``args`` (same field names). Settings the file
    does not record are not checked here (the keys and shapes still are, when loading)."""
    saved = (ckpt.get("config") or {}).get("model")
    if saved is None and ckpt.get("args") is not None:
        saved = vars(ckpt["args"]) if hasattr(ckpt["args"], "__dict__") else dict(ckpt["args"])
    if not isinstance(saved, dict):
        return
    diff = [
        f"model.{k}={getattr(model_cfg, k)!r} here, {saved[k]!r} in the file"
        for k in STRUCTURAL
        if k in saved and saved[k] != getattr(model_cfg, k)
    ]
    if diff:
        where = f"checkpoint {path}" if path else "checkpoint"
        raise CheckpointError(
            f"{where} was saved with other model settings: {'; '.join(diff)} "
            f"(set them with --set to match)"
        )


def rng_state() -> dict:
    """This process's RNG states: python, numpy, torch CPU and (if any) CUDA."""
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def check_finite_state(state: dict, path: str | os.PathLike = "") -> None:
    """CheckpointError naming the file when a floating-point tensor holds NaN or inf."""
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(
            f"checkpoint {path}: {len(bad)} weight tensors hold NaN or inf (first: {bad[0]}); "
            "the run that wrote it had diverged"
        )

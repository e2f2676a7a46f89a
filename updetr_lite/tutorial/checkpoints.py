"""Which checkpoint the demo shows, and the small lite checkpoint that ships with the kit.

- ``ensure_lite_checkpoint``: the caller's main-job checkpoint (the lite pre-training of
  ``bash run.sh``) when it exists, else the shipped checkpoint (``SHIPPED_CHECKPOINT``), a
  freshly trained one when asked (a progress bar shows it), or the authors' UP-DETR
  checkpoint from a local path (``load_demo_model`` reads them all);
- ``checkpoint_note``: one line saying which of them the demo shows;
- ``make_shipped_checkpoint`` (``python -m updetr_lite.tutorial.checkpoints
  --make-checkpoint``): writes the shipped checkpoint and its JSON record.

Paths in the checkout (its ``runs/main``, its ``.cache``) are the caller's to pass: this
module only knows the folder inside the package.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from ..config import Config
from .localize import DemoError, demo_photos, training_patches_check
from .training import (
    STEPS_FULL,
    STEPS_SMOKE,
    TRAINER_VERSION,
    demo_config,
    train_demo_checkpoint,
)

# the lite checkpoint that ships with the kit (inside the package, so a pip install has it),
# written by `python -m updetr_lite.tutorial.checkpoints --make-checkpoint`; its JSON records
# the settings, the training time and the IoU on its test patches
SHIPPED_DIR = Path(__file__).resolve().parent / "demo_checkpoint"
SHIPPED_CHECKPOINT = SHIPPED_DIR / "lite_demo.pth"
SHIPPED_RECORD = SHIPPED_DIR / "lite_demo.json"


def load_demo_model(path, preset: str = "paper") -> tuple[torch.nn.Module, Config]:
    """(UPDETR in eval mode, its Config) from this kit's pretext checkpoint or the authors'
    (their settings read from the tensor shapes over ``preset``; ``engine.loading``)."""
    from ..engine.loading import load_model

    return load_model(path, kind="pretext", preset=preset)


def ensure_lite_checkpoint(
    path=None,
    smoke: bool = False,
    authors_checkpoint=None,
    steps: int | None = None,
    progress: bool = True,
    train: bool = False,
    main_run=None,
    cache_dir=None,
) -> Path:
    """The checkpoint the demo uses; nothing is trained unless asked.

    - ``authors_checkpoint``: a local path to the authors' (or any) UP-DETR pre-training
      checkpoint; returned as is (FileNotFoundError if absent; nothing is downloaded).
    - ``path``: that file when it exists; else one is trained there (a progress bar shows it).
    - ``train``: a fresh checkpoint trained on the demo photos (``STEPS_FULL`` steps, about
      the shipped checkpoint's ``train_seconds``; smoke: one 64 px photo, ``STEPS_SMOKE``),
      cached as ``cache_dir/lite-<hash of the settings>.pth`` (the notebooks pass the
      checkout's ``.cache/updetr_lite/demo``).
    - otherwise ``main_run`` (the lite pre-training of ``bash run.sh``: the notebooks pass the
      checkout's ``runs/main/pre_crop_s0/last.pth``) when given and it exists, else the
      checkpoint that ships with the kit (``SHIPPED_CHECKPOINT``).
    """
    if authors_checkpoint:
        p = Path(authors_checkpoint).expanduser()
        if not p.is_file():
            raise FileNotFoundError(f"authors' checkpoint not found: {p} (download it yourself)")
        return p
    if path and Path(path).is_file():
        return Path(path)
    if not (path or train):
        candidates = [Path(p) for p in (main_run, SHIPPED_CHECKPOINT) if p]
        for p in candidates:
            if p.is_file():
                return p
        missing = (
            f"neither {main_run} nor {SHIPPED_CHECKPOINT} exists (write the second"
            if main_run
            else f"{SHIPPED_CHECKPOINT} does not exist (write it"
        )
        raise DemoError(
            f"no demo checkpoint: {missing} with "
            "`python -m updetr_lite.tutorial.checkpoints --make-checkpoint`, or pass train=True)"
        )
    cfg = demo_config(smoke)
    # the default file is named after the settings and step count, so a checkpoint trained
    # with other settings (an older kit) is never picked up
    steps = steps or (STEPS_SMOKE if smoke else STEPS_FULL)
    tag = hashlib.sha256(f"{cfg.to_json()}{steps}{TRAINER_VERSION}".encode()).hexdigest()[:10]
    if not (path or cache_dir):
        raise DemoError("ensure_lite_checkpoint(train=True): pass path or cache_dir")
    p = Path(path) if path else Path(cache_dir) / f"{'smoke' if smoke else 'lite'}-{tag}.pth"
    if p.is_file():
        return p
    photos = demo_photos(smoke)
    train_demo_checkpoint(
        cfg,
        list(photos.values()),
        p,
        steps,
        batch_size=8 if smoke else 16,
        augmented_copies=1 if smoke else 3,
        progress=progress,
    )
    return p


def checkpoint_note(path, main_run=None) -> str:
    """One line saying which checkpoint the demo shows and what it has seen (``main_run``: the
    main job's checkpoint, as given to ``ensure_lite_checkpoint``)."""
    p = Path(path).resolve()
    if main_run and p == Path(main_run).resolve():
        return (
            f"checkpoint: {p} - the lite pre-training of `bash run.sh` (run pre_crop_s0, "
            "trained on the embedded data set's unlabeled images)"
        )
    if p == SHIPPED_CHECKPOINT.resolve():
        return (
            f"checkpoint: {p} - the small lite checkpoint that ships with the kit: it was "
            f"trained on the {len(demo_photos())} demo photos only, so it finds patches of "
            "those best and knows little of other photos"
        )
    return f"checkpoint: {p}"


def half_state(state: dict) -> dict:
    """A state dict with its float tensors stored as fp16 (half the file); ``load_state_dict``
    casts them back into the fp32 model."""
    return {k: v.half() if v.is_floating_point() else v for k, v in state.items()}


def make_shipped_checkpoint(
    out_dir=SHIPPED_DIR, steps: int = STEPS_FULL, per_image: int = 4, progress: bool = True
) -> dict:
    """Train the lite demo checkpoint on the demo photos with one torch thread and write
    ``lite_demo.pth`` (fp16 state dict) and ``lite_demo.json`` (settings, steps, seconds,
    IoU on its test patches: ``per_image`` seeded patches of every photo, as the fp32 model
    loaded from the fp16 file finds them) into ``out_dir``. Returns the JSON record."""
    import json
    import platform
    import time

    torch.set_num_threads(1)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg, photos = demo_config(False), demo_photos(False)
    batch_size, copies, seed = 16, 3, 0
    full = out_dir / "lite_demo.fp32.tmp"
    t0, cpu0 = time.time(), time.process_time()
    run = train_demo_checkpoint(
        cfg, list(photos.values()), full, steps, batch_size, copies, seed, progress
    )
    # wall time depends on what else the machine runs; CPU time (one thread) much less
    seconds, cpu_seconds = time.time() - t0, time.process_time() - cpu0
    ckpt = torch.load(full, map_location="cpu", weights_only=False)
    ckpt["model"] = half_state(ckpt["model"])
    ckpt["losses"] = [round(v, 4) for v in ckpt["losses"]]
    path = out_dir / "lite_demo.pth"
    from ..engine.checkpoint import atomic_save

    atomic_save(ckpt, path)
    full.unlink()
    model, cfg = load_demo_model(path)
    ious = training_patches_check(model, cfg, photos, per_image=per_image)
    record = {
        "command": "python -m updetr_lite.tutorial.checkpoints --make-checkpoint"
        + ("" if steps == STEPS_FULL else f" --steps {steps}"),
        "preset": "lite",
        "settings": {
            "patch_dropout": cfg.pretext.patch_dropout,
            "num_patches": cfg.pretext.num_patches,
            "image_size": max(cfg.data.pretext_scales),
            "steps": steps,
            "batch_size": batch_size,
            "augmented_copies": copies,
            "seed": seed,
            "trainer_version": TRAINER_VERSION,
            "photos": list(photos),
        },
        "torch_threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "train_seconds": round(seconds, 1),
        "train_cpu_seconds": round(cpu_seconds, 1),
        "loss_first_10": round(float(np.mean(run["losses"][:10])), 3),
        "loss_last_100": round(float(np.mean(run["losses"][-100:])), 3),
        "test_patches": f"{per_image} seeded patches of every photo (training_patches_check)",
        "test_iou_mean": round(float(np.mean(ious)), 4),
        "test_ious": [round(v, 4) for v in ious],
        "file_bytes": path.stat().st_size,
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
    }
    (out_dir / "lite_demo.json").write_text(json.dumps(record, indent=1) + "\n")
    return record


def main(argv=None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m updetr_lite.tutorial.checkpoints")
    ap.add_argument(
        "--make-checkpoint",
        action="store_true",
        help="train the shipped lite demo checkpoint (one torch thread) and write it with "
        "its JSON record into --out",
    )
    ap.add_argument("--out", default=str(SHIPPED_DIR))
    ap.add_argument("--steps", type=int, default=STEPS_FULL)
    a = ap.parse_args(argv)
    if not a.make_checkpoint:
        ap.error("nothing to do: pass --make-checkpoint")
    record = make_shipped_checkpoint(a.out, a.steps)
    print(
        f"{a.out}/lite_demo.pth: {record['file_bytes'] / 1e6:.1f} MB, {a.steps} steps in "
        f"{record['train_seconds']:.0f} s, mean IoU on its test patches {record['test_iou_mean']:.3f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The patch-localization demo (notebook 06): choose an image and query patches, see where the
pre-trained UP-DETR finds them.

- ``query_patches``, ``localize_patches_in_image``: one prediction, pixel ``xyxy`` boxes in
  and out, with or without the SimCLR-style augmentation of the patches (the work is done by
  ``engine.inference``; this module adds the IoU, the training and the user interface).
- ``ensure_lite_checkpoint``: the kit's lite pretext checkpoint, trained on first use on the
  demo's photos (a progress bar shows it), or the authors' UP-DETR checkpoint from a local path
  (``load_demo_model`` reads both).
- ``DemoState`` and ``build_demo``: the ipywidgets user interface (image choice, path or
  upload, x/y/w/h sliders per patch, augmentation toggle, the boxes as text and as a picture);
  ``static_demo_figure`` is the same picture without widgets, for headless runs (papermill).

Patch features: a checkpoint with ``patch_feature='crop'`` (the paper, the authors' release)
runs the CNN on the resized crop; one with ``'roi'`` (the lite setting) pools the CNN feature
map of the image over the patch box. With augmentation on, the roi patch feature is pooled
from an augmented copy of the whole image while the decoder still looks at the clean image.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torchvision.ops import box_iou
from torchvision.transforms.v2 import functional as TF

from .config import Config, get_config
from .data.images import as_uint8_image, normalize
from .data.query_patches import crop_patches, patch_augmentation, sample_boxes
from .viz import COLORS, draw_boxes, show_image

# the project's cache, wherever the notebook runs from
DEMO_DIR = Path(__file__).resolve().parents[1] / ".cache" / "updetr_lite" / "demo"
# Demo checkpoint steps. Lite: about 4 min on one core (mean IoU over training patches 0.56
# at 3000 steps, 0.49 at 1500); smoke (one 64 px photo): ~35 s, 0.70-0.78 (0.52-0.74 at 800).
STEPS_FULL, STEPS_SMOKE = 3000, 1500
# part of the default checkpoint's name: bump it when the trainer's draws change, so that a
# checkpoint trained by an older trainer is not picked up (2: boxes from data.query_patches)
TRAINER_VERSION = 2


class DemoError(ValueError):
    """A demo input that cannot work (image file, box, checkpoint); one-line message."""


# ---------------------------------------------------------------- images and query patches


def read_image(source) -> np.ndarray:
    """An image file (path) or its bytes (an upload) -> HxWx3 uint8."""
    from PIL import Image, UnidentifiedImageError

    try:
        if isinstance(source, (bytes, bytearray, memoryview)):
            img = Image.open(io.BytesIO(bytes(source)))
        else:
            p = Path(source).expanduser()
            if not p.is_file():
                raise FileNotFoundError(f"image file not found: {p}")
            img = Image.open(p)
        return as_uint8_image(np.asarray(img.convert("RGB")))
    except UnidentifiedImageError as e:
        raise DemoError(
            f"not an image file: {source if isinstance(source, str) else 'upload'}"
        ) from e


def prepare_image(image: np.ndarray, size: int, max_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """HxWx3 uint8 -> (images [1, 3, H', W'] normalised, mask [1, H', W'] all False), resized
    as the pretext model sees it (``engine.inference.eval_input``)."""
    from .engine.inference import eval_input

    return eval_input(as_uint8_image(image), size, max_size)


def check_boxes(boxes_xyxy, size: tuple[int, int]) -> torch.Tensor:
    """Pixel xyxy boxes [k, 4] inside an image of size (h, w), each at least 2 px a side
    (``engine.inference.check_boxes``; an empty list is an error too)."""
    from .engine.inference import check_boxes as _check

    b = torch.as_tensor(boxes_xyxy, dtype=torch.float32).reshape(-1, 4)
    if len(b) == 0:
        raise DemoError("no query patch given: need at least one box x0, y0, x1, y1")
    return _check(b, *size)


def query_patches(image: np.ndarray, boxes_xyxy, patch_size: int, augment: bool = False):
    """Crop pixel xyxy boxes from the full-resolution image, resize to patch_size, optionally
    augment as in pre-training -> [k, 3, p, p] normalised (what a 'crop' model receives)."""
    img = torch.from_numpy(as_uint8_image(image)).permute(2, 0, 1)
    boxes = check_boxes(boxes_xyxy, img.shape[1:])
    return normalize(
        crop_patches(img, boxes, patch_size, patch_augmentation() if augment else None)
    )


def augment_image(image: np.ndarray, generator_seed: int | None = None) -> np.ndarray:
    """The patch augmentation applied to the whole image (roi models take their patch feature
    from this copy when augmentation is on)."""
    if generator_seed is not None:
        torch.manual_seed(generator_seed)
    t = torch.from_numpy(as_uint8_image(image)).permute(2, 0, 1)
    return patch_augmentation()(t).permute(1, 2, 0).numpy()


# ---------------------------------------------------------------- prediction


def localize_patches_in_image(
    model, cfg: Config, image: np.ndarray, boxes_xyxy, augment: bool = False, seed: int = 0
) -> dict:
    """Where does the model find each query patch? (``engine.inference.localize_patches``)

    image HxWx3 uint8, boxes_xyxy [k, 4] pixels (k <= M) -> dict(boxes [k, 4] xyxy pixels of
    the image, scores [k] probability of the query-patch class, query_boxes [k, 4] the input,
    iou [k] between each prediction and its own query patch box)."""
    from .engine.inference import localize_patches

    image = as_uint8_image(image)
    boxes = check_boxes(boxes_xyxy, image.shape[:2])
    found = localize_patches(model, cfg, image, boxes=boxes, augment=augment, seed=seed)
    pred = torch.tensor([r["box"] for r in found], dtype=torch.float32)
    return {
        "boxes": pred,
        "scores": torch.tensor([r["score"] for r in found]),
        "query_boxes": boxes,
        "iou": box_iou(pred, boxes).diagonal(),
    }


# ---------------------------------------------------------------- checkpoints


def save_demo_checkpoint(model, cfg: Config, path, **extra) -> Path:
    """A pretext checkpoint in the engine's format (kind, num_classes, model, config)."""
    from .engine.checkpoint import atomic_save

    path = Path(path)
    atomic_save(
        {
            "kind": "pretext",
            "num_classes": 2,
            "model": model.state_dict(),
            "config": cfg.to_dict(),
            **extra,
        },
        path,
    )
    return path


def load_demo_model(path, preset: str = "paper") -> tuple[torch.nn.Module, Config]:
    """(UPDETR in eval mode, its Config) from this kit's pretext checkpoint or the authors'
    (their settings read from the tensor shapes over ``preset``; ``engine.inference``)."""
    from .engine.inference import load_model

    return load_model(path, kind="pretext", preset=preset)


# ---------------------------------------------------------------- training the lite checkpoint


def demo_config(smoke: bool) -> Config:
    """The demo's checkpoint settings: the lite model; smoke: the smoke preset's 64 px images
    and 1 encoder layer, but width 64 and 2 decoder layers (the smoke model's width 32 and
    single decoder layer did not reach IoU 0.5 on its training photo in 3000 steps)."""
    if smoke:
        cfg = get_config(
            "smoke",
            ["model.hidden_dim=64", "model.dim_feedforward=128", "model.dec_layers=2"],
        )
    else:
        cfg = get_config("lite")
    cfg.pretext = dataclasses.replace(cfg.pretext, patch_dropout=0.0 if smoke else 0.1)
    return cfg.validate()


def train_demo_checkpoint(
    cfg: Config,
    images: list[np.ndarray],
    out_path,
    steps: int,
    batch_size: int = 8,
    augmented_copies: int = 2,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Pre-train UP-DETR (random query patch detection, roi patch features) on a few images
    and save the checkpoint. The frozen CNN runs once per image (and per augmented copy);
    each step takes one image, ``batch_size`` sets of M random patches in it.
    Returns {"path", "losses" (per step), "seconds"}."""
    import time
    from functools import partial

    from tqdm.auto import tqdm

    from .engine.step import train_step
    from .models import build_criterion, build_updetr

    if cfg.pretext.patch_feature != "roi":
        raise DemoError(
            "train_demo_checkpoint trains roi patch features (pretext.patch_feature='roi')"
        )
    if not images:
        raise DemoError("train_demo_checkpoint: no images to train on")
    torch.manual_seed(seed)
    rng = random.Random(seed)  # which view each set of patches is pooled from
    boxes_rng = torch.Generator().manual_seed(seed)  # the query patch boxes
    model, criterion = build_updetr(cfg), build_criterion(cfg, pretext=True)
    size, max_size = max(cfg.data.pretext_scales), cfg.data.pretext_max_size
    cache = []
    with torch.no_grad():
        model.eval()
        for i, img in enumerate(images):
            # augment at the model's input size: blurring a full-size photo is slow
            x, _ = prepare_image(img, size, max_size)
            small = TF.resize(
                torch.from_numpy(as_uint8_image(img)).permute(2, 0, 1), list(x.shape[-2:])
            )
            small = small.permute(1, 2, 0).numpy()
            views = [small] + [
                augment_image(small, seed * 1000 + i * 10 + a) for a in range(augmented_copies)
            ]
            feats = []
            for v in views:
                x, m = prepare_image(v, size, max_size)
                feats.append(model.backbone(x, m))
            cache.append(feats)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.pretrain.lr, weight_decay=cfg.pretrain.weight_decay)
    model.train()
    losses, t0 = [], time.time()
    m_patches, cpu = cfg.pretext.num_patches, torch.device("cpu")
    bar = tqdm(range(steps), desc="pre-training the demo checkpoint", disable=not progress)
    for step in bar:
        views = cache[step % len(cache)]
        features, fmask = views[0]
        h, w = images[step % len(cache)].shape[:2]
        boxes = torch.stack(
            [
                sample_boxes(h, w, m_patches, cfg.pretext.min_patch, boxes_rng)
                for _ in range(batch_size)
            ]
        )
        # patch features: each set of patches from the clean image or an augmented copy
        pf = torch.cat(
            [
                model.roi_patch_feature(*views[rng.randrange(len(views))], boxes[b : b + 1])
                for b in range(batch_size)
            ]
        )
        feats = features.expand(batch_size, -1, -1, -1)
        targets = [
            {"boxes": bx, "labels": torch.ones(m_patches, dtype=torch.int64)} for bx in boxes
        ]
        forward = partial(
            model.forward_features, feats, fmask.expand(batch_size, -1, -1), patch_feature=pf
        )
        where = f"demo checkpoint step {step + 1}"
        values = train_step(
            forward, targets, criterion, opt, params, cfg.pretrain.clip_max_norm, cpu, where=where
        )
        losses.append(values["loss"])
        if step % 10 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-10:]):.3f}")
    model.eval()
    path = save_demo_checkpoint(model, cfg, out_path, step=steps, losses=losses)
    return {"path": str(path), "losses": losses, "seconds": time.time() - t0}


def demo_photos(smoke: bool = False) -> dict[str, np.ndarray]:
    """The demo's images: the embedded photos (``updetr_lite.data.photos``), HxWx3 uint8."""
    from .data.photos import load_photos

    photos = {k: as_uint8_image(v) for k, v in load_photos().items()}
    if smoke:
        photos = dict(list(photos.items())[:1])
    return photos


def ensure_lite_checkpoint(
    path=None,
    smoke: bool = False,
    authors_checkpoint=None,
    steps: int | None = None,
    progress: bool = True,
) -> Path:
    """The checkpoint the demo uses.

    - ``authors_checkpoint``: a local path to the authors' (or any) UP-DETR pre-training
      checkpoint; returned as is (FileNotFoundError if absent; nothing is downloaded).
    - else ``path`` (default ``.cache/updetr_lite/demo/lite-<hash of the settings>.pth``,
      ``smoke-<hash>.pth`` when smoke):
      trained on first use on the demo photos with a progress bar, reused afterwards.
    """
    if authors_checkpoint:
        p = Path(authors_checkpoint).expanduser()
        if not p.is_file():
            raise FileNotFoundError(f"authors' checkpoint not found: {p} (download it yourself)")
        return p
    cfg = demo_config(smoke)
    # the default file is named after the settings and step count, so a checkpoint trained
    # with other settings (an older kit) is never picked up
    steps = steps or (STEPS_SMOKE if smoke else STEPS_FULL)
    tag = hashlib.sha256(f"{cfg.to_json()}{steps}{TRAINER_VERSION}".encode()).hexdigest()[:10]
    p = Path(path) if path else DEMO_DIR / f"{'smoke' if smoke else 'lite'}-{tag}.pth"
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


# ---------------------------------------------------------------- the user interface


@dataclasses.dataclass
class DemoState:
    """What the demo shows: an image, k query patches (pixel xyxy), augmentation on/off, and
    the last prediction."""

    model: torch.nn.Module
    cfg: Config
    image: np.ndarray
    boxes: list[list[float]]
    augment: bool = False
    seed: int = 0
    result: dict | None = None

    def default_boxes(self, k: int) -> list[list[float]]:
        h, w = self.image.shape[:2]
        side_w, side_h = w // 4, h // 4
        out = []
        for i in range(k):
            x0 = int(w * (0.1 + 0.5 * (i % 2)))
            y0 = int(h * (0.1 + 0.5 * ((i // 2) % 2)))
            out.append([x0, y0, x0 + side_w, y0 + side_h])
        return out

    def set_image(self, image: np.ndarray) -> None:
        self.image = as_uint8_image(image)
        self.boxes = self.default_boxes(len(self.boxes) or 1)

    def update(self) -> dict:
        self.result = localize_patches_in_image(
            self.model, self.cfg, self.image, self.boxes, self.augment, self.seed
        )
        return self.result

    def summary(self) -> str:
        """One line per patch: query box -> predicted box, score, IoU (what the page shows)."""
        if self.result is None:
            self.update()
        lines = []
        r = self.result
        for i in range(len(r["boxes"])):
            q = ", ".join(f"{v:.0f}" for v in r["query_boxes"][i].tolist())
            b = ", ".join(f"{v:.1f}" for v in r["boxes"][i].tolist())
            lines.append(
                f"patch {i}: query [{q}] -> predicted [{b}] "
                f"score {float(r['scores'][i]):.3f} IoU {float(r['iou'][i]):.3f}"
            )
        return "\n".join(lines)


def static_demo_figure(state: DemoState, ax=None):
    """The demo's picture without widgets: query patches dashed, predictions solid with scores."""
    import matplotlib.pyplot as plt

    if state.result is None:
        state.update()
    r = state.result
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 6))
    k = len(r["boxes"])
    colors = [COLORS[i % len(COLORS)] for i in range(k)]
    show_image(
        state.image,
        r["query_boxes"],
        [f"patch {i}" for i in range(k)],
        ax=ax,
        colors=colors,
        linestyle="--",
    )
    draw_boxes(ax, r["boxes"], [f"{float(s):.2f}" for s in r["scores"]], colors)
    ax.set_title(
        "query patches (dashed) and where the model finds them (solid, score)"
        + (" - augmented" if state.augment else ""),
        fontsize=9,
    )
    return ax


def build_demo(state: DemoState, photos: dict[str, np.ndarray], num_patches: int = 1):
    """The ipywidgets interface; returns the top widget. Each change re-runs the prediction
    and redraws. The text area (class ``updetr-demo-boxes``) holds ``state.summary()``."""
    import ipywidgets as W
    import matplotlib.pyplot as plt
    from IPython.display import display

    k = max(1, min(num_patches, state.model.num_patches))
    state.boxes = state.default_boxes(k) if len(state.boxes) != k else state.boxes
    out = W.Output()
    text = W.Textarea(layout=W.Layout(width="100%", height=f"{1.6 * k + 1:.1f}em"), disabled=True)
    text.add_class("updetr-demo-boxes")
    error = W.HTML()
    choose = W.Dropdown(options=list(photos), description="image")
    path = W.Text(
        placeholder="or a path to an image file, then Enter",
        description="path",
        continuous_update=False,
    )
    upload = W.FileUpload(accept="image/*", multiple=False, description="upload")
    augment = W.Checkbox(value=state.augment, description="augment query patches")
    sliders: list[dict[str, W.IntSlider]] = []

    def redraw():
        try:
            state.update()
            error.value = ""
        except (ValueError, FileNotFoundError) as e:
            error.value = f"<b style='color:#b00'>{e}</b>"
            return
        text.value = state.summary()
        with out:
            out.clear_output(wait=True)
            fig, ax = plt.subplots(figsize=(5.5, 5.5))
            static_demo_figure(state, ax)
            display(fig)
            plt.close(fig)

    busy = {"on": False}

    def sync_sliders():
        h, w = state.image.shape[:2]
        busy["on"] = True
        for s, (x0, y0, x1, y1) in zip(sliders, state.boxes):
            s["x"].max, s["w"].max, s["y"].max, s["h"].max = w - 2, w, h - 2, h
            s["x"].value, s["y"].value = int(x0), int(y0)
            s["w"].value, s["h"].value = int(x1 - x0), int(y1 - y0)
        busy["on"] = False

    def on_slider(_change=None):
        if busy["on"]:
            return
        h, w = state.image.shape[:2]
        boxes = []
        for s in sliders:
            x0, y0 = s["x"].value, s["y"].value
            x1, y1 = min(w, x0 + max(2, s["w"].value)), min(h, y0 + max(2, s["h"].value))
            boxes.append([x0, y0, max(x1, x0 + 2), max(y1, y0 + 2)])
        state.boxes = boxes
        redraw()

    def new_image(img):
        state.set_image(img)
        state.boxes = state.default_boxes(k)
        sync_sliders()
        redraw()

    def on_choose(change):
        new_image(photos[change["new"]])

    def on_path(_widget):
        try:
            new_image(read_image(path.value))
        except (ValueError, FileNotFoundError) as e:
            error.value = f"<b style='color:#b00'>{e}</b>"

    def on_upload(change):
        files = change["new"]
        if files:
            try:
                new_image(read_image(files[0]["content"]))
            except (ValueError, FileNotFoundError) as e:
                error.value = f"<b style='color:#b00'>{e}</b>"

    def on_augment(change):
        state.augment = bool(change["new"])
        redraw()

    rows = []
    for i in range(k):
        s = {
            n: W.IntSlider(
                description=f"{n} {i}",
                min=0 if n in "xy" else 2,
                max=10,
                continuous_update=False,
                layout=W.Layout(width="260px"),
            )
            for n in ("x", "y", "w", "h")
        }
        for sl in s.values():
            sl.add_class(f"updetr-demo-{sl.description.replace(' ', '')}")
            sl.observe(on_slider, names="value")
        sliders.append(s)
        rows.append(W.HBox(list(s.values())))
    sync_sliders()
    choose.observe(on_choose, names="value")
    path.observe(on_path, names="value")
    upload.observe(on_upload, names="value")
    augment.observe(on_augment, names="value")
    redraw()
    return W.VBox([W.HBox([choose, upload]), path, augment, *rows, error, text, out])


def open_demo(
    checkpoint,
    photos: dict[str, np.ndarray],
    image_name: str | None = None,
    interactive: bool = True,
    num_patches: int = 2,
) -> DemoState:
    """Load the checkpoint and show the demo: widgets when ``interactive``, else the static
    figure and the text summary (headless runs). Returns the DemoState."""
    from IPython.display import display

    model, cfg = load_demo_model(checkpoint)
    name = image_name or next(iter(photos))
    state = DemoState(model, cfg, as_uint8_image(photos[name]), [])
    state.boxes = state.default_boxes(min(num_patches, model.num_patches))
    if interactive:
        display(build_demo(state, photos, len(state.boxes)))
    else:
        state.update()
        print(state.summary())
        static_demo_figure(state)
    return state


def training_image_patch_check(
    model, cfg: Config, image: np.ndarray, box_xyxy, augment: bool = False
) -> float:
    """IoU of the model's box for one query patch cut from ``image`` at ``box_xyxy``."""
    return float(localize_patches_in_image(model, cfg, image, [box_xyxy], augment)["iou"][0])


def training_patch_boxes(image: np.ndarray, k: int, seed: int = 0) -> list[list[float]]:
    """k query patches [x0, y0, x1, y1] (pixels) cut from ``image`` at seeded random places,
    sides 25-60 % of the image's: what the demo's check asks the model to find."""
    rng = random.Random(seed)
    h, w = image.shape[:2]
    out = []
    for _ in range(k):
        bw, bh = rng.uniform(0.25, 0.6) * w, rng.uniform(0.25, 0.6) * h
        x0, y0 = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
        out.append([x0, y0, x0 + bw, y0 + bh])
    return out


def training_patches_check(
    model, cfg: Config, photos: dict[str, np.ndarray], per_image: int = 4, seed: int = 0
) -> list[float]:
    """IoU of the model's box with each of ``per_image`` seeded patches cut from every photo
    (one patch at a time: no other group to help or hurt)."""
    ious = []
    for i, image in enumerate(photos.values()):
        for box in training_patch_boxes(image, per_image, seed + i):
            ious.append(training_image_patch_check(model, cfg, image, box))
    return ious


def env_flag(name: str) -> bool:
    """True when the environment variable is set to 1/true/yes (e.g. UPDETR_DEMO_SMOKE)."""
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes")


Callback = Callable[[], None]

"""The patch-localization demo (notebook 06): choose an image and query patches, see where the
pre-trained UP-DETR finds them.

- ``query_patches``, ``localize_patches_in_image``: one prediction, pixel ``xyxy`` boxes in
  and out, with or without the SimCLR-style augmentation of the patches (the work is done by
  ``engine.inference``; this module adds the IoU, the training and the user interface).
- ``ensure_lite_checkpoint``: the lite pre-training of ``bash run.sh`` when it exists, else
  the small lite checkpoint that ships with the kit (``make_shipped_checkpoint``, i.e.
  ``python -m updetr_lite.demo --make-checkpoint``), a freshly trained one when asked (a
  progress bar shows it), or the authors' UP-DETR checkpoint from a local path
  (``load_demo_model`` reads them all).
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
import html
import io
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
# the lite checkpoint that ships with the kit (inside the package, so a pip install has it),
# written by `python -m updetr_lite.demo --make-checkpoint`; its JSON records the settings,
# the training time and the IoU on its test patches
SHIPPED_DIR = Path(__file__).resolve().parent / "data" / "demo_checkpoint"
SHIPPED_CHECKPOINT = SHIPPED_DIR / "lite_demo.pth"
SHIPPED_RECORD = SHIPPED_DIR / "lite_demo.json"
# the lite pre-training checkpoint `bash run.sh` writes (the lite plan's run pre_crop_s0)
MAIN_RUN_CHECKPOINT = (
    Path(__file__).resolve().parents[1] / "runs" / "main" / "pre_crop_s0" / "last.pth"
)
# Demo checkpoint steps (one torch thread): lite, the shipped checkpoint's steps (its JSON
# has the measured time); smoke (one 64 px photo, tests only): 1500 steps
STEPS_FULL, STEPS_SMOKE = 2500, 1500
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
        # np.array, not np.asarray: PIL's buffer is read-only, and torch.from_numpy on it
        # warns "The given NumPy array is not writable" in every cell that uses the image
        return as_uint8_image(np.array(img.convert("RGB")))
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


def clip_boxes(boxes_xyxy: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Pixel xyxy boxes [k, 4] clipped to an image of size (h, w): a predicted cxcywh box
    can reach past the border, and the picture should not draw outside the image."""
    h, w = size
    b = boxes_xyxy.clone()
    b[:, 0::2] = b[:, 0::2].clamp(0, w)
    b[:, 1::2] = b[:, 1::2].clamp(0, h)
    return b


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
    pred = clip_boxes(torch.tensor([r["box"] for r in found], dtype=torch.float32), image.shape[:2])
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


# The shipped demo checkpoint's model: the lite sizes with the earlier lite transformer (no
# encoder layers, positions in the decoder's values) and 'roi' patch features, which the demo
# trainer pools from a few photos; the lite preset itself now runs the paper's transformer
# and crop patch features (its runs are what `bash run.sh` writes)
DEMO_MODEL = (
    "model.enc_layers=0",
    "model.pos_in_values=True",
    "model.enc_layer_scale=0.0",
    "model.cnn_bf16=None",
    "pretext.patch_feature=roi",
    "pretext.crop_bank=0",
)


def demo_config(smoke: bool) -> Config:
    """The demo's checkpoint settings: the lite sizes and ``DEMO_MODEL``; smoke: the smoke
    preset's 64 px images and 1 encoder layer, 'roi' patches, but width 64 and 2 decoder layers
    (the smoke model's width 32 and single decoder layer did not reach IoU 0.5 on its training
    photo in 3000 steps)."""
    if smoke:
        cfg = get_config(
            "smoke",
            [
                "model.hidden_dim=64",
                "model.dim_feedforward=128",
                "model.dec_layers=2",
                "model.enc_layer_scale=0.0",
                "pretext.patch_feature=roi",
                "pretext.crop_bank=0",
            ],
        )
    else:
        cfg = get_config("lite", list(DEMO_MODEL))
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
    train: bool = False,
) -> Path:
    """The checkpoint the demo uses; nothing is trained unless asked.

    - ``authors_checkpoint``: a local path to the authors' (or any) UP-DETR pre-training
      checkpoint; returned as is (FileNotFoundError if absent; nothing is downloaded).
    - ``path``: that file when it exists; else one is trained there (a progress bar shows it).
    - ``train``: a fresh checkpoint trained on the demo photos (``STEPS_FULL`` steps, about
      the shipped checkpoint's ``train_seconds``; smoke: one 64 px photo, ``STEPS_SMOKE``),
      cached as ``.cache/updetr_lite/demo/lite-<hash of the settings>.pth``.
    - otherwise the lite pre-training of ``bash run.sh`` (``runs/main/pre_crop_s0/last.pth``)
      when it exists, else the checkpoint that ships with the kit (``SHIPPED_CHECKPOINT``).
    """
    if authors_checkpoint:
        p = Path(authors_checkpoint).expanduser()
        if not p.is_file():
            raise FileNotFoundError(f"authors' checkpoint not found: {p} (download it yourself)")
        return p
    if path and Path(path).is_file():
        return Path(path)
    if not (path or train):
        for p in (MAIN_RUN_CHECKPOINT, SHIPPED_CHECKPOINT):
            if p.is_file():
                return p
        raise DemoError(
            f"no demo checkpoint: neither {MAIN_RUN_CHECKPOINT} nor {SHIPPED_CHECKPOINT} "
            "exists (write the second with `python -m updetr_lite.demo --make-checkpoint`, "
            "or pass train=True)"
        )
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


def checkpoint_note(path) -> str:
    """One line saying which checkpoint the demo shows and what it has seen."""
    p = Path(path).resolve()
    if p == MAIN_RUN_CHECKPOINT.resolve():
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


def build_demo(
    state: DemoState, photos: dict[str, np.ndarray], num_patches: int = 1, note: str = ""
):
    """The ipywidgets interface; returns the top widget. Each change re-runs the prediction
    and redraws. The text area (class ``updetr-demo-boxes``) holds ``state.summary()``;
    ``note`` (e.g. ``checkpoint_note``) is shown above the widgets. After a path or an upload
    the image list shows no choice, so that choosing a photo again switches back to it."""
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
        if change["new"] is not None:
            new_image(photos[change["new"]])

    def own_image(img):
        new_image(img)
        choose.value = None  # the list no longer names the image shown

    def on_path(_widget):
        try:
            own_image(read_image(path.value))
        except (ValueError, FileNotFoundError) as e:
            error.value = f"<b style='color:#b00'>{e}</b>"

    def on_upload(change):
        files = change["new"]
        if files:
            try:
                own_image(read_image(files[0]["content"]))
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
                # tracks of ~330 px: one step of a 0-510 range is under a pixel
                layout=W.Layout(width="440px"),
                style={"description_width": "40px"},
            )
            for n in ("x", "y", "w", "h")
        }
        for sl in s.values():
            sl.add_class(f"updetr-demo-{sl.description.replace(' ', '')}")
            sl.observe(on_slider, names="value")
        sliders.append(s)
        rows += [W.HBox([s["x"], s["w"]]), W.HBox([s["y"], s["h"]])]
    sync_sliders()
    choose.observe(on_choose, names="value")
    path.observe(on_path, names="value")
    upload.observe(on_upload, names="value")
    augment.observe(on_augment, names="value")
    redraw()
    head = [W.HTML(f"<i>{html.escape(note)}</i>")] if note else []
    return W.VBox([*head, W.HBox([choose, upload]), path, augment, *rows, error, text, out])


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
    note = checkpoint_note(checkpoint)
    if interactive:
        display(build_demo(state, photos, len(state.boxes), note))
    else:
        print(note)
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


Callback = Callable[[], None]


# ---------------------------------------------------------------- the shipped checkpoint


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
    from .engine.checkpoint import atomic_save

    atomic_save(ckpt, path)
    full.unlink()
    model, cfg = load_demo_model(path)
    ious = training_patches_check(model, cfg, photos, per_image=per_image)
    record = {
        "command": "python -m updetr_lite.demo --make-checkpoint"
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

    ap = argparse.ArgumentParser(prog="python -m updetr_lite.demo")
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

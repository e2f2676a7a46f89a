"""The patch-localization demo's user interface (notebook 06): choose an image and query
patches, see where the pre-trained UP-DETR finds them.

- ``DemoState``: the image, the query patches, the augmentation toggle, the last prediction;
- ``build_demo``: the ipywidgets interface (image choice, path or upload, x/y/w/h sliders per
  patch, augmentation toggle, the boxes as text and as a picture);
- ``static_demo_figure``: the same picture without widgets, for headless runs (papermill);
- ``open_demo``: load a checkpoint and show either.
"""

from __future__ import annotations

import dataclasses
import html

import numpy as np
import torch

from ..config import Config
from ..data.images import as_uint8_image
from ..viz import COLORS, draw_boxes, show_image
from .checkpoints import checkpoint_note, load_demo_model
from .localize import localize_patches_in_image, read_image


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
    main_run=None,
) -> DemoState:
    """Load the checkpoint and show the demo: widgets when ``interactive``, else the static
    figure and the text summary (headless runs); ``main_run`` as for ``checkpoint_note``.
    Returns the DemoState."""
    from IPython.display import display

    model, cfg = load_demo_model(checkpoint)
    name = image_name or next(iter(photos))
    state = DemoState(model, cfg, as_uint8_image(photos[name]), [])
    state.boxes = state.default_boxes(min(num_patches, model.num_patches))
    note = checkpoint_note(checkpoint, main_run)
    if interactive:
        display(build_demo(state, photos, len(state.boxes), note))
    else:
        print(note)
        state.update()
        print(state.summary())
        static_demo_figure(state)
    return state

"""Pictures for the notebooks: boxes on images, patch galleries, the group attention mask,
cost matrices, loss and AP curves, decoder cross-attention maps.

Every function draws with matplotlib (Agg-safe), takes an optional ``ax`` and returns the
Axes or Figure it drew on, so a notebook cell stays one call. Box formats are in the names:
``cxcywh`` normalised to [0, 1] or ``xyxy`` in pixels.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib import patches as mpatches
from torchvision.ops import box_convert

from .data.images import denormalize
from .jsonl import read_jsonl  # noqa: F401  (the notebooks read logs through viz)

COLORS = plt.get_cmap("tab10").colors


def to_display(image) -> np.ndarray:
    """An image as HxWx3 float in [0, 1] for imshow.

    Accepts an ImageNet-normalised tensor [3, H, W], a uint8 array/tensor HxWx3 or [3, H, W],
    or a float array HxWx3 already in [0, 1]."""
    if isinstance(image, torch.Tensor):
        t = image.detach().cpu()
        if t.dim() != 3:
            raise ValueError(
                f"expected an image [3, H, W] or [H, W, 3], got shape {tuple(t.shape)}"
            )
        if t.dtype == torch.uint8:
            t = t.float() / 255
            if t.shape[0] == 3:
                t = t.permute(1, 2, 0)
            return t.numpy()
        if t.shape[0] == 3:
            t = denormalize(t).permute(1, 2, 0)
        return t.clamp(0, 1).numpy()
    a = np.asarray(image)
    if a.ndim == 2:
        a = np.stack([a] * 3, -1)
    if a.ndim != 3:
        raise ValueError(f"expected an image HxWx3, got shape {a.shape}")
    if a.shape[0] == 3 and a.shape[-1] != 3:
        a = a.transpose(1, 2, 0)
    if a.dtype == np.uint8:
        return a.astype(np.float32) / 255
    return np.clip(a.astype(np.float32), 0, 1)


def cxcywh_to_pixel_xyxy(boxes, size: tuple[int, int]) -> torch.Tensor:
    """boxes [n, 4] cxcywh normalised -> [n, 4] xyxy pixels for an image of size (h, w)."""
    b = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    h, w = size
    return box_convert(b, "cxcywh", "xyxy") * torch.tensor([w, h, w, h], dtype=torch.float32)


def pixel_xyxy_to_cxcywh(boxes, size: tuple[int, int]) -> torch.Tensor:
    """boxes [n, 4] xyxy pixels -> [n, 4] cxcywh normalised for an image of size (h, w)."""
    b = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    h, w = size
    return box_convert(b / torch.tensor([w, h, w, h], dtype=torch.float32), "xyxy", "cxcywh")


def _axes(ax, figsize=(5, 5)):
    if ax is None:
        _, ax = plt.subplots(figsize=figsize)
    return ax


def draw_boxes(
    ax,
    boxes_xyxy,
    labels: Sequence[str] | None = None,
    colors: Sequence | None = None,
    linestyle: str = "-",
    linewidth: float = 2.0,
    label_at: str = "top",
):
    """Draw pixel ``xyxy`` boxes [n, 4] on ``ax`` with optional text labels, above the box's
    top-left corner (``label_at='top'``) or below its bottom-left one ('bottom': a second
    set of boxes on the same picture, so that the two sets' tags do not cover each other);
    returns ax."""
    if label_at not in ("top", "bottom"):
        raise ValueError(f"label_at must be 'top' or 'bottom', not {label_at!r}")
    boxes = np.asarray(torch.as_tensor(boxes_xyxy, dtype=torch.float32).reshape(-1, 4))
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        color = colors[i] if colors is not None else COLORS[i % len(COLORS)]
        ax.add_patch(
            mpatches.Rectangle(
                (x0, y0),
                x1 - x0,
                y1 - y0,
                fill=False,
                edgecolor=color,
                linewidth=linewidth,
                linestyle=linestyle,
            )
        )
        if labels is not None and labels[i]:
            ax.text(
                x0,
                y0 if label_at == "top" else y1,
                labels[i],
                color="white",
                fontsize=8,
                va="bottom" if label_at == "top" else "top",
                bbox=dict(facecolor=color, alpha=0.8, pad=1, edgecolor="none"),
            )
    return ax


def show_image(image, boxes_xyxy=None, labels=None, ax=None, title=None, colors=None, **kw):
    """imshow an image (see ``to_display``) with optional pixel xyxy boxes; returns ax."""
    ax = _axes(ax)
    ax.imshow(to_display(image))
    if boxes_xyxy is not None:
        draw_boxes(ax, boxes_xyxy, labels, colors, **kw)
    if title:
        ax.set_title(title, fontsize=9)
    ax.axis("off")
    return ax


def patch_gallery(patches, titles: Sequence[str] | None = None, ncols: int = 8, size: float = 1.4):
    """A grid of query patches: a tensor [P, 3, p, p] (ImageNet-normalised) or a list of
    images. Returns the Figure."""
    items = list(patches)
    if not items:
        raise ValueError("patch_gallery: no patches to show")
    ncols = min(ncols, len(items))
    nrows = math.ceil(len(items) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < len(items):
            ax.imshow(to_display(items[i]))
            if titles is not None:
                ax.set_title(titles[i], fontsize=7)
    fig.tight_layout()
    return fig


def plot_attention_mask(mask, ax=None, title: str | None = None):
    """The decoder self-attention mask [N, N] (0 = may attend, -inf = blocked) as a picture:
    the paper's Figure 2b. Group borders are drawn where the allowed blocks change."""
    m = torch.as_tensor(mask, dtype=torch.float32)
    allowed = torch.isfinite(m).numpy()
    ax = _axes(ax, (4, 4))
    ax.imshow(allowed, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    n = allowed.shape[0]
    # group borders: rows whose allowed pattern differs from the previous row
    for i in range(1, n):
        if not np.array_equal(allowed[i], allowed[i - 1]):
            ax.axhline(i - 0.5, color="k", linewidth=0.6)
            ax.axvline(i - 0.5, color="k", linewidth=0.6)
    ax.set_xlabel("key: object query")
    ax.set_ylabel("query: object query")
    ax.set_title(title or "attention mask", fontsize=9)
    color_key(ax, {"may attend (0)": plt.get_cmap("Blues")(1.0), "blocked (-inf)": "white"})
    return ax


def color_key(ax, colors: dict, title: str | None = None, loc: str = "upper left"):
    """A legend of coloured squares {label: colour} outside the right edge of ``ax``: the key
    of a categorical picture. Returns the Legend."""
    handles = [
        mpatches.Patch(facecolor=c, edgecolor="0.4", linewidth=0.5, label=k)
        for k, c in colors.items()
    ]
    return ax.legend(
        handles=handles,
        title=title,
        loc=loc,
        bbox_to_anchor=(1.02, 1.0),
        fontsize=7,
        title_fontsize=7,
        frameon=False,
    )


def mark_zero_bars(ax, note: str = "0", rel: float = 1e-6) -> int:
    """Write ``note`` above each bar of ``ax`` whose height is under ``rel`` x the tallest
    (a zero bar is invisible otherwise). Returns how many were marked."""
    bars = [b for c in ax.containers for b in c]
    top = max((abs(b.get_height()) for b in bars), default=0.0)
    marked = 0
    for b in bars:
        if abs(b.get_height()) <= rel * top:
            x = b.get_x() + b.get_width() / 2
            ax.annotate(note, (x, 0), xytext=(0, 2), textcoords="offset points", ha="center",
                        va="bottom", fontsize=7, color=b.get_facecolor())  # fmt: skip
            marked += 1
    return marked


def plot_cost_matrix(
    cost,
    assignment=None,
    ax=None,
    title: str | None = None,
    cmap="viridis",
    ylabel: str = "prediction (object query)",
):
    """Heat map of a cost matrix [N predictions, n targets]; ``assignment`` (rows, cols)
    marks the matched cells with red circles. Returns ax."""
    c = np.asarray(torch.as_tensor(cost, dtype=torch.float32))
    ax = _axes(ax, (3, 5))
    im = ax.imshow(c, cmap=cmap, aspect="auto", interpolation="nearest")
    plt.colorbar(im, ax=ax, fraction=0.05)
    if assignment is not None:
        rows, cols = (np.asarray(a) for a in assignment)
        ax.scatter(cols, rows, s=60, facecolors="none", edgecolors="red", linewidths=1.5)
    # cells are whole numbers: ticks at cell centres only (not -0.5 ... 1.5), at most ~10
    for axis, n in ((ax.xaxis, c.shape[1]), (ax.yaxis, c.shape[0])):
        axis.set_ticks(range(0, n, math.ceil(n / 10)))
    ax.set_xlabel("target (query patch)")
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=9)
    return ax


def smooth(values: Sequence[float], window: int) -> np.ndarray:
    """Trailing moving average (window 1 = unchanged); the first values average what exists."""
    v = np.asarray(values, dtype=np.float64)
    if window <= 1 or len(v) == 0:
        return v
    c = np.cumsum(np.insert(v, 0, 0.0))
    idx = np.arange(1, len(v) + 1)
    lo = np.maximum(idx - window, 0)
    return (c[idx] - c[lo]) / (idx - lo)


def plot_curves(
    curves: dict[str, tuple[Sequence[float], Sequence[float]]],
    ax=None,
    xlabel: str = "step",
    ylabel: str = "loss",
    window: int = 1,
    logy: bool = False,
    title: str | None = None,
):
    """Line plot of named curves {label: (x, y)}, optionally smoothed; returns ax."""
    ax = _axes(ax, (6, 3.5))
    for label, (x, y) in curves.items():
        ax.plot(np.asarray(x), smooth(y, window), label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if logy:
        ax.set_yscale("log")
    if title:
        ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return ax


def series(records: list[dict], key: str, x: str = "step") -> tuple[list[float], list[float]]:
    """(x values, key values) of the records that have both keys, for ``plot_curves``."""
    pts = [(r[x], r[key]) for r in records if key in r and x in r and r[key] is not None]
    return [p[0] for p in pts], [float(p[1]) for p in pts]


def plot_histograms(
    values: dict[str, Sequence[float]], bins: int = 20, size: float = 2.6, range01: bool = False
):
    """One histogram per named sample, side by side; returns the Figure."""
    fig, axes = plt.subplots(1, len(values), figsize=(size * len(values), size), squeeze=False)
    for ax, (name, v) in zip(axes[0], values.items()):
        ax.hist(
            np.asarray(v, dtype=float),
            bins=bins,
            range=(0, 1) if range01 else None,
            color="tab:blue",
            alpha=0.8,
        )
        ax.set_title(name, fontsize=9)
        ax.set_ylabel("count", fontsize=8)
    fig.tight_layout()
    return fig


@contextlib.contextmanager
def capture_cross_attention(model) -> Iterator[list[torch.Tensor]]:
    """Record the decoder cross-attention weights of ``model`` (a DETR/UPDETR) while inside.

    Yields a list that, after a forward, holds one tensor per decoder layer: [B, N, S], head
    averaged, S = h*w memory positions. The transformer calls attention with
    ``need_weights=False`` (faster); the hooks turn the weights on only while capturing.
    """
    layers = model.transformer.decoder.layers
    captured: list[torch.Tensor] = []
    handles = []

    def pre(_mod, args, kwargs):
        kwargs = dict(kwargs)
        kwargs["need_weights"] = True
        kwargs["average_attn_weights"] = True
        return args, kwargs

    def post(_mod, _args, output):
        captured.append(output[1].detach())

    try:
        for layer in layers:
            handles.append(layer.multihead_attn.register_forward_pre_hook(pre, with_kwargs=True))
            handles.append(layer.multihead_attn.register_forward_hook(post))
        yield captured
    finally:
        for h in handles:
            h.remove()


def attention_maps(weights: torch.Tensor, feature_size: tuple[int, int]) -> torch.Tensor:
    """Cross-attention weights [B, N, h*w] -> maps [B, N, h, w] over the feature grid."""
    h, w = feature_size
    if weights.shape[-1] != h * w:
        raise ValueError(f"{weights.shape[-1]} memory positions do not make a {h}x{w} grid")
    return weights.reshape(*weights.shape[:-1], h, w)


def plot_attention_maps(
    image, maps, boxes_xyxy=None, titles: Sequence[str] | None = None, size: float = 2.4
):
    """The image, then one panel per query: its attention map [h, w] upsampled over the image
    with that query's predicted box (pixel xyxy). ``maps`` [q, h, w]. Returns the Figure."""
    img = to_display(image)
    H, W = img.shape[:2]
    maps = torch.as_tensor(maps, dtype=torch.float32)
    q = maps.shape[0]
    fig, axes = plt.subplots(1, q + 1, figsize=(size * (q + 1), size), squeeze=False)
    axes = axes[0]
    show_image(img, boxes_xyxy, ax=axes[0], title="image + boxes")
    for i in range(q):
        m = maps[i]
        m = (m - m.min()) / (m.max() - m.min() + 1e-12)
        axes[i + 1].imshow(img)
        axes[i + 1].imshow(
            m.numpy(), cmap="inferno", alpha=0.6, extent=(0, W, H, 0), interpolation="bilinear"
        )
        if boxes_xyxy is not None:
            draw_boxes(axes[i + 1], torch.as_tensor(boxes_xyxy)[i : i + 1], colors=[COLORS[i % 10]])
        axes[i + 1].set_title(titles[i] if titles else f"query {i}", fontsize=8)
        axes[i + 1].axis("off")
    fig.tight_layout()
    return fig

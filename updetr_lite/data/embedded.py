"""The embedded default data: a procedural multi-object detection set, nothing downloaded.

Images of ``data.embedded_image_size`` pixels (S) hold 1..5 objects of 5 shape classes
(COCO category ids 1..5: circle, square, triangle, star, cross). An object's longer side is
drawn uniformly in [12, 48] px at S = 128 (scaled with S); aspect ratio 0.7..1.4, random
rotation (small for squares), and a texture: a solid colour, stripes, a checkerboard or a
crop of a real photograph (``photos.load_photos``), optionally tinted. Objects may overlap,
but a placement that would hide more than 35 % of an earlier object's area is redrawn, and a
box is the tight box of the object's *visible* pixels (as COCO boxes are). Behind the objects
is clutter (distractor strokes and small blobs) on a background that is a photo crop, smooth
noise, a colour gradient or stripes.

Splits: ``train`` and ``val`` (PNG images + COCO JSON) and ``unlabeled`` (PNG images only,
a folder, for pre-training), sized by ``data.embedded_train/_val/_unlabeled``.

Reproducible: image i of a split is drawn from ``numpy.random.default_rng([seed, split,
i])`` alone, PNGs are written by PIL with fixed settings and no metadata, the JSON with
sorted keys, so the same parameters give byte-identical files whatever the worker count.

``build_embedded(data_cfg)`` builds into ``cache_dir/embedded-<hash of the parameters>``,
in a temporary folder renamed into place, with a ``DONE`` marker written last: a killed
build is redone, never half-used; a finished one is reused.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

GENERATOR_VERSION = 1  # bump when the drawing changes: it is part of the folder hash
CLASSES = ("circle", "square", "triangle", "star", "cross")  # category ids 1..5
SIZE_RANGE = (12 / 128, 48 / 128)  # object's longer side, as a fraction of the image size
ASPECT_RANGE = (0.7, 1.4)
MAX_OCCLUSION = 0.35  # at most this fraction of an object's area is hidden by later ones
OBJECTS_PER_IMAGE = (1, 5)
SPLIT_CODES = {"train": 0, "val": 1, "unlabeled": 2}
MARKER = "DONE"


@dataclass(frozen=True)
class EmbeddedPaths:
    root: Path
    train_images: Path
    train_json: Path
    val_images: Path
    val_json: Path
    unlabeled: Path


def embedded_params(data_cfg) -> dict:
    return {
        "version": GENERATOR_VERSION,
        "image_size": int(data_cfg.embedded_image_size),
        "train": int(data_cfg.embedded_train),
        "val": int(data_cfg.embedded_val),
        "unlabeled": int(data_cfg.embedded_unlabeled),
        "seed": int(data_cfg.embedded_seed),
    }


def embedded_root(data_cfg) -> Path:
    params = embedded_params(data_cfg)
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]
    return Path(data_cfg.cache_dir) / f"embedded-{digest}"


def _paths(root: Path) -> EmbeddedPaths:
    return EmbeddedPaths(
        root,
        root / "train",
        root / "train.json",
        root / "val",
        root / "val.json",
        root / "unlabeled",
    )


# ----------------------------------------------------------------------------- drawing

_PHOTOS: list[np.ndarray] | None = None


def _photos(size: int) -> list[np.ndarray]:
    """The sample photos, downscaled so their shorter side is at most 3 * size (fast crops)."""
    global _PHOTOS
    if _PHOTOS is None:
        from .photos import load_photos

        out = []
        for a in load_photos().values():
            h, w = a.shape[:2]
            f = min(1.0, 3 * size / min(h, w))
            if f < 1:
                a = np.asarray(
                    Image.fromarray(a).resize((round(w * f), round(h * f)), Image.BILINEAR)
                )
            out.append(a)
        _PHOTOS = out
    return _PHOTOS


def _colour(rng) -> np.ndarray:
    return rng.integers(0, 256, 3).astype(np.float32)


def _photo_crop(rng, h: int, w: int, size: int) -> np.ndarray:
    """A random crop of a random photo resized to h x w, float32 [h, w, 3]."""
    photos = _photos(size)
    p = photos[int(rng.integers(len(photos)))]
    ph, pw = p.shape[:2]
    scale = rng.uniform(0.15, 1.0)
    ch = max(2, min(ph, round(scale * min(ph, pw) * math.sqrt(h / w))))
    cw = max(2, min(pw, round(scale * min(ph, pw) * math.sqrt(w / h))))
    y, x = int(rng.integers(ph - ch + 1)), int(rng.integers(pw - cw + 1))
    crop = Image.fromarray(p[y : y + ch, x : x + cw]).resize((w, h), Image.BILINEAR)
    return np.asarray(crop, dtype=np.float32)


def _stripes(rng, h: int, w: int, period: float) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    t = rng.uniform(0, math.pi)
    phase = (xx * math.cos(t) + yy * math.sin(t)) / period + rng.uniform(0, 1)
    on = (phase % 1.0) < rng.uniform(0.3, 0.7)
    return np.where(on[..., None], _colour(rng), _colour(rng))


def _background(rng, s: int) -> np.ndarray:
    kind = int(rng.integers(4))
    if kind == 0:  # photo crop
        bg = _photo_crop(rng, s, s, s)
    elif kind == 1:  # smooth noise: a few random colours upsampled, plus fine grain
        g = int(rng.integers(3, 9))
        low = rng.integers(0, 256, (g, g, 3)).astype(np.uint8)
        bg = np.asarray(Image.fromarray(low).resize((s, s), Image.BICUBIC), dtype=np.float32)
        bg = bg + rng.normal(0, 8, (s, s, 3)).astype(np.float32)
    elif kind == 2:  # linear gradient between two colours
        yy, xx = np.mgrid[0:s, 0:s].astype(np.float32) / max(s - 1, 1)
        t = rng.uniform(0, 2 * math.pi)
        r = xx * math.cos(t) + yy * math.sin(t)
        r = (r - r.min()) / max(float(r.max() - r.min()), 1e-6)
        bg = _colour(rng) * (1 - r[..., None]) + _colour(rng) * r[..., None]
    else:
        bg = _stripes(rng, s, s, rng.uniform(6, 24) * s / 128)
    return bg


def _texture(rng, h: int, w: int, s: int) -> np.ndarray:
    kind = int(rng.integers(4))
    if kind == 0:  # solid colour with slight grain
        tex = _colour(rng) + rng.normal(0, 6, (h, w, 3)).astype(np.float32)
    elif kind == 1:
        tex = _stripes(rng, h, w, rng.uniform(3, 10) * s / 128)
    elif kind == 2:  # checkerboard
        c = max(2.0, rng.uniform(3, 8) * s / 128)
        yy, xx = np.mgrid[0:h, 0:w]
        on = ((yy // c + xx // c) % 2).astype(bool)
        tex = np.where(on[..., None], _colour(rng), _colour(rng))
    else:  # a photo crop, tinted toward a colour half the time
        tex = _photo_crop(rng, h, w, s)
        if rng.random() < 0.5:
            a = rng.uniform(0.3, 0.6)
            tex = (1 - a) * tex + a * _colour(rng)
    return tex


def _unit_shape(rng, cls: int) -> np.ndarray:
    """Polygon points [k, 2] of a shape class around the origin, radius about 1."""
    if cls == 0:  # circle
        a = np.linspace(0, 2 * math.pi, 48, endpoint=False)
        return np.stack([np.cos(a), np.sin(a)], 1)
    if cls == 1:  # square
        return np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=np.float64)
    if cls == 2:  # triangle, corners jittered
        a = math.pi / 2 + np.arange(3) * 2 * math.pi / 3 + rng.uniform(-0.17, 0.17, 3)
        return np.stack([np.cos(a), -np.sin(a)], 1)
    if cls == 3:  # five-pointed star
        inner = rng.uniform(0.38, 0.5)
        a = -math.pi / 2 + np.arange(10) * math.pi / 5
        r = np.where(np.arange(10) % 2 == 0, 1.0, inner)
        return np.stack([r * np.cos(a), r * np.sin(a)], 1)
    t = rng.uniform(0.25, 0.38)  # cross (plus sign) with arm half-width t
    return np.array(
        [
            [-t, -1],
            [t, -1],
            [t, -t],
            [1, -t],
            [1, t],
            [t, t],
            [t, 1],
            [-t, 1],
            [-t, t],
            [-1, t],
            [-1, -t],
            [-t, -t],
        ],
        dtype=np.float64,
    )


def _object_polygon(rng, cls: int, s: int) -> np.ndarray:
    """Polygon [k, 2] (x, y) pixels, rotated and stretched, longer box side in SIZE_RANGE * s,
    at a random position inside the image."""
    pts = _unit_shape(rng, cls)
    rot = rng.uniform(-0.35, 0.35) if cls == 1 else rng.uniform(0, 2 * math.pi)
    c, sn = math.cos(rot), math.sin(rot)
    pts = pts @ np.array([[c, sn], [-sn, c]])
    pts = pts * np.array([rng.uniform(*ASPECT_RANGE), 1.0])
    span = pts.max(0) - pts.min(0)
    size = rng.uniform(*SIZE_RANGE) * s
    pts = (pts - pts.min(0)) * (size / span.max())
    ext = pts.max(0)
    off = np.array([rng.uniform(0, s - ext[0] - 1), rng.uniform(0, s - ext[1] - 1)])
    return pts + off


def _clutter(rng, img: Image.Image, s: int) -> None:
    d = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(0, 5))):  # strokes
        xy = [float(v) for v in rng.uniform(0, s, 4)]
        d.line(
            xy, fill=tuple(int(v) for v in rng.integers(0, 256, 3)), width=int(rng.integers(1, 3))
        )
    for _ in range(int(rng.integers(0, 5))):  # small blobs, well under the smallest object
        r = rng.uniform(1, 3) * s / 128
        x, y = (float(v) for v in rng.uniform(0, s, 2))
        d.ellipse([x - r, y - r, x + r, y + r], fill=tuple(int(v) for v in rng.integers(0, 256, 3)))


def draw_image(seed: int, split: str, index: int, s: int, labelled: bool = True):
    """One image: (PIL RGB image, list of (category_id, [x, y, w, h] of the visible pixels,
    visible area, full area before occlusion))."""
    rng = np.random.default_rng([seed, SPLIT_CODES[split], index])
    img = Image.fromarray(_background(rng, s).clip(0, 255).astype(np.uint8))
    _clutter(rng, img, s)
    n = int(rng.integers(OBJECTS_PER_IMAGE[0], OBJECTS_PER_IMAGE[1] + 1))
    full, visible, classes = [], [], []
    for _ in range(n):
        cls = int(rng.integers(len(CLASSES)))
        for _attempt in range(10):
            poly = _object_polygon(rng, cls, s)
            m_img = Image.new("L", (s, s), 0)
            ImageDraw.Draw(m_img).polygon([tuple(p) for p in poly.tolist()], fill=255)
            m = np.asarray(m_img) > 0
            if not m.any():
                continue
            hidden_ok = all(
                (v & ~m).sum() >= (1 - MAX_OCCLUSION) * f.sum() for f, v in zip(full, visible)
            )
            if hidden_ok:
                break
        else:
            continue  # no placement hides little enough: one object fewer
        y0, x0 = np.argwhere(m).min(0)
        y1, x1 = np.argwhere(m).max(0) + 1
        tex = _texture(rng, int(y1 - y0), int(x1 - x0), s).clip(0, 255).astype(np.uint8)
        img.paste(Image.fromarray(tex), (int(x0), int(y0)), Image.fromarray(m[y0:y1, x0:x1]))
        visible = [v & ~m for v in visible]
        full.append(m)
        visible.append(m.copy())
        classes.append(cls)
    objects = []
    for cls, v, f in zip(classes, visible, full):
        ys, xs = np.nonzero(v)
        x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
        objects.append((cls + 1, [x0, y0, x1 - x0, y1 - y0], int(v.sum()), int(f.sum())))
    return img, objects


def _save_png(img: Image.Image, path: Path) -> None:
    img.save(path, format="PNG", compress_level=6, optimize=False)  # no metadata chunks


def _work(job):
    """Draw and write images [start, stop) of a split; returns their objects."""
    seed, split, start, stop, s, folder = job
    out = []
    for i in range(start, stop):
        img, objects = draw_image(seed, split, i, s)
        _save_png(img, Path(folder) / f"{i:06d}.png")
        out.append(objects)
    return out


def _coco_json(objects_per_image: list, s: int) -> dict:
    images, annotations = [], []
    for i, objects in enumerate(objects_per_image):
        images.append({"id": i + 1, "file_name": f"{i:06d}.png", "height": s, "width": s})
        for cat, box, area, _full in objects:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i + 1,
                    "category_id": cat,
                    "bbox": box,
                    "area": area,
                    "iscrowd": 0,
                }
            )
    categories = [{"id": k + 1, "name": n, "supercategory": "shape"} for k, n in enumerate(CLASSES)]
    return {"images": images, "annotations": annotations, "categories": categories}


def _workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def write_embedded(data_cfg, out: Path, workers: int | None = None) -> None:
    """Draw every split into ``out`` (which must be empty or absent)."""
    p = embedded_params(data_cfg)
    s, seed = p["image_size"], p["seed"]
    jobs, chunk = [], 64
    for split in ("train", "val", "unlabeled"):
        (out / split).mkdir(parents=True, exist_ok=True)
        for a in range(0, p[split], chunk):
            jobs.append((seed, split, a, min(a + chunk, p[split]), s, str(out / split)))
    workers = workers or _workers()
    _photos(s)  # loaded once here, inherited by forked workers
    if workers > 1 and len(jobs) > 1:
        import multiprocessing as mp

        ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        with ctx.Pool(min(workers, len(jobs))) as pool:
            results = pool.map(_work, jobs, chunksize=1)
    else:
        results = [_work(j) for j in jobs]
    per_split = {"train": [], "val": [], "unlabeled": []}
    for job, res in zip(jobs, results):
        per_split[job[1]].extend(res)
    for split in ("train", "val"):
        text = json.dumps(_coco_json(per_split[split], s), sort_keys=True, separators=(",", ":"))
        (out / f"{split}.json").write_text(text)
    (out / "params.json").write_text(json.dumps(p, sort_keys=True, indent=1))


def build_embedded(data_cfg, workers: int | None = None) -> EmbeddedPaths:
    """Build (or reuse) the embedded dataset for ``data_cfg``; see the module doc."""
    root = embedded_root(data_cfg)
    if (root / MARKER).is_file():
        return _paths(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f".{root.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        write_embedded(data_cfg, tmp, workers)
        (tmp / MARKER).write_text("complete\n")  # last: marks a finished build
        if root.exists() and not (root / MARKER).is_file():
            shutil.rmtree(root)  # an unfinished build from before
        try:
            os.rename(tmp, root)
        except OSError:
            if not (root / MARKER).is_file():  # someone else finished first otherwise
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return _paths(root)

"""Real photographs that ship inside installed pip packages (nothing is downloaded).

scikit-image bundles a few sample images in its wheel (``skimage.data``) and matplotlib ships
``grace_hopper.jpg`` in its sample data. Only the ones that load offline are used; a photo
that fails to load (a missing optional file) is left out, not an error. They serve as an
unlabeled pool, as textures and backgrounds for the embedded dataset, and for the demo.
"""

from __future__ import annotations

import functools

import numpy as np

# skimage.data loaders whose files are inside the wheel (checked offline); camera, coins and
# moon are greyscale and become 3 equal channels.
SKIMAGE_PHOTOS = (
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "camera",
    "coins",
    "moon",
)


def _rgb(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype != np.uint8:
        a = (a.astype(np.float64) * (255.0 if a.max() <= 1 else 1.0)).clip(0, 255).astype(np.uint8)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    return np.ascontiguousarray(a[..., :3])


@functools.lru_cache(maxsize=1)
def _load() -> tuple[tuple[str, np.ndarray], ...]:
    import warnings

    out = []
    try:
        import skimage.data as skd

        for name in SKIMAGE_PHOTOS:
            try:
                out.append((name, _rgb(getattr(skd, name)())))
            except Exception:  # noqa: BLE001 - an optional photo missing from this install
                continue
    except ImportError:
        warnings.warn("scikit-image is not installed: its sample photos are left out", stacklevel=3)
    try:
        import matplotlib.cbook as cbook
        from PIL import Image

        with cbook.get_sample_data("grace_hopper.jpg") as f:
            out.append(("grace_hopper", _rgb(np.array(Image.open(f).convert("RGB")))))
    except Exception:  # noqa: BLE001
        pass
    if not out:
        raise RuntimeError("no sample photo loads: install scikit-image or matplotlib")
    return tuple(out)


def load_photos() -> dict[str, np.ndarray]:
    """name -> HxWx3 uint8 RGB photograph, in a fixed order (copies: safe to modify)."""
    return {name: a.copy() for name, a in _load()}

"""Small pyramidal TIFF slides with exact pixels, for tests of every folder (``tests/`` is on
``sys.path`` through its conftest)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def halve_rgb(a: np.ndarray) -> np.ndarray:
    """2×2 mean (rounded half up) of an (h, w, c) uint8 array, cropped to even sides."""
    h, w = a.shape[0] // 2 * 2, a.shape[1] // 2 * 2
    s = a[:h, :w].reshape(h // 2, 2, w // 2, 2, -1).astype(np.uint16).sum(axis=(1, 3))
    return ((s + 2) >> 2).astype(np.uint8)


def write_slide(path: Path, rgb: np.ndarray, mpp: float | None = 0.5, levels: int = 3,
                tile: int = 128) -> Path:
    """A deflate-tiled pyramidal TIFF of ``rgb`` (exact pixels), levels halved, OpenSlide-readable."""
    import tifffile

    pages = [rgb]
    for _ in range(levels - 1):
        pages.append(halve_rgb(pages[-1]))
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        for k, page in enumerate(pages):
            kw = {}
            if mpp:
                res = 1e4 / (mpp * 2**k)
                kw = {"resolution": (res, res), "resolutionunit": "CENTIMETER"}
            tif.write(page, tile=(tile, tile), photometric="rgb", compression="zlib",
                      subfiletype=0 if k == 0 else 1, metadata=None, **kw)
    return path

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


def tissue_like_tile(tile: int, seed: int = 0) -> np.ndarray:
    """A (tile, tile, 3) patch that looks like H&E to tissue detection: eosin pink with haematoxylin
    nuclei."""
    rng = np.random.default_rng(seed)
    rgb = np.empty((tile, tile, 3), np.uint8)
    rgb[:] = (226, 150, 190)
    yy, xx = np.mgrid[0:tile, 0:tile]
    for cx, cy in rng.integers(0, tile, (tile // 8, 2)):
        rgb[(xx - cx) ** 2 + (yy - cy) ** 2 < 36] = (96, 60, 150)
    return rgb


def write_sparse_slide(path: Path, size: tuple[int, int] = (100_000, 100_000),
                       tissue: tuple[int, int, int, int] = (40_000, 40_000, 4_000, 4_000), *,
                       tile: int = 512, mpp: float | None = 0.25, glass_tiles: bool = False) -> Path:
    """A huge single-level deflate-tiled TIFF (generic tiled TIFF for OpenSlide), written in well
    under a second: glass everywhere but the tiles meeting ``tissue`` (x, y, w, h in pixels),
    which hold :func:`tissue_like_tile` patches.

    Tiles are compressed once and written as bytes: glass tiles are left out of the file
    (TileByteCounts 0, which OpenSlide draws transparent, white once composited: a 100 000² slide
    is under 1 MB), or with ``glass_tiles`` each is the same deflated glass tile (about 800 bytes
    per tile, and every tile is decoded when read)."""
    import tifffile
    import zlib

    w, h = size
    glass = zlib.compress(np.full((tile, tile, 3), 242, np.uint8).tobytes(), 6) if glass_tiles else b""
    patches = [zlib.compress(tissue_like_tile(tile, seed).tobytes(), 6) for seed in range(4)]
    tx0, ty0, tw, th = tissue

    def tiles():
        for row, y in enumerate(range(0, h, tile)):
            for col, x in enumerate(range(0, w, tile)):
                inside = x < tx0 + tw and x + tile > tx0 and y < ty0 + th and y + tile > ty0
                yield patches[(row + col) % len(patches)] if inside else glass

    kw = {}
    if mpp:
        kw = {"resolution": (1e4 / mpp, 1e4 / mpp), "resolutionunit": "CENTIMETER"}
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        tif.write(tiles(), shape=(h, w, 3), dtype=np.uint8, tile=(tile, tile), photometric="rgb",
                  compression="zlib", metadata=None, **kw)
    return path

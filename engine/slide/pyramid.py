"""Build large pyramidal TIFF slides from real H&E patches (test fixtures and benchmarks).

The slide is a mosaic: level 0 is a grid of 512-pixel cells, each a real H&E patch from the shared
data (CAMELYON and EBHI, 512² JPEG), inside an irregular tissue outline on a glass-white background.
Every level is rendered from the same mosaic (patches pre-shrunk per level), so levels agree, and is
written tile by tile from a generator: memory stays at a few tiles whatever the slide's size.

Levels are consecutive pages with resolution tags, which OpenSlide reads as a generic tiled TIFF
with microns per pixel.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from engine.shared_data import data_path

log = logging.getLogger(__name__)

CELL = 512
GLASS = (242, 241, 245)
PATCH_SETS: tuple[tuple[str, ...], ...] = (("seg", "camelyon-tumour", "images"), ("seg", "ebhi-polyp", "images"))


def load_patches(folders: Sequence[Path] | None = None, limit: int = 96) -> np.ndarray:
    """Real H&E patches as an (n, 512, 512, 3) uint8 array (resized/cropped to 512² if needed)."""
    from PIL import Image

    if folders is None:
        folders = [data_path(*parts) for parts in PATCH_SETS]
    files = sorted(f for d in folders for f in Path(d).iterdir()
                   if f.suffix.lower() in {".jpg", ".jpeg", ".png", ".tif", ".tiff"})[:limit]
    if not files:
        raise FileNotFoundError(f"no H&E patches found in {', '.join(map(str, folders))}")
    out = np.empty((len(files), CELL, CELL, 3), dtype=np.uint8)
    for i, f in enumerate(files):
        with Image.open(f) as im:
            im = im.convert("RGB")
            if im.size != (CELL, CELL):
                side = min(im.size)
                im = im.crop((0, 0, side, side)).resize((CELL, CELL), Image.Resampling.BILINEAR)
            out[i] = np.asarray(im)
    return out


def _shrink(patches: np.ndarray, size: int) -> np.ndarray:
    """Box-filter every patch down to ``size``² (``size`` divides 512)."""
    f = CELL // size
    n = patches.shape[0]
    return patches.reshape(n, size, f, size, f, 3).mean(axis=(2, 4)).round().astype(np.uint8)


class Mosaic:
    """The content of the synthetic slide: which patch (or glass) fills each level-0 cell."""

    def __init__(self, width: int, height: int, patches: np.ndarray, seed: int = 0) -> None:
        self.width, self.height = width, height
        self.cols, self.rows = math.ceil(width / CELL), math.ceil(height / CELL)
        rng = np.random.default_rng(seed)
        n = patches.shape[0]
        # index n is glass; tissue is an ellipse with a wobbly border and a few holes
        yy, xx = np.mgrid[0:self.rows, 0:self.cols]
        u = (xx + 0.5) / self.cols - 0.5
        v = (yy + 0.5) / self.rows - 0.5
        angle = np.arctan2(v, u)
        wobble = 1 + 0.12 * np.sin(5 * angle + rng.uniform(0, 6)) + 0.06 * np.sin(11 * angle)
        inside = (u / 0.46) ** 2 + (v / 0.42) ** 2 < wobble ** 2
        holes = rng.random((self.rows, self.cols)) < 0.03
        self.index = np.where(inside & ~holes, rng.integers(0, n, (self.rows, self.cols)), n)
        self._levels: dict[int, np.ndarray] = {}
        self._patches = patches

    def cells_at(self, size: int) -> np.ndarray:
        """Patches shrunk to ``size``² plus a glass cell at index n, as (n + 1, size, size, 3)."""
        if size not in self._levels:
            glass = np.empty((1, size, size, 3), np.uint8)
            glass[:] = GLASS
            small = self._patches if size == CELL else _shrink(self._patches, size)
            self._levels[size] = np.concatenate([small, glass])
        return self._levels[size]

    def render(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        """Pixels [y, y+h) × [x, x+w) of ``level`` (downsample 2**level), glass beyond the slide."""
        size = max(1, CELL >> level)
        group = max(1, (1 << level) // CELL)  # cells merged into one pixel on very coarse levels
        cells = self.cells_at(size)
        c0, c1 = x // size, (x + w - 1) // size + 1
        r0, r1 = y // size, (y + h - 1) // size + 1
        cols = np.arange(c0, c1) * group
        rows = np.arange(r0, r1) * group
        ok_c = cols < self.cols
        ok_r = rows < self.rows
        idx = np.full((len(rows), len(cols)), cells.shape[0] - 1)
        idx[np.ix_(ok_r, ok_c)] = self.index[np.ix_(rows[ok_r], cols[ok_c])]
        block = cells[idx].transpose(0, 2, 1, 3, 4).reshape(len(rows) * size, len(cols) * size, 3)
        ox, oy = x - c0 * size, y - r0 * size
        return block[oy:oy + h, ox:ox + w]


def level_dimensions(width: int, height: int, tile: int) -> list[tuple[int, int]]:
    """Dimensions of each level (downsample 2**k) until the slide fits in about two tiles."""
    dims = [(width, height)]
    while max(dims[-1]) > 2 * tile:
        w, h = dims[-1]
        dims.append((math.ceil(w / 2), math.ceil(h / 2)))
    return dims


def build_pyramid_tiff(out: Path, width: int, height: int, *, tile: int = 512, mpp: float = 0.25,
                       quality: int = 85, seed: int = 0, patches: np.ndarray | None = None) -> Path:
    """Write a JPEG-tiled pyramidal TIFF of ``width`` × ``height`` made of real H&E patches."""
    import tifffile

    if width <= 0 or height <= 0:
        raise ValueError("slide size must be positive")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    mosaic = Mosaic(width, height, load_patches() if patches is None else patches, seed)
    dims = level_dimensions(width, height, tile)
    log.info("building %d×%d pyramid with %d levels at %s", width, height, len(dims), out)

    def tiles(level: int, w: int, h: int) -> Iterator[np.ndarray]:
        for ty in range(0, h, tile):
            for tx in range(0, w, tile):
                yield mosaic.render(level, tx, ty, tile, tile)  # full tiles: glass past the edge

    tmp = out.with_name(out.name + ".part")
    with tifffile.TiffWriter(tmp, bigtiff=True) as tif:
        for level, (w, h) in enumerate(dims):
            res = 1e4 / (mpp * 2**level)  # pixels per centimetre
            tif.write(tiles(level, w, h), shape=(h, w, 3), dtype=np.uint8, tile=(tile, tile),
                      photometric="rgb", compression="jpeg", compressionargs={"level": quality},
                      subfiletype=0 if level == 0 else 1, resolution=(res, res),
                      resolutionunit="CENTIMETER", metadata=None, maxworkers=2)
    tmp.replace(out)
    return out

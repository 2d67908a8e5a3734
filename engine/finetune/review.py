"""Review next: where a pathologist's correction helps the model most.

:func:`rank_regions` scores square candidate regions of one slide from its prediction cache and
returns the best ``n`` that do not overlap each other nor any region already reviewed:

- ``entropy`` (one cache): the mean, over the region's tissue pixels, of the entropy of the
  predicted class distribution (background = what the foreground classes leave), divided by
  log(classes) so it lies in [0, 1]; 1 is a coin toss everywhere.
- ``disagreement`` (two caches, e.g. teacher and student): the mean over tissue pixels of the total
  variation distance ½·Σ|p − q| between the two class distributions, also in [0, 1].

Candidates lie on a lattice of quarter-region steps, inside the slide. The cache is read at a coarse
level (about 32 pixels across a region), one stored tile at a time, and summed into lattice cells,
so the whole map is never in memory. A pixel counts as tissue when its level-0 cache tile is a
tissue tile whose prediction is final (in both caches for ``disagreement``); a region needs
``min_tissue`` of its area to be tissue. Overlap is positive shared area: touching edges is fine.
No torch here: the app ranks from caches it already shows.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from engine.errors import CocoPathError
from engine.inference.cache import PredictionCache

log = logging.getLogger(__name__)

#: Candidate regions start every ``region_px / STEPS`` level-0 pixels.
STEPS = 4
#: Cache pixels wanted across one lattice cell (so about STEPS·8 = 32 across a region).
CELL_PIXELS = 8
KINDS = ("entropy", "disagreement")


@dataclass(frozen=True)
class ReviewRegion:
    """A square region to review, in slide level-0 pixels, with its score (higher: review first)."""

    x: int
    y: int
    w: int
    h: int
    score: float
    kind: str

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown review kind {self.kind!r}; valid: {', '.join(KINDS)}")

    @property
    def rect(self) -> tuple[int, int, int, int]:
        return self.x, self.y, self.w, self.h


def entropy_map(probs: np.ndarray) -> np.ndarray:
    """(h, w, C-1) uint8 foreground probabilities → (h, w) float32 entropy / log(C), in [0, 1]."""
    fg = probs.astype(np.float32) / 255.0
    bg = np.clip(1.0 - fg.sum(axis=-1, keepdims=True), 0.0, 1.0)
    p = np.concatenate([bg, fg], axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -np.where(p > 0, p * np.log(p), 0.0).sum(axis=-1)
    return (h / math.log(p.shape[-1])).astype(np.float32)


def disagreement_map(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Total variation distance ½·Σ|p − q| between two (h, w, C-1) uint8 probability maps."""
    fa, fb = a.astype(np.float32) / 255.0, b.astype(np.float32) / 255.0
    bga = np.clip(1.0 - fa.sum(axis=-1), 0.0, 1.0)
    bgb = np.clip(1.0 - fb.sum(axis=-1), 0.0, 1.0)
    return (0.5 * (np.abs(fa - fb).sum(axis=-1) + np.abs(bga - bgb))).astype(np.float32)


def _usable_tiles(cache: PredictionCache) -> np.ndarray:
    """(rows, cols) bool: level-0 cache tiles that are tissue and final."""
    done = np.zeros_like(cache.tissue, dtype=bool)
    for c, r in cache.done_tiles():
        if 0 <= r < done.shape[0] and 0 <= c < done.shape[1]:
            done[r, c] = True
    return done & cache.tissue.astype(bool)


def _usable_at(cache: PredictionCache, usable: np.ndarray, xs: np.ndarray, ys: np.ndarray
               ) -> np.ndarray:
    """(len(ys), len(xs)) bool: whether the level-0 points (xs × ys) fall on usable tiles."""
    span = cache.tile * cache.grid.downsample
    rows, cols = usable.shape
    gx, gy = (xs // span).astype(np.int64), (ys // span).astype(np.int64)
    okx, oky = (gx >= 0) & (gx < cols), (gy >= 0) & (gy < rows)
    out = usable[np.clip(gy, 0, rows - 1)[:, None], np.clip(gx, 0, cols - 1)[None, :]]
    return out & oky[:, None] & okx[None, :]


def _read_other(other: PredictionCache, xs: np.ndarray, ys: np.ndarray, ds: float) -> np.ndarray:
    """``other``'s probabilities at the level-0 points (xs × ys), nearest pixel of its best level."""
    level = other.best_level_for_downsample(ds)
    ods = other.level_downsample(level)
    ix, iy = (xs // ods).astype(np.int64), (ys // ods).astype(np.int64)
    x0, y0 = int(ix.min()), int(iy.min())
    block = other.read_region(level, x0 * ods, y0 * ods, int(ix.max()) - x0 + 1,
                              int(iy.max()) - y0 + 1)
    return block[(iy - y0)[:, None], (ix - x0)[None, :]]


def _cell_sums(cache: PredictionCache, cell: float, ncx: int, ncy: int,
               other: PredictionCache | None) -> tuple[np.ndarray, np.ndarray, float]:
    """Per lattice cell: sum of pixel scores and count of tissue pixels; and the level's downsample."""
    level = cache.best_level_for_downsample(cell / CELL_PIXELS)
    ds = cache.level_downsample(level)
    usable = _usable_tiles(cache)
    other_usable = _usable_tiles(other) if other is not None else None
    sums = np.zeros(ncy * ncx, np.float64)
    counts = np.zeros(ncy * ncx, np.float64)
    t = cache.tile
    lw, lh = cache.levels[level]
    span0 = cache.tile * cache.grid.downsample  # level-0 pixels across one level-0 cache tile
    for r in range(math.ceil(lh / t)):
        for c in range(math.ceil(lw / t)):
            x0, y0 = c * t * ds, r * t * ds  # the stored tile's level-0 extent
            g = usable[int(y0 // span0):int(math.ceil((y0 + t * ds) / span0)),
                       int(x0 // span0):int(math.ceil((x0 + t * ds) / span0))]
            if not g.any():
                continue
            tile = cache.read_tile(level, c, r)
            if tile is None:
                continue
            w, h = min(t, lw - c * t), min(t, lh - r * t)
            xs = (c * t + np.arange(w) + 0.5) * ds  # level-0 centres of the tile's pixels
            ys = (r * t + np.arange(h) + 0.5) * ds
            ok = _usable_at(cache, usable, xs, ys)
            if other is None:
                score = entropy_map(tile[:h, :w])
            else:
                assert other_usable is not None
                ok &= _usable_at(other, other_usable, xs, ys)
                if not ok.any():
                    continue
                score = disagreement_map(tile[:h, :w], _read_other(other, xs, ys, ds))
            cx, cy = (xs // cell).astype(np.int64), (ys // cell).astype(np.int64)
            inside = (cy[:, None] < ncy) & (cx[None, :] < ncx) & ok
            if not inside.any():
                continue
            idx = (cy[:, None] * ncx + cx[None, :])[inside]
            sums += np.bincount(idx, weights=score[inside], minlength=ncy * ncx)
            counts += np.bincount(idx, minlength=ncy * ncx)
    return sums.reshape(ncy, ncx), counts.reshape(ncy, ncx), ds


def _window_sum(a: np.ndarray, k: int) -> np.ndarray:
    """Sum of every k×k window of ``a`` ((H−k+1, W−k+1), H, W ≥ k)."""
    s = np.zeros((a.shape[0] + 1, a.shape[1] + 1), np.float64)
    s[1:, 1:] = a.cumsum(0).cumsum(1)
    return s[k:, k:] - s[:-k, k:] - s[k:, :-k] + s[:-k, :-k]


def _overlapping(starts: np.ndarray, size: int, lo: float, length: float) -> np.ndarray:
    """Which candidate spans [start, start + size) share positive length with [lo, lo + length)."""
    return (starts < lo + length) & (starts + size > lo)


def rank_regions(cache: PredictionCache, region_px: int, n: int = 10,
                 exclude: Sequence[tuple[int, int, int, int]] = (),
                 other: PredictionCache | None = None, min_tissue: float = 0.5
                 ) -> list[ReviewRegion]:
    """The ``n`` best regions of ``region_px``² level-0 pixels to review next, best first.

    ``exclude`` holds (x, y, w, h) level-0 rectangles already reviewed (correction ROIs): a region
    sharing area with one is never proposed. ``other``, a second cache of the same slide (a teacher's
    prediction, or another model version), switches the score from entropy to disagreement. Fewer
    than ``n`` come back when the slide has fewer non-overlapping regions with enough tissue.
    """
    region_px = int(region_px)
    if region_px < STEPS:
        raise CocoPathError(f"a review region must be at least {STEPS} pixels wide, not {region_px}")
    if not 0.0 <= min_tissue <= 1.0:
        raise CocoPathError(f"min_tissue must be a fraction between 0 and 1, not {min_tissue}")
    if n <= 0:
        return []
    width, height = cache.grid.slide_size
    if other is not None and tuple(other.grid.slide_size) != (width, height):
        raise CocoPathError(f"the two predictions are of different slides ({width}×{height} and "
                            f"{other.grid.slide_size[0]}×{other.grid.slide_size[1]})")
    kind = "entropy" if other is None else "disagreement"
    cell = region_px / STEPS
    # candidate (i, j) covers cells i … i+STEPS-1, i.e. level-0 [i·cell, i·cell + region_px): inside
    nx, ny = math.floor((width - region_px) / cell) + 1, math.floor((height - region_px) / cell) + 1
    if width < region_px or height < region_px or nx < 1 or ny < 1:
        return []
    ncx, ncy = nx + STEPS - 1, ny + STEPS - 1
    sums, counts, ds = _cell_sums(cache, cell, ncx, ncy, other)
    tissue_px = _window_sum(counts, STEPS)
    fraction = tissue_px * ds * ds / float(region_px * region_px)
    with np.errstate(divide="ignore", invalid="ignore"):
        score = np.where(tissue_px > 0, _window_sum(sums, STEPS) / tissue_px, 0.0)
    valid = (fraction >= min_tissue - 1e-9) & (tissue_px > 0)
    xs = np.round(np.arange(nx) * cell).astype(np.int64)  # candidate corners, level-0 pixels
    ys = np.round(np.arange(ny) * cell).astype(np.int64)
    masked = np.where(valid, score, -np.inf)
    for x, y, w, h in exclude:
        if w > 0 and h > 0:
            masked[np.ix_(_overlapping(ys, region_px, y, h),
                          _overlapping(xs, region_px, x, w))] = -np.inf
    out: list[ReviewRegion] = []
    while len(out) < n:
        flat = int(np.argmax(masked))  # ties: the first in row-major order (top, then left)
        j, i = divmod(flat, nx)
        if not np.isfinite(masked[j, i]):
            break
        x, y = int(xs[i]), int(ys[j])
        out.append(ReviewRegion(x, y, region_px, region_px, float(score[j, i]), kind))
        # non-maximum suppression: candidates overlapping the chosen one are out
        masked[np.ix_(_overlapping(ys, region_px, y, region_px),
                      _overlapping(xs, region_px, x, region_px))] = -np.inf
    log.info("review: %d region(s) of %d px ranked by %s (cache level downsample %.3g)", len(out),
             region_px, kind, ds)
    return out

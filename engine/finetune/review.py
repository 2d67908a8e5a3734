"""Review next: where a pathologist's correction helps the model most.

:func:`rank_regions` proposes square regions of one slide from its prediction cache, and
:func:`rank_slides` of several slides at once; both return regions that overlap neither each other
nor any region already reviewed, in the order to review them.

**What a region is worth.** Its *uncertainty* ``u``, in [0, 1]:

- ``entropy`` (one cache): the mean, over the region's tissue pixels, of the entropy of the
  predicted class distribution (background = what the foreground classes leave), divided by
  log(classes); 1 is a coin toss everywhere.
- ``disagreement`` (two caches, e.g. teacher and student): the mean over tissue pixels of the total
  variation distance ½·Σ|p − q| between the two class distributions.

**Uncertainty and diversity.** The most uncertain regions tend to be k neighbours on one ambiguous
spot, and k corrections there teach the model one thing; and where a model is confidently wrong (a
new stain, an unseen case) its uncertainty says little about where its errors are. So the regions
are chosen to *cover* the slides' tissue, uncertain tissue counting more (uncertainty-weighted
facility location, with information density). With the coverage

    F(S) = Σ_c w_c · max_{s ∈ S ∪ reviewed} sim(c, s),   w_c = u_c / max u

over every tissue region c of the slides, each next pick is the candidate s with the largest
``u_s · (F(S ∪ {s}) − F(S))``: uncertain itself, and standing for much uncertain tissue that no
pick (nor any reviewed region) stands for yet. What a pick stands for is worth nothing to the next,
so picks spread out over places and kinds of prediction; one big ambiguous blob gets one or two,
not k. A trained model is rarely sure of anything to the last bit, so every tissue region weighs
something and the picks cover the kinds of tissue there are; once nothing left is uncertain at all
(w = 0), the rest cover the tissue alike (w = u = 1) and are worth 0. ``sim`` mixes place and prediction:

    sim(c, s) = POSITION_WEIGHT · exp(−d² / 2(POSITION_SIGMA · side)²) + (1 − POSITION_WEIGHT) · exp(−δ² / 2 DESCRIPTOR_SIGMA²)

with ``d`` the distance between the two regions' corners (level-0 pixels; no place term across
slides) and ``δ`` the distance between their *descriptors*: per foreground class, the mean
predicted probability and the share of tissue pixels where that class wins (for a tumour model: how
tumour-like the prediction is there, so tissue called tumour, tissue called background and tissue
in between are different kinds, and picks go to both sides of the decision boundary). Over several
slides every slide with tissue gets one region before any gets a second (a confidently wrong,
stain-shifted slide scores low and would otherwise get no correction); after that, regions go
wherever they are worth most. ``score`` is a pick's worth ``u_s · ΔF / Σ_c w_c``, in [0, 1]; on one
slide the list comes sorted by it (a pick's worth never grows). ``uncertainty`` is ``u``.

The constants are round values chosen among a few (place weight 0.2–0.5, kernel widths 0.1–0.2
and 1–2 sides) by how many of the shipped student's wrong pixels k = 1, 3, 10 regions hold on
``bench finetune``'s unseen EBHI adenocarcinoma and CAMELYON slides (a proxy for what a correction
can teach; the benchmark reports it as ``roi_errors``). The differences between them were within
the spread of random draws: there, the student's errors are mostly confident misses of tumour, and
uncertainty is lower where it errs (correlation −0.58 over regions), so no ranking from its
prediction alone finds errors much better than chance; coverage keeps Review next from doing worse.

**Tissue only.** A pixel counts as tissue when its level-0 cache tile is a tissue tile whose
prediction is final (in both caches for ``disagreement``) *and* the slide's own tissue mask
(:func:`engine.slide.tissue.detect_tissue`, bright unsaturated glass and black padding are not
tissue) says so; a region needs ``min_tissue`` of its area to be tissue, so half-glass regions at
the tissue's edge are never proposed, however uncertain the model is on the glass. The tissue mask is
``tissue=`` when given, else detected once on the slide the cache was made from when that file is
there (remembered for a few slides), else the cache's tissue tiles alone decide.

Candidates lie on a lattice of quarter-region steps, inside the slide. The cache is read at a coarse
level (about 32 pixels across a region), one stored tile at a time, and summed into lattice cells,
so the whole map is never in memory (the lattice arrays are what is kept: a few numbers per cell).
Overlap is positive shared area: touching edges is fine. No torch here: the app ranks from caches it
already shows.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from engine.errors import CocoPathError
from engine.inference.cache import PredictionCache

if TYPE_CHECKING:
    from engine.slide.tissue import TissueMask

log = logging.getLogger(__name__)

#: Candidate regions start every ``region_px / STEPS`` level-0 pixels.
STEPS = 4
#: Cache pixels wanted across one lattice cell (so about STEPS·8 = 32 across a region).
CELL_PIXELS = 8
KINDS = ("entropy", "disagreement")
#: Share of place in the similarity of two regions; the rest is their prediction descriptors'.
POSITION_WEIGHT = 0.5
#: Width of the place kernel, in region sides (a neighbour one side away: 0.61).
POSITION_SIGMA = 1.0
#: Width of the descriptor kernel (probabilities and shares, in [0, 1]).
DESCRIPTOR_SIGMA = 0.1
#: At most this many candidates compete (beyond, the most uncertain of each block of the lattice)
#: and at most this many regions stand for the tissue to cover (evenly spaced): the similarity
#: matrix is at most CANDIDATES_MAX × GROUND_MAX float32 (16 MiB), whatever the slide's size.
CANDIDATES_MAX = 2048
GROUND_MAX = 2048
#: Slides whose tissue mask is remembered (path, size and modification time).
TISSUE_MEMORY = 4

Rect = tuple[int, int, int, int]


@dataclass(frozen=True)
class ReviewRegion:
    """A square region to review, in slide level-0 pixels. ``score``: its worth when it was picked,
    its uncertainty times what it added to the coverage of the slides' uncertain tissue (a share),
    in [0, 1] (higher: review first);
    ``uncertainty``: the mean entropy or disagreement over its tissue; ``tissue``: the share of its
    area that is tissue; ``descriptor``: per foreground class, mean probability and winning share."""

    x: int
    y: int
    w: int
    h: int
    score: float
    kind: str
    uncertainty: float | None = None
    tissue: float | None = None
    descriptor: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown review kind {self.kind!r}; valid: {', '.join(KINDS)}")

    @property
    def rect(self) -> Rect:
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


def descriptor_map(probs: np.ndarray) -> np.ndarray:
    """(h, w, C-1) uint8 → (h, w, 2·(C-1)) float32: each foreground class's probability, then
    whether that class wins the pixel (1 or 0)."""
    fg = probs.astype(np.float32) / 255.0
    bg = np.clip(1.0 - fg.sum(axis=-1, keepdims=True), 0.0, 1.0)
    wins = np.concatenate([bg, fg], axis=-1).argmax(axis=-1)
    won = (wins[..., None] == np.arange(1, fg.shape[-1] + 1)).astype(np.float32)
    return np.concatenate([fg, won], axis=-1)


# -- the slide's own tissue mask -----------------------------------------------------------------

_tissue_lock = threading.Lock()
_tissue_memory: OrderedDict[tuple[str, int, int], TissueMask | None] = OrderedDict()


def slide_tissue(cache: PredictionCache) -> TissueMask | None:
    """The tissue mask of the slide ``cache`` was made from (detected at about 1/16), or None when
    that file is not there or cannot be read. Remembered for the last few slides."""
    path = Path(cache.grid.slide)
    try:
        st = path.stat()
    except OSError:
        return None
    if not path.is_file() and not path.is_dir():
        return None
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    with _tissue_lock:
        if key in _tissue_memory:
            _tissue_memory.move_to_end(key)
            return _tissue_memory[key]
    found: TissueMask | None
    try:
        from engine.slide import open_slide
        from engine.slide.tissue import detect_tissue

        with open_slide(path) as slide:
            found = detect_tissue(slide)
    except Exception as exc:  # noqa: BLE001 - no mask: the cache's tissue tiles decide alone
        log.warning("review: no tissue mask of %s (%s: %s); tissue tiles decide", path,
                    type(exc).__name__, exc)
        found = None
    with _tissue_lock:
        _tissue_memory[key] = found
        while len(_tissue_memory) > TISSUE_MEMORY:
            _tissue_memory.popitem(last=False)
    return found


def _mask_at(tissue: TissueMask, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """(len(ys), len(xs)) bool: whether the tissue mask holds tissue at the level-0 points."""
    rows, cols = tissue.mask.shape
    gx = np.floor(xs / tissue.downsample).astype(np.int64)
    gy = np.floor(ys / tissue.downsample).astype(np.int64)
    okx, oky = (gx >= 0) & (gx < cols), (gy >= 0) & (gy < rows)
    out = tissue.mask[np.clip(gy, 0, rows - 1)[:, None], np.clip(gx, 0, cols - 1)[None, :]]
    return out.astype(bool) & oky[:, None] & okx[None, :]


# -- reading the cache into lattice cells ------------------------------------------------------


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


@dataclass
class _Cells:
    """Per lattice cell (ncy, ncx): summed uncertainty, tissue pixel count and descriptor sums (D
    channels); ``ds``: the downsample of the cache level they were read at."""

    sums: np.ndarray
    counts: np.ndarray
    desc: np.ndarray  # (ncy, ncx, D)
    ds: float


def _cell_sums(cache: PredictionCache, cell: float, ncx: int, ncy: int,
               other: PredictionCache | None, tissue: TissueMask | None) -> _Cells:
    level = cache.best_level_for_downsample(cell / CELL_PIXELS)
    ds = cache.level_downsample(level)
    usable = _usable_tiles(cache)
    other_usable = _usable_tiles(other) if other is not None else None
    dims = 2 * cache.channels
    size = ncy * ncx
    sums = np.zeros(size, np.float64)
    counts = np.zeros(size, np.float64)
    desc = np.zeros((dims, size), np.float64)
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
            if tissue is not None:
                ok &= _mask_at(tissue, xs, ys)
            probs = tile[:h, :w]
            if other is None:
                if not ok.any():
                    continue
                score = entropy_map(probs)
            else:
                assert other_usable is not None
                ok &= _usable_at(other, other_usable, xs, ys)
                if not ok.any():
                    continue
                score = disagreement_map(probs, _read_other(other, xs, ys, ds))
            cx, cy = (xs // cell).astype(np.int64), (ys // cell).astype(np.int64)
            inside = (cy[:, None] < ncy) & (cx[None, :] < ncx) & ok
            if not inside.any():
                continue
            idx = (cy[:, None] * ncx + cx[None, :])[inside]
            sums += np.bincount(idx, weights=score[inside], minlength=size)
            counts += np.bincount(idx, minlength=size)
            d = descriptor_map(probs)[inside]
            for k in range(dims):
                desc[k] += np.bincount(idx, weights=d[:, k], minlength=size)
    return _Cells(sums.reshape(ncy, ncx), counts.reshape(ncy, ncx),
                  np.moveaxis(desc.reshape(dims, ncy, ncx), 0, -1), ds)


def _window_sum(a: np.ndarray, k: int) -> np.ndarray:
    """Sum of every k×k window of ``a`` ((H−k+1, W−k+1, …), H, W ≥ k), over the first two axes."""
    s = np.zeros((a.shape[0] + 1, a.shape[1] + 1) + a.shape[2:], np.float64)
    s[1:, 1:] = a.cumsum(0).cumsum(1)
    return s[k:, k:] - s[:-k, k:] - s[k:, :-k] + s[:-k, :-k]


def _overlapping(starts: np.ndarray, size: int, lo: float, length: float) -> np.ndarray:
    """Which candidate spans [start, start + size) share positive length with [lo, lo + length)."""
    return (starts < lo + length) & (starts + size > lo)


# -- candidates and the greedy choice ------------------------------------------------------------


@dataclass
class _Slide:
    """One slide's lattice of candidates: corners ``xs`` (nx), ``ys`` (ny); per candidate (ny, nx)
    the uncertainty, tissue share and descriptor (…, D); ``tissue``: enough tissue to count;
    ``open``: may be proposed (tissue, and no overlap with a reviewed region)."""

    kind: str
    region_px: int
    xs: np.ndarray
    ys: np.ndarray
    u: np.ndarray
    fraction: np.ndarray
    desc: np.ndarray
    tissue: np.ndarray
    open: np.ndarray
    reviewed: list[tuple[int, int]]  # lattice (j, i) standing for the reviewed regions
    ds: float


def _candidates(cache: PredictionCache, region_px: int, exclude: Sequence[Rect],
                other: PredictionCache | None, min_tissue: float,
                tissue: TissueMask | None) -> _Slide | None:
    width, height = cache.grid.slide_size
    if other is not None and tuple(other.grid.slide_size) != (width, height):
        raise CocoPathError(f"the two predictions are of different slides ({width}×{height} and "
                            f"{other.grid.slide_size[0]}×{other.grid.slide_size[1]})")
    kind = "entropy" if other is None else "disagreement"
    cell = region_px / STEPS
    # candidate (i, j) covers cells i … i+STEPS-1, i.e. level-0 [i·cell, i·cell + region_px): inside
    if width < region_px or height < region_px:
        return None
    nx, ny = math.floor((width - region_px) / cell) + 1, math.floor((height - region_px) / cell) + 1
    if nx < 1 or ny < 1:
        return None
    ncx, ncy = nx + STEPS - 1, ny + STEPS - 1
    cells = _cell_sums(cache, cell, ncx, ncy, other, tissue)
    tissue_px = _window_sum(cells.counts, STEPS)
    fraction = tissue_px * cells.ds * cells.ds / float(region_px * region_px)
    with np.errstate(divide="ignore", invalid="ignore"):
        u = np.where(tissue_px > 0, _window_sum(cells.sums, STEPS) / tissue_px, 0.0)
        desc = np.where(tissue_px[..., None] > 0,
                        _window_sum(cells.desc, STEPS) / tissue_px[..., None], 0.0)
    ds = cells.ds
    del cells
    enough = (fraction >= min_tissue - 1e-9) & (tissue_px > 0)
    is_open = enough.copy()
    xs = np.round(np.arange(nx) * cell).astype(np.int64)  # candidate corners, level-0 pixels
    ys = np.round(np.arange(ny) * cell).astype(np.int64)
    reviewed: list[tuple[int, int]] = []
    for x, y, w, h in exclude:
        if w > 0 and h > 0:
            is_open[np.ix_(_overlapping(ys, region_px, y, h), _overlapping(xs, region_px, x, w))] = False
            reviewed += _standing_for(x, y, w, h, cell, nx, ny, region_px)
    return _Slide(kind, region_px, xs, ys, np.clip(u, 0.0, 1.0).astype(np.float32),
                  fraction.astype(np.float32), desc.astype(np.float32), enough, is_open,
                  reviewed, ds)


def _standing_for(x: float, y: float, w: float, h: float, cell: float, nx: int, ny: int,
                  region_px: int, most: int = 64) -> list[tuple[int, int]]:
    """Lattice candidates (j, i) standing for a reviewed rectangle: one per region side across it
    (at least its centre), at most ``most``."""
    def along(lo: float, length: float, count: int) -> list[int]:
        k = max(1, min(8, round(length / region_px)))
        centres = [lo + length * (t + 0.5) / k for t in range(k)]
        return sorted({int(min(count - 1, max(0, round((c - region_px / 2) / cell)))) for c in centres})

    out = [(j, i) for j in along(y, h, ny) for i in along(x, w, nx)]
    return out[:most]


def _ground(slides: Sequence[_Slide | None]) -> list[tuple[int, int, int]]:
    """(slide, j, i) of the tissue regions to cover: all of them, or GROUND_MAX evenly spaced in
    slide then row-major order (found by counting, so a huge lattice is never listed)."""
    counts = [int(sl.tissue.sum()) if sl is not None else 0 for sl in slides]
    total = sum(counts)
    if total <= GROUND_MAX:
        wanted = np.arange(total)
    else:
        wanted = np.unique(np.linspace(0, total - 1, GROUND_MAX).round().astype(np.int64))
    out: list[tuple[int, int, int]] = []
    start = 0
    for s, (sl, n) in enumerate(zip(slides, counts)):
        mine = wanted[(wanted >= start) & (wanted < start + n)] - start
        if sl is not None and len(mine):
            flat = np.flatnonzero(sl.tissue)[mine]
            out += [(s, int(f // sl.tissue.shape[1]), int(f % sl.tissue.shape[1])) for f in flat]
        start += n
    return out


def _reduce(sl: _Slide, budget: int) -> np.ndarray:
    """(m, 2) lattice (j, i) of the open candidates, thinned to at most ``budget``: the most
    uncertain of each block of b×b lattice steps, b doubling from 2 until they fit."""
    if int(sl.open.sum()) <= budget:
        return np.argwhere(sl.open)
    u = np.where(sl.open, sl.u, -1.0).astype(np.float32)
    ny, nx = u.shape
    b = 2
    while True:
        by, bx = math.ceil(ny / b), math.ceil(nx / b)
        pad = np.full((by * b, bx * b), -1.0, np.float32)
        pad[:ny, :nx] = u
        blocks = pad.reshape(by, b, bx, b).transpose(0, 2, 1, 3).reshape(by, bx, b * b)
        arg = blocks.argmax(axis=-1)  # ties: the block's first, row-major
        best = np.take_along_axis(blocks, arg[..., None], axis=-1)[..., 0]
        bj, bi = np.nonzero(best >= 0)
        if len(bj) <= budget:
            a = arg[bj, bi]
            return np.stack([bj * b + a // b, bi * b + a % b], axis=1)
        b *= 2


def _similarity(a: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
                b: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
                sides: np.ndarray, chunk: int = 256) -> np.ndarray:
    """(len(a), len(b)) float32 similarity of regions given as (slide, x, y, descriptor) arrays;
    ``sides`` (per slide) is each slide's region side. Computed ``chunk`` rows at a time, so the
    temporaries stay small beside the result."""
    sa, xa, ya, da = a
    sb, xb, yb, db = b
    out = np.empty((len(sa), len(sb)), np.float32)
    s2 = 2 * (POSITION_SIGMA * sides.astype(np.float64)) ** 2
    for lo in range(0, len(sa), chunk):
        hi = min(len(sa), lo + chunk)
        dd = ((da[lo:hi, None, :] - db[None, :, :]) ** 2).sum(axis=-1)
        sim = (1.0 - POSITION_WEIGHT) * np.exp(-dd / (2 * DESCRIPTOR_SIGMA ** 2))
        d2 = (xa[lo:hi, None] - xb[None, :]) ** 2 + (ya[lo:hi, None] - yb[None, :]) ** 2
        same = sa[lo:hi, None] == sb[None, :]
        sim += np.where(same, POSITION_WEIGHT * np.exp(-d2 / s2[sa[lo:hi]][:, None]), 0.0)
        out[lo:hi] = sim
    return out


def _points(slides: Sequence[_Slide | None], picks: Sequence[tuple[int, int, int]]
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(slide, x, y, descriptor) arrays of lattice points (slide, j, i)."""
    dims = next(sl.desc.shape[-1] for sl in slides if sl is not None)
    s = np.array([p[0] for p in picks], np.int64)
    x = np.array([slides[p[0]].xs[p[2]] for p in picks], np.float64)  # type: ignore[union-attr]
    y = np.array([slides[p[0]].ys[p[1]] for p in picks], np.float64)  # type: ignore[union-attr]
    d = np.array([slides[p[0]].desc[p[1], p[2]] for p in picks],  # type: ignore[union-attr]
                 np.float64).reshape(len(picks), dims)
    return s, x, y, d


def _gains(sim: np.ndarray, covered: np.ndarray, weight: np.ndarray, allowed: np.ndarray,
           own: np.ndarray) -> np.ndarray:
    """Each candidate's worth: its own uncertainty ``own`` times what it would add to the weighted
    coverage (−inf where not ``allowed``)."""
    gain = np.full(len(sim), -np.inf)
    for a in range(0, len(sim), 256):  # in chunks: no second full-size matrix
        rows = np.nonzero(allowed[a:a + 256])[0] + a
        if len(rows):
            gain[rows] = own[rows] * (np.maximum(sim[rows] - covered[None, :], 0.0) @ weight)
    return gain


def _check(region_px: int, min_tissue: float) -> int:
    region_px = int(region_px)
    if region_px < STEPS:
        raise CocoPathError(f"a review region must be at least {STEPS} pixels wide, not {region_px}")
    if not 0.0 <= min_tissue <= 1.0:
        raise CocoPathError(f"min_tissue must be a fraction between 0 and 1, not {min_tissue}")
    return region_px


def rank_slides(caches: Sequence[PredictionCache], region_px: int, n: int = 10,
                exclude: Sequence[Sequence[Rect]] | None = None,
                others: Sequence[PredictionCache | None] | None = None, min_tissue: float = 0.5,
                tissues: Sequence[TissueMask | None] | None = None, find_tissue: bool = True
                ) -> list[tuple[int, ReviewRegion]]:
    """The ``n`` regions of ``region_px``² level-0 pixels to review next over several slides, in
    order: (slide index, region); every slide with tissue gets one before any gets a second.
    ``exclude[i]``, ``others[i]`` and ``tissues[i]`` are :func:`rank_regions`' ``exclude``,
    ``other`` and ``tissue`` for slide i (the same kind, entropy or disagreement, for all)."""
    region_px = _check(region_px, min_tissue)
    if n <= 0 or not caches:
        return []
    count = len(caches)
    for name, seq in (("exclude", exclude), ("others", others), ("tissues", tissues)):
        if seq is not None and len(seq) != count:
            raise CocoPathError(f"{name} has {len(seq)} entries for {count} slides")
    slides: list[_Slide | None] = []
    for s, cache in enumerate(caches):
        mask = tissues[s] if tissues is not None else None
        if mask is None and find_tissue:
            mask = slide_tissue(cache)
        slides.append(_candidates(cache, region_px, exclude[s] if exclude is not None else (),
                                  others[s] if others is not None else None, min_tissue, mask))
    live = [s for s, sl in enumerate(slides) if sl is not None and sl.open.any()]
    if not live:
        return []
    # candidates (what may be proposed) and ground (the tissue to cover), both (slide, j, i)
    budget = max(1, CANDIDATES_MAX // len(live))
    cand = [(s, int(j), int(i)) for s in live
            for j, i in _reduce(slides[s], budget)]  # type: ignore[arg-type]
    ground_all = _ground(slides)
    u = np.array([slides[s].u[j, i] for s, j, i in ground_all], np.float64)  # type: ignore[union-attr]
    top = float(u.max()) if len(u) else 0.0
    weight = (u / top if top > 0 else np.ones_like(u)).astype(np.float32)
    flat = np.ones_like(weight)  # once nothing uncertain is left to cover: cover the tissue
    sides = np.full(count, region_px, np.int64)
    ground = _points(slides, ground_all)
    sim = _similarity(_points(slides, cand), ground, sides)
    covered = np.zeros(len(ground_all), np.float32)
    reviewed = [(s, j, i) for s, sl in enumerate(slides) if sl is not None for j, i in sl.reviewed]
    if reviewed:
        covered = _similarity(_points(slides, reviewed), ground, sides).max(axis=0)
    available = np.ones(len(cand), bool)
    cs = np.array([c[0] for c in cand], np.int64)
    cx = np.array([slides[s].xs[i] for s, _, i in cand], np.int64)  # type: ignore[union-attr]
    cy = np.array([slides[s].ys[j] for s, j, _ in cand], np.int64)  # type: ignore[union-attr]
    own = np.array([slides[s].u[j, i] for s, j, i in cand], np.float64)  # type: ignore[union-attr]
    served: set[int] = set()
    out: list[tuple[int, ReviewRegion]] = []
    while len(out) < n and available.any():
        allowed = available.copy()
        first_turn = [s for s in live if s not in served]
        if first_turn and any(allowed[cs == s].any() for s in first_turn):
            allowed &= np.isin(cs, first_turn)  # each slide's first region before any second
        gain = _gains(sim, covered, weight, allowed, own)
        total = float(weight.sum())
        worth = float(gain.max()) / total if total > 0 else 0.0
        if not worth > 1e-9:  # nothing uncertain left to cover: cover the tissue (worth 0)
            gain, worth = _gains(sim, covered, flat, allowed, np.ones(len(cand))), 0.0
        b = int(np.argmax(gain))  # ties: the first slide, then top, then left
        s, j, i = cand[b]
        sl = slides[s]
        assert sl is not None
        out.append((s, ReviewRegion(int(sl.xs[i]), int(sl.ys[j]), region_px, region_px,
                                    min(1.0, max(0.0, worth)), sl.kind, float(sl.u[j, i]),
                                    float(min(1.0, sl.fraction[j, i])),
                                    tuple(float(v) for v in sl.desc[j, i]))))
        served.add(s)
        np.maximum(covered, sim[b], out=covered)
        available &= ~((cs == s) & (np.abs(cx - sl.xs[i]) < region_px)
                       & (np.abs(cy - sl.ys[j]) < region_px))
    for s, sl in enumerate(slides):
        if sl is not None:
            log.info("review: slide %d: %d region(s) of %d px by %s and coverage (cache level "
                     "downsample %.3g)", s, sum(1 for t, _ in out if t == s), region_px, sl.kind,
                     sl.ds)
    return out


def rank_regions(cache: PredictionCache, region_px: int, n: int = 10,
                 exclude: Sequence[Rect] = (), other: PredictionCache | None = None,
                 min_tissue: float = 0.5, tissue: TissueMask | None = None,
                 find_tissue: bool = True) -> list[ReviewRegion]:
    """The ``n`` regions of ``region_px``² level-0 pixels to review next on one slide, in order.

    ``exclude`` holds (x, y, w, h) level-0 rectangles already reviewed (correction ROIs): a region
    sharing area with one is never proposed, and what they represent counts as covered. ``other``, a
    second cache of the same slide (a teacher's prediction, or another model version), switches the
    uncertainty from entropy to disagreement. ``tissue``: the slide's tissue mask (else detected on
    the cache's slide when ``find_tissue`` and the file is there). Fewer than ``n`` come back when
    the slide has fewer non-overlapping regions with enough tissue.
    """
    return [r for _, r in rank_slides([cache], region_px, n, [tuple(exclude)], [other], min_tissue,
                                      [tissue], find_tissue)]

"""Masks to polygons and areas: what the GeoJSON export and the summary report.

:func:`mask_to_polygons` turns a boolean mask into valid shapely polygons in slide level-0 pixels:
each row's runs become rectangles, equal runs on consecutive rows merge, the union gives polygons
with their holes, then they are simplified (tolerance in level-0 pixels) and islands smaller than an
area threshold are dropped. :func:`measure` counts class pixels tile by tile over the prediction
cache (never the whole map in memory), inside the tissue mask.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import shapely
from shapely.geometry import MultiPolygon, Polygon

from engine.annotations.model import polygonal
from engine.inference.cache import PredictionCache
from engine.slide.tissue import TissueMask


def labels_from_probs(probs: np.ndarray) -> np.ndarray:
    """(h, w, C - 1) uint8 foreground probabilities → (h, w) uint8 labels (0 = background).

    The background's probability is what the foreground classes leave; ties go to background.
    """
    bg = 255 - probs.astype(np.int16).sum(axis=-1, dtype=np.int16)
    stacked = np.concatenate([bg[..., None], probs.astype(np.int16)], axis=-1)
    return stacked.argmax(axis=-1).astype(np.uint8)


def mask_to_polygons(mask: np.ndarray, downsample: float = 1.0, origin: tuple[float, float] = (0, 0),
                     tolerance: float = 0.0, min_area: float = 0.0) -> list[Polygon]:
    """Polygons (level-0 pixels) of a bool mask whose pixel (i, j) covers level-0 square
    [x0 + j·d, x0 + (j+1)·d) × [y0 + i·d, …). Simplified at ``tolerance``, islands under
    ``min_area`` (level-0 px²) dropped; every polygon is valid, holes are kept."""
    m = np.asarray(mask, bool)
    if not m.any():
        return []
    h, w = m.shape
    pad = np.zeros((h, w + 2), np.int8)
    pad[:, 1:-1] = m
    d = np.diff(pad, axis=1)
    rs, xs = np.nonzero(d == 1)
    re, xe = np.nonzero(d == -1)  # same row order as the starts: runs alternate start, end
    order = np.lexsort((rs, xe, xs))  # group equal runs, consecutive rows next to each other
    rs, xs, xe = rs[order], xs[order], xe[order]
    new = np.ones(len(rs), bool)
    new[1:] = (xs[1:] != xs[:-1]) | (xe[1:] != xe[:-1]) | (rs[1:] != rs[:-1] + 1)
    first = np.nonzero(new)[0]
    last = np.append(first[1:], len(rs)) - 1
    x0, y0 = origin
    boxes = shapely.box(x0 + xs[first] * downsample, y0 + rs[first] * downsample,
                        x0 + xe[first] * downsample, y0 + (rs[last] + 1) * downsample)
    union = shapely.unary_union(boxes)
    if tolerance > 0:
        union = shapely.simplify(union, tolerance, preserve_topology=True)
    geom = polygonal(union)
    parts = list(geom.geoms) if isinstance(geom, MultiPolygon) else [geom]
    return [p for p in parts if not p.is_empty and p.area >= min_area]


@dataclass(frozen=True)
class ClassArea:
    name: str
    pixels: int
    area_px: float  # slide level-0 px²
    area_um2: float | None
    fraction_of_tissue: float | None


@dataclass(frozen=True)
class Measurements:
    tissue_area_px: float
    tissue_area_um2: float | None
    classes: tuple[ClassArea, ...]

    def as_dict(self) -> dict:
        mm = (lambda um2: None if um2 is None else um2 / 1e6)
        return {"tissue_area_px": self.tissue_area_px, "tissue_area_um2": self.tissue_area_um2,
                "tissue_area_mm2": mm(self.tissue_area_um2),
                "classes": {c.name: {"pixels": c.pixels, "area_px": c.area_px, "area_um2": c.area_um2,
                                     "area_mm2": mm(c.area_um2),
                                     "fraction_of_tissue": c.fraction_of_tissue}
                            for c in self.classes}}


def _tissue_in_tile(cache: PredictionCache, tissue: TissueMask, col: int, row: int) -> np.ndarray:
    """The tissue mask sampled at the centres of a level-0 tile's pixels."""
    t, d = cache.tile, cache.grid.downsample
    idx = ((np.arange(t) + col * t + 0.5) * d / tissue.downsample).astype(np.int64)
    idy = ((np.arange(t) + row * t + 0.5) * d / tissue.downsample).astype(np.int64)
    mh, mw = tissue.mask.shape
    ok = (idy[:, None] < mh) & (idx[None, :] < mw)
    return tissue.mask[np.minimum(idy, mh - 1)][:, np.minimum(idx, mw - 1)] & ok


def measure(cache: PredictionCache, tissue: TissueMask | None, class_names: Sequence[str],
            mpp: tuple[float, float] | None) -> Measurements:
    """Class areas (inside the tissue mask when given) over the final tiles, and the tissue area."""
    counts = np.zeros(len(class_names) + 1, np.int64)
    w, h = cache.levels[0]
    t = cache.tile
    for col, row in sorted(cache.done_tiles()):
        probs = cache.read_tile(0, col, row)
        if probs is None:
            continue
        lab = labels_from_probs(probs)[:max(0, h - row * t), :max(0, w - col * t)]
        if tissue is not None:
            lab = np.where(_tissue_in_tile(cache, tissue, col, row)[:lab.shape[0], :lab.shape[1]], lab, 0)
        counts += np.bincount(lab.ravel(), minlength=len(counts))[:len(counts)]
    px = cache.grid.downsample ** 2
    um2_per_px0 = mpp[0] * mpp[1] if mpp else None
    if tissue is not None:
        tissue_px = float(tissue.mask.sum()) * tissue.downsample ** 2
    else:
        tissue_px = float(cache.grid.slide_size[0] * cache.grid.slide_size[1])
    classes = []
    for i, name in enumerate(class_names, start=1):
        a = float(counts[i]) * px
        classes.append(ClassArea(name, int(counts[i]), a, a * um2_per_px0 if um2_per_px0 else None,
                                 a / tissue_px if tissue_px else None))
    return Measurements(tissue_px, tissue_px * um2_per_px0 if um2_per_px0 else None, tuple(classes))


def vector_level(cache: PredictionCache, max_pixels: int = 1 << 24, tolerance: float = 0.0) -> int:
    """The finest cache level whose whole mask fits in ``max_pixels``, coarsened while its pixels
    stay under half the simplification ``tolerance`` (level-0 px): finer detail would be dropped."""
    last = cache.level_count - 1
    k = next((k for k in range(cache.level_count) if math.prod(cache.levels[k]) <= max_pixels), last)
    while k < last and cache.level_downsample(k + 1) <= tolerance / 2:
        k += 1
    return k

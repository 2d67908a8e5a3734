"""The model's predicted regions as shapes a pathologist can accept into annotations.

Two questions, both answered from the prediction cache (never the whole map in memory) as valid
shapely geometry in slide level-0 pixels, holes kept:

* :func:`prediction_in_region`: the predicted polygons of every foreground class inside a region
  (the view, a correction ROI), cut at its outline. The cache level read is the finest one whose
  pixels over the region's bounding box fit in ``max_pixels`` (coarsened while its pixels stay
  under half the simplification tolerance, as for the whole-slide GeoJSON).
* :func:`prediction_component_at`: the connected predicted region (4-connected pixels of one class)
  under a point: a window around the point grows until the component no longer touches its edge,
  at the finest level where it fits in ``max_pixels``.

Labels are the cache's most likely class per pixel (:func:`~engine.inference.vectorize.labels_from_probs`),
exactly what the overlay draws in mask mode.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import shapely
from shapely.geometry import MultiPolygon, Polygon
from shapely.geometry.base import BaseGeometry

from engine.annotations.model import polygonal
from engine.inference.cache import PredictionCache
from engine.inference.vectorize import labels_from_probs, mask_to_polygons

#: Polygon simplification and smallest island kept when predictions become annotations (as the
#: CLI's GeoJSON export: ``InferOptions``).
SIMPLIFY_UM = 1.0
MIN_AREA_UM2 = 200.0


@dataclass(frozen=True)
class RegionPrediction:
    """Predicted polygons in a region: per foreground class (cache order), level-0 pixels."""

    level: int  # cache level read
    downsample: float  # slide level-0 pixels per pixel of that level
    polygons: tuple[tuple[Polygon, ...], ...]
    pending: int  # tiles of tissue in the region the model has not predicted yet

    @property
    def count(self) -> int:
        return sum(len(p) for p in self.polygons)


@dataclass(frozen=True)
class PredictedComponent:
    """The connected predicted region under a point."""

    class_index: int  # among the foreground classes (0 = the cache's first channel)
    geometry: Polygon | MultiPolygon  # level-0 pixels; several parts only if simplification split it
    level: int
    downsample: float
    pixels: int  # its pixel count at ``level`` (area = pixels × downsample², before simplifying)


def vector_tolerances(mpp: tuple[float, float] | None, simplify_um: float = SIMPLIFY_UM,
                      min_area_um2: float = MIN_AREA_UM2) -> tuple[float, float]:
    """(simplification tolerance, smallest island) in level-0 pixels and pixels² for a slide of
    ``mpp`` µm/px; on a slide without µm/px the numbers are taken as pixels."""
    if not mpp:
        return simplify_um, min_area_um2
    return simplify_um / mpp[0], min_area_um2 / (mpp[0] * mpp[1])


def pending_tiles(cache: PredictionCache, x0: float, y0: float, x1: float, y1: float) -> int:
    """Tiles of tissue meeting the level-0 rectangle that are not predicted yet."""
    if x1 <= x0 or y1 <= y0:
        return 0
    done = cache.done_tiles()
    return sum(1 for c, r in cache.grid.tiles_in(x0, y0, x1 - x0, y1 - y0)
               if cache.tissue[r, c] and (c, r) not in done)


def _finest_level(cache: PredictionCache, tolerance: float) -> int:
    """The first level worth reading: coarser ones while their pixels stay under tolerance / 2."""
    k = 0
    while k < cache.level_count - 1 and cache.level_downsample(k + 1) <= tolerance / 2:
        k += 1
    return k


def _pixel_window(cache: PredictionCache, level: int,
                  bounds: tuple[float, float, float, float]) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) pixels of ``level`` covering level-0 ``bounds``, cut to the level."""
    ds = cache.level_downsample(level)
    lw, lh = cache.levels[level]
    bx0, by0, bx1, by1 = bounds
    return (max(0, math.floor(bx0 / ds)), max(0, math.floor(by0 / ds)),
            min(lw, math.ceil(bx1 / ds)), min(lh, math.ceil(by1 / ds)))


def prediction_in_region(cache: PredictionCache, region: BaseGeometry, tolerance: float = 0.0,
                         min_area: float = 0.0, max_pixels: int = 1 << 24) -> RegionPrediction:
    """The predicted polygons of each foreground class inside ``region`` (level-0 pixels).

    Each polygon is a connected predicted region cut at the region's outline, simplified at
    ``tolerance`` (level-0 px; 0 keeps the pixel outline, whose area is exactly the pixel count ×
    the pixel area), pieces under ``min_area`` (px²) dropped; all valid, holes kept.
    """
    region = polygonal(region)
    empty = tuple(() for _ in range(cache.channels))
    if region.is_empty:
        return RegionPrediction(0, cache.level_downsample(0), empty, 0)
    bounds = region.bounds
    level = _finest_level(cache, tolerance)
    while level < cache.level_count - 1:
        x0, y0, x1, y1 = _pixel_window(cache, level, bounds)
        if (x1 - x0) * (y1 - y0) <= max_pixels:
            break
        level += 1
    ds = cache.level_downsample(level)
    x0, y0, x1, y1 = _pixel_window(cache, level, bounds)
    pending = pending_tiles(cache, *bounds)
    if x1 <= x0 or y1 <= y0:
        return RegionPrediction(level, ds, empty, pending)
    labels = labels_from_probs(cache.read_region(level, x0 * ds, y0 * ds, x1 - x0, y1 - y0))
    is_box = region.equals(shapely.box(*bounds))
    out = []
    for k in range(cache.channels):
        polys = mask_to_polygons(labels == k + 1, ds, (x0 * ds, y0 * ds), tolerance, 0.0)
        kept: list[Polygon] = []
        for p in polys:
            cut = p if is_box and region.contains(p) else polygonal(p.intersection(region))
            parts = cut.geoms if isinstance(cut, MultiPolygon) else [cut]
            kept += [q for q in parts if not q.is_empty and q.area >= max(min_area, 1e-9)]
        out.append(tuple(kept))
    return RegionPrediction(level, ds, tuple(out), pending)


def _component(labels: np.ndarray, cls: int, at: tuple[int, int]) -> np.ndarray | None:
    """The 4-connected pixels of class ``cls`` holding pixel ``at`` (row, col), or of a pixel of
    that class next to it (a coarser level may have averaged the very pixel away)."""
    from scipy import ndimage

    r, c = at
    h, w = labels.shape
    seeds = [(r, c)] + [(r + dr, c + dc) for dr in (-1, 0, 1) for dc in (-1, 0, 1) if dr or dc]
    seed = next(((i, j) for i, j in seeds if 0 <= i < h and 0 <= j < w and labels[i, j] == cls),
                None)
    if seed is None:
        return None
    comp, _ = ndimage.label(labels == cls)
    return comp == comp[seed]


def prediction_component_at(cache: PredictionCache, x: float, y: float, tolerance: float = 0.0,
                            max_pixels: int = 1 << 24, start: int = 256) -> PredictedComponent | None:
    """The connected predicted region under level-0 (x, y), or None where the model predicts
    background there (or has not predicted it yet). ``tolerance`` as in :func:`prediction_in_region`.
    """
    cls: int | None = None
    for level in range(_finest_level(cache, tolerance), cache.level_count):
        ds = cache.level_downsample(level)
        lw, lh = cache.levels[level]
        px, py = math.floor(x / ds), math.floor(y / ds)
        if not (0 <= px < lw and 0 <= py < lh):
            return None
        half = start
        while True:
            x0, y0 = max(0, px - half), max(0, py - half)
            x1, y1 = min(lw, px + half + 1), min(lh, py + half + 1)
            if (x1 - x0) * (y1 - y0) > max_pixels and level < cache.level_count - 1:
                break  # too large here: the next, coarser level
            labels = labels_from_probs(cache.read_region(level, x0 * ds, y0 * ds, x1 - x0, y1 - y0))
            if cls is None:
                cls = int(labels[py - y0, px - x0])
                if cls == 0:
                    return None
            mask = _component(labels, cls, (py - y0, px - x0))
            if mask is None:
                return None
            reaches = ((y0 > 0 and mask[0].any()) or (y1 < lh and mask[-1].any())
                       or (x0 > 0 and mask[:, 0].any()) or (x1 < lw and mask[:, -1].any()))
            if not reaches:
                polys = mask_to_polygons(mask, ds, (x0 * ds, y0 * ds), tolerance, 0.0)
                geom = polygonal(shapely.union_all(polys))
                if geom.is_empty:
                    return None
                return PredictedComponent(cls - 1, geom, level, ds, int(mask.sum()))
            half *= 2
    return None

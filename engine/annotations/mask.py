"""Label masks: rasterise annotations, and export them as a pyramidal TIFF or a PNG.

Rasterisation is an exact even-odd scanline fill at pixel centres: the pixel in column ``j`` and row
``i`` of a mask at downsample ``d`` is labelled when the level-0 point ((j + ½)·d, (i + ½)·d) lies
inside the geometry, so holes stay holes and MultiPolygons fill every part. Annotations are painted
in the order given (later ones win where they overlap). Each class gets the label of its position in
the project's class list (1, 2, …); 0 is background. Correction ROIs and unclassified regions are
not part of a label mask (the result's warnings say how many were left out).

The TIFF is tiled, deflate-compressed, one page per level (downsample ×2 each), with resolution
tags, so OpenSlide reads it as a generic tiled TIFF; written tile by tile, any size fits memory.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import shapely
from shapely.geometry import MultiPolygon, Polygon, box

from engine.annotations.errors import AnnotationError
from engine.annotations.model import Annotation, AnnotationClass, ExportResult
from engine.annotations.writing import atomic_write

log = logging.getLogger(__name__)

FORMAT = "label mask"
MAX_PNG_PIXELS = 1 << 28
TILE = 512


def _edges(geometry: Polygon | MultiPolygon) -> np.ndarray:
    """Every ring segment as rows (x0, y0, x1, y1)."""
    polys = geometry.geoms if isinstance(geometry, MultiPolygon) else [geometry]
    segs = []
    for p in polys:
        for r in (p.exterior, *p.interiors):
            c = np.asarray(r.coords, dtype=np.float64)[:, :2]
            segs.append(np.hstack([c[:-1], c[1:]]))
    return np.vstack(segs) if segs else np.empty((0, 4))


def fill(geometry: Polygon | MultiPolygon, x0: float, y0: float, width: int, height: int,
         downsample: float = 1.0) -> np.ndarray:
    """A (height, width) bool mask of ``geometry`` over the window whose top-left level-0 corner is
    (x0, y0), at ``downsample`` level-0 pixels per mask pixel (even-odd rule at pixel centres)."""
    out = np.zeros((height, width), dtype=bool)
    e = _edges(geometry)
    if not len(e) or width <= 0 or height <= 0:
        return out
    u0, v0 = (e[:, 0] - x0) / downsample - 0.5, (e[:, 1] - y0) / downsample - 0.5
    u1, v1 = (e[:, 2] - x0) / downsample - 0.5, (e[:, 3] - y0) / downsample - 0.5
    vmin, vmax = np.minimum(v0, v1), np.maximum(v0, v1)
    first = np.maximum(np.ceil(vmin), 0).astype(np.int64)  # rows r with vmin <= r < vmax
    last = np.minimum(np.ceil(vmax) - 1, height - 1).astype(np.int64)
    keep = (last >= first) & (v0 != v1)
    if not keep.any():
        return out
    first, last = first[keep], last[keep]
    u0, v0, u1, v1 = u0[keep], v0[keep], u1[keep], v1[keep]
    counts = last - first + 1
    idx = np.repeat(np.arange(len(first)), counts)
    rows = first[idx] + (np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts))
    us = u0[idx] + (rows - v0[idx]) * (u1[idx] - u0[idx]) / (v1[idx] - v0[idx])
    order = np.lexsort((us, rows))
    rows, us = rows[order], us[order]
    if len(rows) % 2:  # cannot happen for closed rings; guard against float oddities
        log.debug("odd number of crossings; dropping the last")
        rows, us = rows[:-1], us[:-1]
    r = rows[0::2]
    start = np.clip(np.ceil(us[0::2]), 0, width).astype(np.int64)
    stop = np.clip(np.ceil(us[1::2]), 0, width).astype(np.int64)
    diff = np.zeros((height, width + 1), dtype=np.int32)
    np.add.at(diff, (r, start), 1)
    np.add.at(diff, (r, stop), -1)
    return np.cumsum(diff[:, :width], axis=1) > 0


def label_table(classes: Sequence[AnnotationClass]) -> dict[str, int]:
    """Class name → label value (1-based position in the project's class list)."""
    if len(classes) > 255:
        raise AnnotationError(f"a label mask holds at most 255 classes, the project has "
                              f"{len(classes)}")
    return {c.name: i + 1 for i, c in enumerate(classes)}


def _labelled(annotations: Sequence[Annotation], labels: dict[str, int]
              ) -> tuple[list[tuple[Annotation, int]], list[str]]:
    items = [(a, labels[a.class_name]) for a in annotations
             if not a.is_roi and a.class_name is not None and a.class_name in labels]
    rois = sum(a.is_roi for a in annotations)
    unclassified = sum(1 for a in annotations if not a.is_roi and a.class_name is None)
    warnings = ["a label mask keeps only each pixel's class: ids, names, sources, authors, times "
                "and locks are not stored, and where annotations overlap the later one wins"]
    if rois:
        warnings.append(f"{rois} correction ROI(s) are not part of a label mask")
    if unclassified:
        warnings.append(f"{unclassified} unclassified annotation(s) left out of the label mask")
    return items, warnings


def rasterize(items: Sequence[tuple[Annotation, int]], x0: float, y0: float, width: int,
              height: int, downsample: float = 1.0, tree: shapely.STRtree | None = None
              ) -> np.ndarray:
    """A uint8 label image of the window (level-0 origin (x0, y0), size in mask pixels)."""
    out = np.zeros((height, width), dtype=np.uint8)
    if tree is not None:
        hits = tree.query(box(x0, y0, x0 + width * downsample, y0 + height * downsample))
        chosen = [items[i] for i in np.sort(hits)]
    else:
        chosen = list(items)
    for ann, label in chosen:
        bx0, by0, bx1, by1 = ann.geometry.bounds
        c0 = max(int(math.floor((bx0 - x0) / downsample - 0.5)), 0)
        r0 = max(int(math.floor((by0 - y0) / downsample - 0.5)), 0)
        c1 = min(int(math.ceil((bx1 - x0) / downsample + 0.5)), width)
        r1 = min(int(math.ceil((by1 - y0) / downsample + 0.5)), height)
        if c1 <= c0 or r1 <= r0:
            continue
        m = fill(ann.geometry, x0 + c0 * downsample, y0 + r0 * downsample, c1 - c0, r1 - r0,
                 downsample)
        out[r0:r1, c0:c1][m] = label
    return out


def _check_downsample(downsample: float) -> float:
    if not (isinstance(downsample, (int, float)) and math.isfinite(downsample) and downsample > 0):
        raise AnnotationError(f"downsample must be a positive number, not {downsample!r}")
    return float(downsample)


def write_mask_png(path: str | Path, annotations: Sequence[Annotation],
                   classes: Sequence[AnnotationClass], slide_size: tuple[int, int],
                   downsample: float = 1.0) -> ExportResult:
    """A palette PNG of the whole slide at ``downsample``: pixel value = label, colour = class."""
    from PIL import Image

    ds = _check_downsample(downsample)
    w, h = (max(1, math.ceil(s / ds)) for s in slide_size)
    if w * h > MAX_PNG_PIXELS:
        need = math.ceil(ds * math.sqrt(w * h / MAX_PNG_PIXELS))
        raise AnnotationError(f"a {w}×{h} PNG is too large; use --downsample {need} or more, or a "
                              f"pyramidal .tif")
    labels = label_table(classes)
    items, warnings = _labelled(annotations, labels)
    img = Image.fromarray(rasterize(items, 0, 0, w, h, ds), mode="L").convert("P")
    palette = [0, 0, 0] * 256
    for c in classes:
        palette[labels[c.name] * 3:labels[c.name] * 3 + 3] = list(c.color)
    img.putpalette(palette)
    atomic_write(Path(path), lambda tmp: img.save(tmp, format="PNG"))
    return ExportResult(str(path), FORMAT, len(items), tuple(warnings),
                        tuple((v, n) for n, v in labels.items()))


def pyramid_dimensions(slide_size: tuple[int, int], downsample: float, tile: int = TILE
                       ) -> list[tuple[int, int]]:
    dims = [tuple(max(1, math.ceil(s / downsample)) for s in slide_size)]
    while max(dims[-1]) > tile:
        dims.append(tuple(max(1, math.ceil(s / 2)) for s in dims[-1]))
    return dims  # type: ignore[return-value]


def write_mask_tiff(path: str | Path, annotations: Sequence[Annotation],
                    classes: Sequence[AnnotationClass], slide_size: tuple[int, int],
                    downsample: float = 1.0, mpp: tuple[float, float] | None = None,
                    tile: int = TILE) -> ExportResult:
    """A tiled pyramidal TIFF label mask (level k at ``downsample``·2^k), readable by OpenSlide."""
    import tifffile

    ds = _check_downsample(downsample)
    labels = label_table(classes)
    items, warnings = _labelled(annotations, labels)
    tree = shapely.STRtree([a.geometry for a, _ in items]) if items else None
    dims = pyramid_dimensions(slide_size, ds, tile)

    def tiles(level_ds: float, w: int, h: int) -> Iterator[np.ndarray]:
        for ty in range(0, h, tile):
            for tx in range(0, w, tile):
                if tree is None:
                    yield np.zeros((tile, tile), np.uint8)
                else:
                    yield rasterize(items, tx * level_ds, ty * level_ds, tile, tile, level_ds, tree)

    def write(tmp: Path) -> None:
        with tifffile.TiffWriter(tmp, bigtiff=True) as tif:
            for level, (w, h) in enumerate(dims):
                level_ds = ds * 2**level
                kw = {}
                if mpp:
                    kw = {"resolution": (1e4 / (mpp[0] * level_ds), 1e4 / (mpp[1] * level_ds)),
                          "resolutionunit": "CENTIMETER"}
                tif.write(tiles(level_ds, w, h), shape=(h, w), dtype=np.uint8, tile=(tile, tile),
                          photometric="minisblack", compression="zlib",
                          subfiletype=0 if level == 0 else 1, metadata=None, **kw)

    atomic_write(Path(path), write)
    log.info("wrote %d-level label mask %s", len(dims), path)
    return ExportResult(str(path), FORMAT, len(items), tuple(warnings),
                        tuple((v, n) for n, v in labels.items()))

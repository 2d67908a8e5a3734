"""Drawing annotations with QPainter: paths from shapely geometry, class colours, levels of detail.

Used by the overlay's worker thread (whole windows into a QImage) and by the GUI thread (patching a
few changed annotations in place). Safe off the GUI thread: QImage, QPainter on a QImage and
QPainterPath need no GUI thread; each thread keeps its own :class:`PathCache`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import shapely
from PySide6.QtCore import QPointF, QRectF, Qt
from PySide6.QtGui import QColor, QPainter, QPainterPath, QPen, QPolygonF

from engine.api import Annotation, Kind

ROI_COLOR = QColor(255, 200, 0)
UNCLASSIFIED = (200, 200, 200)
DOT_PX = 2.0  # shapes smaller than this many screen pixels are drawn as a filled box
OUTLINE_PX = 2.0  # outline width in logical screen pixels at any pixel ratio (1 px vanishes on eosin)


@dataclass(frozen=True)
class Style:
    """How to colour annotations: class colours, fill opacity (0–1)."""

    colors: tuple[tuple[str, tuple[int, int, int]], ...]
    opacity: float

    def color_map(self) -> Mapping[str, tuple[int, int, int]]:
        return dict(self.colors)


def level_of_detail(downsample: float) -> int:
    """0 at 1:1 and closer; else outlines are simplified to about half a screen pixel."""
    return max(0, int(math.floor(math.log2(downsample))) + 1) if downsample >= 1 else 0


def _ring(coords: np.ndarray) -> QPolygonF:
    return QPolygonF(list(map(QPointF, coords[:, 0].tolist(), coords[:, 1].tolist())))


def geometry_path(geom: object) -> QPainterPath:
    """A QPainterPath (odd-even fill, so holes stay empty) of a Polygon or MultiPolygon."""
    path = QPainterPath()
    polys = geom.geoms if hasattr(geom, "geoms") else [geom]  # type: ignore[attr-defined]
    for poly in polys:
        path.addPolygon(_ring(np.asarray(poly.exterior.coords)))
        for ring in poly.interiors:
            path.addPolygon(_ring(np.asarray(ring.coords)))
    path.setFillRule(Qt.FillRule.OddEvenFill)
    return path


class PathCache:
    """QPainterPaths by annotation id, modification time, area and level of detail (the area
    guards against an edit that kept the time stamp); one cache per thread."""

    def __init__(self, limit: int = 60_000) -> None:
        self.limit = limit
        self._paths: dict[tuple[str, float, float, int], QPainterPath] = {}

    def get(self, ann: Annotation, lod: int) -> QPainterPath:
        key = (ann.uuid, ann.modified, ann.geometry.area, lod)
        path = self._paths.get(key)
        if path is None:
            geom = ann.geometry
            if lod > 0:
                simple = shapely.simplify(geom, tolerance=0.5 * 2 ** (lod - 1),
                                          preserve_topology=True)
                geom = simple if not simple.is_empty else geom
            path = geometry_path(geom)
            if len(self._paths) >= self.limit:
                self._paths.clear()
            self._paths[key] = path
        return path

    def clear(self) -> None:
        self._paths.clear()


def draw_annotations(p: QPainter, anns: Iterable[Annotation], downsample: float, style: Style,
                     paths: PathCache, dpr: float = 1.0) -> tuple[int, int]:
    """Draw ``anns`` with ``p`` already mapping level-0 pixels to the target (``downsample``
    level-0 px per target pixel, ``dpr`` target pixels per logical screen pixel); (drawn, dots)."""
    lod = level_of_detail(downsample)
    width = OUTLINE_PX * dpr
    colors = style.color_map()
    alpha = int(round(255 * style.opacity))
    pens: dict[tuple[int, int, int], QPen] = {}
    rois: list[QPainterPath] = []
    drawn = dots = 0
    p.setRenderHint(QPainter.RenderHint.Antialiasing, downsample < 2)
    for ann in anns:
        drawn += 1
        if ann.kind is Kind.ROI:
            rois.append(paths.get(ann, lod))
            continue
        rgb = colors.get(ann.class_name or "", UNCLASSIFIED)
        x0, y0, x1, y1 = ann.geometry.bounds
        if max(x1 - x0, y1 - y0) < DOT_PX * downsample:
            p.fillRect(QRectF(x0, y0, max(x1 - x0, downsample), max(y1 - y0, downsample)),
                       QColor(*rgb))
            dots += 1
            continue
        pen = pens.get(rgb)
        if pen is None:
            pen = pens[rgb] = QPen(QColor(*rgb), width)
            pen.setCosmetic(True)
        p.setPen(pen)
        p.setBrush(QColor(*rgb, alpha))
        p.drawPath(paths.get(ann, lod))
    if rois:
        pen = QPen(ROI_COLOR, width, Qt.PenStyle.DashLine)
        pen.setCosmetic(True)
        p.setPen(pen)
        p.setBrush(Qt.BrushStyle.NoBrush)
        for path in rois:
            p.drawPath(path)
    return drawn, dots

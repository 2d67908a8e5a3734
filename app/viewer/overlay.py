"""The annotation layer of the slide view: class-coloured fills at an opacity, with outlines.

What is drawn comes from viewport queries (the store's R*Tree) over the visible area plus a margin,
so small pans draw from memory and only leaving the queried window queries again. Each annotation's
QPainterPath is cached per level of detail (keyed by its id and modification time): at low zoom
outlines are simplified to about half a screen pixel and shapes smaller than two screen pixels are
drawn as dots. Edits update the cache from the journal step's changes, without a query.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import shapely
from PySide6.QtCore import QPointF, QRectF, Qt
from PySide6.QtGui import QColor, QPainter, QPainterPath, QPen, QPolygonF, QTransform

from app.state.viewport import Viewport
from engine.api import Annotation, AnnotationStore, Kind, Step

log = logging.getLogger(__name__)

MARGIN = 0.5  # the queried window reaches this fraction of the view beyond each edge
ROI_COLOR = QColor(255, 200, 0)
SELECTED_COLOR = QColor(0, 200, 255)
UNCLASSIFIED = (200, 200, 200)


@dataclass(frozen=True)
class OverlayStats:
    """What the last paint drew."""

    queried: int
    drawn: int
    dots: int


def _ring(coords: np.ndarray) -> QPolygonF:
    return QPolygonF([QPointF(x, y) for x, y in coords])


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


class AnnotationOverlay:
    """Draws a store's annotations over the slide; owned by the slide view."""

    def __init__(self) -> None:
        self.store: AnnotationStore | None = None
        self.colors: dict[str, tuple[int, int, int]] = {}
        self.opacity = 0.35
        self.visible = True
        self.selected: set[str] = set()
        self._window: tuple[float, float, float, float] | None = None
        self._anns: dict[str, Annotation] = {}
        self._bounds = np.zeros((0, 4))
        self._order: list[str] = []
        self._paths: dict[tuple[str, float, int], QPainterPath] = {}
        self.stats = OverlayStats(0, 0, 0)

    # -- data --------------------------------------------------------------------------------------

    def set_store(self, store: AnnotationStore | None) -> None:
        self.store = store
        self._paths.clear()
        self.invalidate()

    def set_colors(self, colors: dict[str, tuple[int, int, int]]) -> None:
        self.colors = dict(colors)

    def invalidate(self) -> None:
        """Query again at the next paint (after an import, an undo across many annotations …)."""
        self._window = None

    def apply_step(self, step: Step | None) -> None:
        """Bring the in-memory window up to date with a committed, undone or redone step."""
        if step is None or self._window is None:
            self.invalidate()
            return
        x0, y0, x1, y1 = self._window
        for ch in step.changes:
            self._anns.pop(ch.uuid, None)
            now = self.store.find(ch.uuid) if self.store is not None else None
            if now is not None:
                bx0, by0, bx1, by1 = now.geometry.bounds
                if bx1 >= x0 and bx0 <= x1 and by1 >= y0 and by0 <= y1:
                    self._anns[now.uuid] = now
        self._reindex()

    def _query(self, vp: Viewport) -> None:
        assert self.store is not None
        x0, y0, x1, y1 = vp.visible_rect()
        mx, my = (x1 - x0) * MARGIN, (y1 - y0) * MARGIN
        window = (x0 - mx, y0 - my, x1 + mx, y1 + my)
        found = self.store.query(*window, kind=None, exact=False)
        self._anns = {a.uuid: a for a in found}
        self._window = window
        self._reindex()

    def _reindex(self) -> None:
        self._order = list(self._anns)
        geoms = [self._anns[u].geometry for u in self._order]
        self._bounds = shapely.bounds(np.array(geoms, dtype=object)) if geoms else np.zeros((0, 4))
        live = set(self._order)
        if len(self._paths) > 4 * max(len(live), 1000):
            self._paths = {k: v for k, v in self._paths.items() if k[0] in live}

    def _covers(self, vp: Viewport) -> bool:
        if self._window is None:
            return False
        x0, y0, x1, y1 = vp.visible_rect()
        wx0, wy0, wx1, wy1 = self._window
        # re-query when the view left the window, or zoomed out past it
        return x0 >= wx0 and y0 >= wy0 and x1 <= wx1 and y1 <= wy1 \
            and (x1 - x0) * (1 + 2 * MARGIN) >= (wx1 - wx0) * 0.5

    def annotations_in_window(self) -> list[Annotation]:
        return [self._anns[u] for u in self._order]

    # -- painting ----------------------------------------------------------------------------------

    def _path(self, ann: Annotation, lod: int) -> QPainterPath:
        key = (ann.uuid, ann.modified, lod)
        path = self._paths.get(key)
        if path is None:
            geom = ann.geometry
            if lod > 0:
                simple = shapely.simplify(geom, tolerance=0.5 * 2 ** (lod - 1), preserve_topology=True)
                if not simple.is_empty:
                    geom = simple
            path = geometry_path(geom)
            self._paths[key] = path
        return path

    def paint(self, p: QPainter, vp: Viewport) -> None:
        if not self.visible or self.store is None:
            return
        if not self._covers(vp):
            self._query(vp)
        if not self._order:
            self.stats = OverlayStats(0, 0, 0)
            return
        ds = vp.downsample
        x0, y0, x1, y1 = vp.visible_rect()
        b = self._bounds
        in_view = np.nonzero((b[:, 2] >= x0) & (b[:, 0] <= x1) & (b[:, 3] >= y0) & (b[:, 1] <= y1))[0]
        size = np.maximum(b[in_view, 2] - b[in_view, 0], b[in_view, 3] - b[in_view, 1])
        tiny = size < 2 * ds
        lod = max(0, int(math.floor(math.log2(ds))) + 1) if ds >= 1 else 0  # tolerance ≈ ds / 2
        ox, oy = vp.origin
        p.save()
        p.setTransform(QTransform(1 / ds, 0, 0, 1 / ds, -ox / ds, -oy / ds), True)
        p.setRenderHint(QPainter.RenderHint.Antialiasing, ds < 2)
        alpha = int(round(255 * self.opacity))
        pens: dict[tuple[int, int, int], QPen] = {}
        dots = 0
        selected: list[QPainterPath] = []
        rois: list[QPainterPath] = []
        for i, small in zip(in_view, tiny):
            ann = self._anns[self._order[i]]
            if ann.kind is Kind.ROI:
                rois.append(self._path(ann, lod))
                continue
            rgb = self.colors.get(ann.class_name or "", UNCLASSIFIED)
            fill = QColor(*rgb, alpha)
            if small:
                bx0, by0, bx1, by1 = b[i]
                p.fillRect(QRectF(bx0, by0, max(bx1 - bx0, ds), max(by1 - by0, ds)), QColor(*rgb))
                dots += 1
                continue
            pen = pens.get(rgb)
            if pen is None:
                pen = pens[rgb] = QPen(QColor(*rgb), 1.5)
                pen.setCosmetic(True)
            path = self._path(ann, lod)
            p.setPen(pen)
            p.setBrush(fill)
            p.drawPath(path)
            if ann.uuid in self.selected:
                selected.append(path)
        p.setBrush(Qt.BrushStyle.NoBrush)
        if rois:
            pen = QPen(ROI_COLOR, 2.0, Qt.PenStyle.DashLine)
            pen.setCosmetic(True)
            p.setPen(pen)
            for path in rois:
                p.drawPath(path)
        if selected:
            pen = QPen(SELECTED_COLOR, 3.0)
            pen.setCosmetic(True)
            p.setPen(pen)
            for path in selected:
                p.drawPath(path)
        p.restore()
        self.stats = OverlayStats(len(self._order), int(len(in_view)), dots)

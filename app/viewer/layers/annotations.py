"""The annotation layer of the slide view: class-coloured fills at an opacity, with outlines.

A :class:`~app.viewer.layers.base.WindowedLayer`: the worker queries the store's R*Tree for the
window and paints it (paths cached per annotation and level of detail; simplified to about half a
pixel at low zoom, specks as dots), so a pan frame costs the same with 10 or 10 000 annotations.
Requests carry the data version too: results of older requests are dropped, never shown.

An edit does not wait for the worker: the changed area of the image is cleared and repainted on the
GUI thread from a small viewport query (a handful of annotations), so a brush stroke shows at once.
While a new window renders (after a zoom or a long pan), the previous image is drawn, scaled.
Outlines are :data:`~app.viewer.overlay_render.OUTLINE_PX` logical pixels wide at any pixel ratio.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, replace

import numpy as np
import shapely
from PySide6.QtCore import QObject, QRectF, Qt
from PySide6.QtGui import QColor, QImage, QPainter, QPen, QTransform

from app.state.viewport import Viewport
from app.viewer.layers.base import SlideSize, Window, WindowedLayer, blit_window, window_around
from app.viewer.overlay_render import PathCache, Style, draw_annotations
from engine.api import Annotation, AnnotationStore, CocoPathError, Kind, Step

log = logging.getLogger(__name__)

SELECTED_COLOR = QColor(0, 200, 255)
PATCH_LIMIT = 0.25  # an edit touching more of the window than this re-renders it in the worker


@dataclass(frozen=True)
class OverlayStats:
    """What the last rendered window held."""

    drawn: int
    dots: int
    seconds: float


@dataclass(frozen=True)
class RenderRequest:
    id: int
    version: int
    window: Window  # level-0 pixels
    downsample: float
    dpr: float
    style: Style

    @property
    def scale(self) -> float:
        """Device pixels of the image per level-0 pixel."""
        return self.dpr / self.downsample


@dataclass(frozen=True)
class RenderResult:
    request: RenderRequest
    image: QImage
    annotations: tuple[Annotation, ...]
    stats: OverlayStats


class AnnotationOverlay(WindowedLayer):
    """Draws a store's annotations over the slide; owned by the slide view's annotator."""

    thread_name = "overlay"

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.store: AnnotationStore | None = None
        self.colors: dict[str, tuple[int, int, int]] = {}
        self._opacity = 0.35
        self.selected: set[str] = set()
        self.stats = OverlayStats(0, 0, 0.0)
        self._anns: dict[str, Annotation] = {}
        self._where: tuple[np.ndarray, np.ndarray] | None = None  # regions' bounds and classes
        self._gui_paths = PathCache(5_000)
        self._worker_paths = PathCache()

    # -- data and style ------------------------------------------------------------------------------

    @property
    def opacity(self) -> float:
        return self._opacity

    @opacity.setter
    def opacity(self, value: float) -> None:
        self._opacity = min(max(float(value), 0.0), 1.0)
        self.invalidate()

    def style(self) -> Style:
        return Style(tuple(sorted(self.colors.items())), self._opacity)

    def set_store(self, store: AnnotationStore | None) -> None:
        self.store = store
        self.forget()  # whatever is in flight is stale now
        self._anns, self._where = {}, None
        self.invalidate()

    def set_colors(self, colors: dict[str, tuple[int, int, int]]) -> None:
        if colors != self.colors:
            self.colors = dict(colors)
            self.invalidate()

    def invalidate(self) -> None:
        """Render the window again (the image is kept on screen until the new one is in)."""
        self.version += 1

    def annotations_in_window(self) -> list[Annotation]:
        return list(self._anns.values())

    def classes_in_view(self, vp: Viewport) -> list[str]:
        """The classes of the regions drawn (correction ROIs aside) that reach into ``vp``'s view,
        sorted (bounding boxes against the view: a test per annotation, vectorised)."""
        if not self.visible or self.store is None:
            return []
        if self._where is None:
            regions = [a for a in self._anns.values() if a.kind is Kind.REGION and a.class_name]
            bounds = shapely.bounds([a.geometry for a in regions]).reshape(-1, 4)
            self._where = bounds, np.array([a.class_name for a in regions], dtype=object)
        (b, names), (x0, y0, x1, y1) = self._where, vp.visible_rect()
        seen = (b[:, 2] >= x0) & (b[:, 0] <= x1) & (b[:, 3] >= y0) & (b[:, 1] <= y1)
        return sorted(set(names[seen]))

    # -- rendering (the windowed layer's hooks) ------------------------------------------------------

    def has_data(self) -> bool:
        return self.store is not None

    def make_request(self, request_id: int, vp: Viewport) -> RenderRequest:
        return RenderRequest(request_id, self.version, window_around(vp), vp.downsample, vp.dpr,
                             self.style())

    def render_args(self, request: RenderRequest) -> tuple[AnnotationStore | None]:
        return (self.store,)

    def render(self, req: RenderRequest, store: AnnotationStore) -> RenderResult | None:
        t0 = time.perf_counter()
        try:
            anns = store.query(*req.window, kind=None, exact=False)
        except CocoPathError as exc:  # the project was closed meanwhile
            log.debug("overlay render dropped: %s", exc)
            return None
        x0, y0, x1, y1 = req.window
        s = req.scale
        image = QImage(max(1, math.ceil((x1 - x0) * s)), max(1, math.ceil((y1 - y0) * s)),
                       QImage.Format.Format_ARGB32_Premultiplied)
        image.fill(Qt.GlobalColor.transparent)
        p = QPainter(image)
        p.setTransform(QTransform(s, 0, 0, s, -x0 * s, -y0 * s))
        drawn, dots = draw_annotations(p, anns, 1 / s, req.style, self._worker_paths, req.dpr)
        p.end()
        return RenderResult(req, image, tuple(anns), OverlayStats(drawn, dots,
                                                                  time.perf_counter() - t0))

    def accept(self, res: RenderResult) -> None:
        if res.request.version == self.version:  # a stale version: the next paint asks again
            self._image, self._shown = res.image, res.request
            self._anns, self._where = {a.uuid: a for a in res.annotations}, None
            self.stats = res.stats

    # -- edits (GUI thread) --------------------------------------------------------------------------

    def apply_step(self, step: Step | None) -> None:
        """Show a committed, undone or redone step: patch the image where it changed."""
        shown, image = self._shown, self._image
        if step is None or shown is None or image is None or self.store is None \
                or shown.version != self.version or len(step.changes) > 200:
            self.invalidate()
            return
        boxes = [_changed_box(ch.before, ch.after) for ch in step.changes]
        if not boxes:
            return
        pad = 3 * shown.dpr / shown.scale  # outlines reach past the shape
        rect = (min(b[0] for b in boxes) - pad, min(b[1] for b in boxes) - pad,
                max(b[2] for b in boxes) + pad, max(b[3] for b in boxes) + pad)
        wx0, wy0, wx1, wy1 = shown.window
        ix0, iy0 = max(rect[0], wx0), max(rect[1], wy0)
        ix1, iy1 = min(rect[2], wx1), min(rect[3], wy1)
        self.version += 1
        if ix0 < ix1 and iy0 < iy1:
            if (ix1 - ix0) * (iy1 - iy0) > PATCH_LIMIT * (wx1 - wx0) * (wy1 - wy0):
                return  # a big change: the worker renders the window again
            self._patch(image, shown, (ix0, iy0, ix1, iy1))
        undone = step.status == "undone"  # an undo leaves each annotation as it was before
        self._where = None
        for ch in step.changes:
            self._anns.pop(ch.uuid, None)
            now = ch.before if undone else ch.after
            if now is not None and _intersects(now.geometry.bounds, shown.window):
                self._anns[ch.uuid] = now
        self._shown = replace(shown, version=self.version)

    def _patch(self, image: QImage, shown: RenderRequest, rect: Window) -> None:
        assert self.store is not None
        anns = self.store.query(*rect, kind=None, exact=False)
        s = shown.scale
        wx0, wy0 = shown.window[:2]
        p = QPainter(image)
        p.setTransform(QTransform(s, 0, 0, s, -wx0 * s, -wy0 * s))
        clip = QRectF(rect[0], rect[1], rect[2] - rect[0], rect[3] - rect[1])
        p.setClipRect(clip)
        p.setCompositionMode(QPainter.CompositionMode.CompositionMode_Clear)
        p.fillRect(clip, Qt.GlobalColor.transparent)
        p.setCompositionMode(QPainter.CompositionMode.CompositionMode_SourceOver)
        draw_annotations(p, anns, 1 / s, shown.style, self._gui_paths, shown.dpr)
        p.end()

    # -- painting (GUI thread) -----------------------------------------------------------------------

    def blit(self, p: QPainter, vp: Viewport, slide_size: SlideSize) -> None:
        """Only over the slide (``slide_size``, level-0 px), where outlines live; then the selection."""
        clip = None
        if slide_size is not None:
            (ax, ay), (bx, by) = vp.to_screen(0, 0), vp.to_screen(*slide_size)
            clip = QRectF(ax, ay, bx - ax, by - ay).adjusted(-2, -2, 2, 2)
        blit_window(p, self._image, self._shown.window, vp, clip)  # type: ignore[arg-type]
        if self.selected:
            self._paint_selection(p, vp)

    def _paint_selection(self, p: QPainter, vp: Viewport) -> None:
        ds = vp.downsample
        ox, oy = vp.origin
        p.save()
        p.setTransform(QTransform(1 / ds, 0, 0, 1 / ds, -ox / ds, -oy / ds), True)
        p.setRenderHint(QPainter.RenderHint.Antialiasing, True)
        pen = QPen(SELECTED_COLOR, 3.0)
        pen.setCosmetic(True)
        p.setPen(pen)
        p.setBrush(Qt.BrushStyle.NoBrush)
        for uuid in self.selected:
            ann = self._anns.get(uuid) or (self.store.find(uuid) if self.store else None)
            if ann is not None:
                p.drawPath(self._gui_paths.get(ann, 0))
        p.restore()


def _changed_box(before: Annotation | None, after: Annotation | None) -> Window:
    """Where a change shows: for a new outline of an annotation, only where the old and new
    differ (a brush stroke along a big tumour outline repaints the stroke, not the tumour)."""
    if before is not None and after is not None and before.class_name == after.class_name \
            and before.kind == after.kind and not before.geometry.equals(after.geometry):
        diff = before.geometry.symmetric_difference(after.geometry)
        if not diff.is_empty:
            return diff.bounds
    return (before or after).geometry.bounds  # type: ignore[union-attr]


def _intersects(b: Window, w: Window) -> bool:
    return b[2] >= w[0] and b[0] <= w[2] and b[3] >= w[1] and b[1] <= w[3]

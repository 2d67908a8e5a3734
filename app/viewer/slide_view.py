"""The slide view: paints a slide's tiles with QPainter, pans and zooms, never shows a blank.

Painting uses only what is cached: for each visible tile of the chosen level the decoded QImage if
it is in, otherwise the best coarser cached tiles (or the slide's thumbnail) scaled into its place.

* Every viewport change is a new request id; tile arrivals of older requests are dropped, never
  painted. Arrivals of the current one are batched into a repaint every ``REPAINT_INTERVAL_MS``,
  and the last visible tile repaints at once (painting per tile would starve the readers).
* Prefetch (the ring around the view, the next finer level under the cursor) is handed to the
  loader only after the frame is complete, so it never competes with what is on screen.
* Downscaled tiles are scaled once per zoom in idle time (:class:`ScaledTiles`), so frames while
  panning are plain blits; during continuous input (drag, wheel, held keys) scaled drawing skips
  smoothing until the input settles.
* Over the tiles, the view paints its :attr:`SlideView.layers` in order (predictions, annotations,
  the review box, the legend, the scale bar; see :mod:`app.viewer.layers`): each one's ``updated``
  repaints, a frame is complete once every layer is current, and closing shuts them all down.
* A resize keeps the slide point at the view's centre where it was (a fitted view is fitted again).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from PySide6.QtCore import QPointF, QRectF, Qt, QTimer, Signal
from PySide6.QtGui import (QColor, QImage, QKeyEvent, QMouseEvent, QPainter, QPaintEvent,
                           QResizeEvent, QWheelEvent)
from PySide6.QtWidgets import QWidget

from app.state.tiles import TilePlan, plan_tiles
from app.state.viewport import SlideGeometry, Viewport, available_presets, fit_viewport
from app.viewer.annotator import Annotator
from app.viewer.layers import Layer, LegendLayer, PredictionOverlay, ReviewBoxLayer
from app.viewer.layers.scale_bar import ScaleBarLayer
from app.viewer.tile_loader import FINER, RING, TileLoader
from app.viewer.tile_painter import ScaledTiles, paint_fallback
from engine.api import ByteBoundedCache
from engine.api import RegionRequest, TileGrid

log = logging.getLogger(__name__)

TILE_SIZE = 512
BACKGROUND = QColor(62, 64, 70)
GLASS = QColor(255, 255, 255)
REPAINT_INTERVAL_MS = 80  # while tiles stream in, repaint at most this often (the last one at once)
SETTLE_MS = 180  # after the last pan/zoom input, repaint with smooth scaling


@dataclass(frozen=True)
class PaintRecord:
    """What one paint drew: the request it served and the final-level tiles it showed."""

    request_id: int
    level: int
    drawn: frozenset[RegionRequest]
    missing: int
    complete: bool
    seconds: float
    failed: int = 0  # tiles that cannot be read (stand-ins drawn; they do not hold up "complete")


class SlideView(QWidget):
    """A whole-slide image view. Give it a source with :meth:`set_source`; it does the rest."""

    viewport_changed = Signal(object)  # Viewport
    cursor_moved = Signal(float, float)  # slide coordinates (level-0 px)
    frame_complete = Signal(int)  # request id whose visible tiles are all drawn at their final level
    painted = Signal(object)  # PaintRecord
    tile_error = Signal(str)  # a tile cannot be read: the engine's one-sentence message

    def __init__(self, cache: ByteBoundedCache, parent: QWidget | None = None,
                 workers: int | None = None) -> None:
        super().__init__(parent)
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        self.setMouseTracking(True)
        self.setAttribute(Qt.WidgetAttribute.WA_OpaquePaintEvent)
        self.setMinimumSize(200, 150)
        self.cache = cache
        self.loader = TileLoader(cache, workers, self)
        self.loader.tile_ready.connect(self._on_tile_ready)
        self.loader.tile_failed.connect(self._on_tile_failed)
        self.source: object | None = None
        self.geometry_: SlideGeometry | None = None
        self.grid: TileGrid | None = None
        self.thumbnail: QImage | None = None
        self._viewport: Viewport | None = None
        self._plan: TilePlan | None = None
        self._request_id = 0
        self._complete_id = -1
        self._cursor: tuple[float, float] | None = None
        self._drag_from: QPointF | None = None
        self.stale_dropped = 0
        self.fast_paint = False  # during interaction: scaled tiles drawn without smoothing
        self._pending: set[RegionRequest] = set()  # visible tiles of this request not yet in
        self._prefetch: list[tuple[RegionRequest, int]] = []
        self._failed: set[RegionRequest] = set()
        self.scaled = ScaledTiles()
        self._repaint_timer = QTimer(self, singleShot=True, interval=REPAINT_INTERVAL_MS)
        self._repaint_timer.timeout.connect(self.update)
        self._prescale_timer = QTimer(self, singleShot=True, interval=0)
        self._prescale_timer.timeout.connect(self._prescale_some)
        self._settle_timer = QTimer(self, singleShot=True, interval=SETTLE_MS)
        self._settle_timer.timeout.connect(self._settle)
        self.last_error = ""
        self.annotator = Annotator(self, self)  # the annotation layer and the current tool
        self.predictions = PredictionOverlay(self)  # the model's prediction layer, under annotations
        self.review = ReviewBoxLayer(self)  # the outline of the region "Review next" went to
        self.legend = LegendLayer(self.predictions, self.annotator.overlay, self)
        self.scale_bar = ScaleBarLayer(self)
        self.layers: list[Layer] = []  # painted in this order over the tiles
        for layer in (self.predictions, self.annotator.overlay, self.review, self.legend,
                      self.scale_bar):
            self.add_layer(layer)
        self._tool_down = False
        self._fitted = False  # the viewport is the whole-slide fit (a resize fits again)

    # -- layers ------------------------------------------------------------------------------------

    def add_layer(self, layer: Layer, index: int | None = None) -> None:
        """Paint ``layer`` over the slide (at ``index`` in :attr:`layers`; None: on top)."""
        self.layers.insert(len(self.layers) if index is None else index, layer)
        layer.updated.connect(self.update)
        self.update()

    @property
    def review_box(self) -> tuple[float, float, float, float] | None:
        """The region "Review next" went to (level-0 x, y, w, h), outlined; None: no outline."""
        return self.review.box

    # -- slide -------------------------------------------------------------------------------------

    def set_source(self, source: object | None, thumbnail: QImage | None = None) -> None:
        """Show ``source`` (an engine SlideSource), fitted to the view; None shows nothing.

        The view owns the source from now on: it is closed when replaced (once no read uses it).
        """
        self.source = source
        self.thumbnail = thumbnail
        self.review.set_box(None)
        self.scaled.clear()
        self._failed.clear()
        self.loader.set_source(source)
        if source is None:
            self.geometry_ = self.grid = self._viewport = self._plan = None
            self.update()
            return
        info = source.info  # type: ignore[attr-defined]
        self.geometry_ = SlideGeometry.from_info(info)
        self.scale_bar.mpp = self.geometry_.mpp
        self.grid = info.tile_grid(TILE_SIZE)
        self._viewport = None
        self.zoom_to_fit()

    @property
    def viewport(self) -> Viewport | None:
        return self._viewport

    @property
    def request_id(self) -> int:
        return self._request_id

    @property
    def plan(self) -> TilePlan | None:
        return self._plan

    def set_cursor_hint(self, pos: tuple[float, float] | None) -> None:
        """Where the mouse is (screen px): the next finer level is prefetched around it."""
        self._cursor = pos

    def is_complete(self) -> bool:
        """True once every visible tile is painted at its final level and every layer is current."""
        vp = self._viewport
        return vp is not None and self._complete_id == self._request_id \
            and all(layer.is_current(vp) for layer in self.layers)

    def is_settled(self) -> bool:
        """Complete, and no idle work left that would still change the picture (smooth repaint
        after an interaction, tiles pre-scaled for this zoom)."""
        return self.is_complete() and not self.fast_paint and not self._prescale_timer.isActive()

    def set_review_box(self, box: tuple[float, float, float, float] | None) -> None:
        """Outline ``box`` (level-0 x, y, w, h: the region "Review next" went to); None: no outline."""
        self.review.set_box(box)

    def set_viewport(self, viewport: Viewport, force: bool = False) -> None:
        """Move the view; starts a new request (older ones go stale) and schedules a repaint.

        An unchanged viewport is ignored unless ``force`` (e.g. after the cache was emptied).
        """
        if self.geometry_ is None or self.grid is None:
            return
        dpr = self.devicePixelRatioF()
        vp = viewport.resized(self.width(), self.height(), dpr).clamped(self.geometry_)
        if vp == self._viewport and not force:
            return
        self._viewport = vp
        self._fitted = False
        self._request_id += 1
        self._plan = self._make_plan(vp)
        g = self.grid
        prefetch = [(g.request(t), RING) for t in self._plan.ring]
        prefetch += [(g.request(t), FINER) for t in self._plan.finer]
        visible = [g.request(t) for t in self._plan.visible]
        self._pending = {k for k in visible if k not in self.cache}
        self._prefetch = prefetch  # handed to the loader once this frame is complete
        self.scaled.keep_only(set(visible) | {k for k, _ in prefetch})
        self.loader.request(self._request_id, visible)
        self.update()
        self.viewport_changed.emit(vp)

    def _make_plan(self, vp: Viewport) -> TilePlan:
        """Tiles for ``vp``; far below the coarsest level, the (area-averaged) thumbnail instead.

        Scaling a level down by more than 2× with bilinear filtering aliases; the thumbnail was
        resampled properly, so where it is fine enough it is the final image (level -1, no tiles).
        """
        assert self.grid is not None and self.geometry_ is not None
        plan = plan_tiles(self.grid, self.geometry_, vp, self._cursor)
        geo = self.geometry_
        if self.thumbnail is not None and not self.thumbnail.isNull():
            eff = vp.downsample / max(vp.dpr, 1e-6)
            thumb_ds = geo.width / self.thumbnail.width()
            if eff >= thumb_ds and eff > 2 * geo.level_downsamples[plan.level]:
                return TilePlan(-1, ())
            # more tiles than half the cache holds (far out on a slide with no coarse level) would
            # never all be loaded at once: the thumbnail, until the user zooms in
            if len(plan.visible) * 4 * self.grid.tile_size ** 2 > self.cache.max_bytes / 2:
                return TilePlan(-1, ())
        return plan

    # -- navigation --------------------------------------------------------------------------------

    def zoom_to_fit(self) -> None:
        if self.geometry_ is not None:
            self.set_viewport(fit_viewport(self.geometry_, self.width(), self.height(),
                                           self.devicePixelRatioF()))
            self._fitted = True

    def zoom_by(self, factor: float, anchor: tuple[float, float] | None = None) -> None:
        if self._viewport is not None:
            self.set_viewport(self._viewport.zoomed(factor, anchor))

    def pan_by(self, dx: float, dy: float) -> None:
        if self._viewport is not None:
            self.set_viewport(self._viewport.panned(dx, dy))

    def center_on(self, x: float, y: float) -> None:
        if self._viewport is not None:
            self.set_viewport(self._viewport.centered(x, y))

    def set_magnification(self, magnification: float) -> None:
        if self._viewport is not None and self.geometry_ is not None:
            self.set_viewport(self._viewport.with_magnification(magnification, self.geometry_))

    def set_downsample(self, downsample: float) -> None:
        if self._viewport is not None:
            self.set_viewport(self._viewport.with_downsample(downsample))

    def presets(self) -> tuple[float, ...]:
        return available_presets(self.geometry_.base_magnification) if self.geometry_ else ()

    # -- loader ------------------------------------------------------------------------------------

    def _on_tile_ready(self, request_id: int, key: RegionRequest) -> None:
        if request_id != self._request_id:
            self.stale_dropped += 1  # a stale request: never painted, not even a repaint
            return
        self._pending.discard(key)
        if not self._pending:
            self._repaint_timer.stop()
            self.update()  # the last visible tile: paint the final frame now
        elif not self._repaint_timer.isActive():
            self._repaint_timer.start()  # batch arrivals: painting each one would starve the readers

    def _on_tile_failed(self, request_id: int, key: RegionRequest, message: str) -> None:
        if key.slide != (self.source.info.path if self.source is not None else None):  # type: ignore[attr-defined]
            return  # a slide that was closed meanwhile
        self._failed.add(key)
        if message != self.last_error:
            log.warning("%s", message)
            self.last_error = message
            self.tile_error.emit(message)
        if request_id == self._request_id:
            self._pending.discard(key)
            self.update()

    # -- painting ----------------------------------------------------------------------------------

    def _screen_rect(self, vp: Viewport, x: float, y: float, w: float, h: float) -> QRectF:
        sx, sy = vp.to_screen(x, y)
        return QRectF(sx, sy, w / vp.downsample, h / vp.downsample)

    def paintEvent(self, event: QPaintEvent) -> None:  # noqa: N802 (Qt's name)
        t0 = time.perf_counter()
        p = QPainter(self)
        p.fillRect(self.rect(), BACKGROUND)
        vp, g, geo, plan = self._viewport, self.grid, self.geometry_, self._plan
        if vp is None or g is None or geo is None or plan is None:
            self._paint_placeholder(p)
            p.end()
            return
        if not self.fast_paint:
            p.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform)
        p.fillRect(self._screen_rect(vp, 0, 0, geo.width, geo.height), GLASS)
        drawn: set[RegionRequest] = set()
        missing = failed = 0
        if plan.level < 0 and self.thumbnail is not None:
            p.drawImage(self._screen_rect(vp, 0, 0, geo.width, geo.height), self.thumbnail,
                        QRectF(self.thumbnail.rect()))
        factor = geo.level_downsamples[plan.level] / vp.downsample * vp.dpr if plan.level >= 0 else 1.0
        prescale = factor < 0.999  # downscaled tiles: blit pre-scaled copies (see tile_painter)
        for tile in plan.visible:
            key = g.request(tile)
            rect0 = g.tile_rect_level0(tile)
            img = self.cache.get(key)
            if img is None:
                if key in self._failed:
                    failed += 1
                else:
                    missing += 1
                paint_fallback(p, vp, g, geo, self.cache, self.thumbnail, tile.level, rect0)
                continue
            scaled = self.scaled.get(key, img, vp, rect0, make=False) if prescale else None
            if scaled is not None:
                p.drawImage(scaled[1], scaled[0])
            else:
                p.drawImage(self._screen_rect(vp, *rect0), img, QRectF(img.rect()))
                if prescale:
                    self._prescale_timer.start()  # scale it when idle: the next pan frame blits it
            drawn.add(key)
        for layer in self.layers:
            layer.paint(p, vp, (geo.width, geo.height))
        self.annotator.paint(p, vp)  # the gesture in progress, over everything
        p.end()
        complete = missing == 0
        record = PaintRecord(self._request_id, plan.level, frozenset(drawn), missing, complete,
                             time.perf_counter() - t0, failed)
        if complete and self._complete_id != self._request_id:
            self._complete_id = self._request_id
            QTimer.singleShot(0, self, self._start_prefetch)  # after this frame reaches the screen
            self.frame_complete.emit(self._request_id)
        self.painted.emit(record)

    @property
    def prefetch_waiting(self) -> bool:
        """Prefetch tiles planned for this viewport but not yet handed to the loader."""
        return bool(self._prefetch)

    def _start_prefetch(self) -> None:
        if self._complete_id == self._request_id and self._prefetch:
            self.loader.prefetch(self._request_id, self._prefetch)
            self._prefetch = []

    def _prescale_some(self, budget_s: float = 0.006) -> None:
        """Scale visible cached tiles for the current zoom, a few milliseconds per event-loop turn."""
        vp, g, geo, plan = self._viewport, self.grid, self.geometry_, self._plan
        if vp is None or g is None or geo is None or plan is None or plan.level < 0:
            return
        if geo.level_downsamples[plan.level] / vp.downsample * vp.dpr >= 0.999:
            return
        t0 = time.perf_counter()
        for tile in plan.visible:
            key = g.request(tile)
            img = self.cache.peek(key)
            rect0 = g.tile_rect_level0(tile)
            if img is None or self.scaled.get(key, img, vp, rect0, make=False) is not None:
                continue
            self.scaled.get(key, img, vp, rect0, make=True)
            if time.perf_counter() - t0 > budget_s:
                self._prescale_timer.start()
                return

    def _paint_placeholder(self, p: QPainter) -> None:
        p.setPen(QColor(220, 220, 220))
        p.drawText(self.rect(), Qt.AlignmentFlag.AlignCenter,
                   "Open a slide: File ▸ Open (Ctrl+O), drop a file here,\n"
                   "or File ▸ Open sample slide")

    # -- events ------------------------------------------------------------------------------------

    def resizeEvent(self, event: QResizeEvent) -> None:  # noqa: N802
        super().resizeEvent(event)
        if self._viewport is not None and not self._fitted:
            self.set_viewport(self._viewport)  # the same slide point at the centre, the same zoom
        elif self.geometry_ is not None:
            self.zoom_to_fit()

    def wheelEvent(self, event: QWheelEvent) -> None:  # noqa: N802
        steps = event.angleDelta().y() / 120.0
        if steps:
            self._interacting()
            self._settle_timer.start()
            pos = event.position()
            self.zoom_by(1.25 ** steps, (pos.x(), pos.y()))
        event.accept()

    def _slide_pos(self, event: QMouseEvent) -> tuple[float, float] | None:
        pos = event.position()
        return self._viewport.to_slide(pos.x(), pos.y()) if self._viewport is not None else None

    def mousePressEvent(self, event: QMouseEvent) -> None:  # noqa: N802
        at = self._slide_pos(event)
        if event.button() == Qt.MouseButton.LeftButton and at is not None \
                and self.annotator.press(*at, event.modifiers()):
            self._tool_down = True  # the current tool took the press: no panning
            event.accept()
            return
        if event.button() in (Qt.MouseButton.LeftButton, Qt.MouseButton.MiddleButton):
            self._drag_from = event.position()
            self._interacting()
            self.setCursor(Qt.CursorShape.ClosedHandCursor)
        event.accept()

    def mouseMoveEvent(self, event: QMouseEvent) -> None:  # noqa: N802
        pos = event.position()
        self._cursor = (pos.x(), pos.y())
        at = self._slide_pos(event)
        if at is not None and self.annotator.move(*at, event.modifiers(), self._tool_down):
            self.cursor_moved.emit(*at)
            return
        if self._drag_from is not None:
            d = pos - self._drag_from
            self._drag_from = pos
            self._interacting()
            self.pan_by(d.x(), d.y())
        if self._viewport is not None:
            self.cursor_moved.emit(*self._viewport.to_slide(pos.x(), pos.y()))

    def mouseReleaseEvent(self, event: QMouseEvent) -> None:  # noqa: N802
        at = self._slide_pos(event)
        if self._tool_down and event.button() == Qt.MouseButton.LeftButton:
            self._tool_down = False
            if at is not None:
                self.annotator.release(*at, event.modifiers())
            event.accept()
            return
        if self._drag_from is not None:
            self._drag_from = None
            tool = self.annotator.tool
            self.setCursor(tool.cursor) if tool is not None else self.unsetCursor()
            self._settle_timer.start()
        event.accept()

    def mouseDoubleClickEvent(self, event: QMouseEvent) -> None:  # noqa: N802
        pos = event.position()
        at = self._slide_pos(event)
        if at is not None and event.button() == Qt.MouseButton.LeftButton \
                and self.annotator.double_click(*at):
            return
        self.zoom_by(2.0, (pos.x(), pos.y()))

    def keyPressEvent(self, event: QKeyEvent) -> None:  # noqa: N802
        if self.annotator.key(event):
            return
        key = event.key()
        step_x, step_y = self.width() / 4, self.height() / 4
        if event.isAutoRepeat():  # a held arrow key pans continuously: paint fast until released
            self._interacting()
            self._settle_timer.start()
        K = Qt.Key
        if key == K.Key_Left:
            self.pan_by(step_x, 0)
        elif key == K.Key_Right:
            self.pan_by(-step_x, 0)
        elif key == K.Key_Up:
            self.pan_by(0, step_y)
        elif key == K.Key_Down:
            self.pan_by(0, -step_y)
        elif key in (K.Key_Plus, K.Key_Equal):
            self.zoom_by(1.5)
        elif key in (K.Key_Minus, K.Key_Underscore):
            self.zoom_by(1 / 1.5)
        elif key in (K.Key_F, K.Key_0):
            self.zoom_to_fit()
        elif K.Key_1 <= key <= K.Key_6 and event.modifiers() & Qt.KeyboardModifier.AltModifier:
            presets = self.presets()
            i = key - K.Key_1
            if i < len(presets):
                self.set_magnification(presets[i])
        else:
            super().keyPressEvent(event)

    def _interacting(self) -> None:
        """Continuous pan/zoom: paint without smoothing (a frame in a few ms) until input settles."""
        self.fast_paint = True
        self._settle_timer.stop()

    def _settle(self) -> None:
        if self._drag_from is None and self.fast_paint:
            self.fast_paint = False
            self.update()

    def leaveEvent(self, event: object) -> None:  # noqa: N802
        self._cursor = None

    def closeEvent(self, event: object) -> None:  # noqa: N802
        self.loader.shutdown()
        for layer in self.layers:
            layer.shutdown()

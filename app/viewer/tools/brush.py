"""Brush: paint the current class (a buffered stroke unioned into the annotation under it, or a new
one); with Alt or Ctrl held at the press, the stroke is cut out of the current class instead.
The cursor is a circle of the brush's size (µm; [ and ] change it)."""

from __future__ import annotations

import math

from PySide6.QtCore import QPointF, QRectF, Qt
from PySide6.QtGui import QColor, QImage, QKeyEvent, QPainter, QPen, QPolygonF

from app.state import editing
from app.state.viewport import Viewport
from app.viewer.tools.base import Tool, outline_pen
from engine.api import Kind

SUBTRACT = Qt.KeyboardModifier.AltModifier | Qt.KeyboardModifier.ControlModifier
PREVIEW_ALPHA = 0.43  # the stroke in progress, over the slide


class BrushTool(Tool):
    name = "brush"
    label = "Brush"
    shortcut = "B"
    tip = "Paint the current class; hold Alt (or Ctrl) to subtract; [ and ] change the size"
    cursor = Qt.CursorShape.BlankCursor
    erases = False

    def __init__(self, host: object) -> None:
        super().__init__(host)  # type: ignore[arg-type]
        self.points: list[tuple[float, float]] = []
        self.subtract = False
        self.hover: tuple[float, float] | None = None
        self._buffer: QImage | None = None  # the stroke so far, opaque, in screen pixels
        self._buffer_vp: Viewport | None = None
        self._drawn = 0
        self._dirty = QRectF()

    def press(self, x: float, y: float, mods: Qt.KeyboardModifier) -> bool:
        self.subtract = self.erases or bool(mods & SUBTRACT)
        if not self.subtract and self.host.current_class is None:
            self.host.message.emit("Choose a class first (the class palette, or keys 1–9).")
            return True
        self.points = [(x, y)]
        self._buffer = None
        self.hover = (x, y)
        self.host.update()
        return True

    def move(self, x: float, y: float, mods: Qt.KeyboardModifier, dragging: bool) -> bool:
        self.hover = (x, y)
        if self.points:
            lx, ly = self.points[-1]
            if math.hypot(x - lx, y - ly) >= 0.1 * self.host.brush_radius_px():
                self.points.append((x, y))
        self.host.update()
        return bool(self.points)

    def release(self, x: float, y: float, mods: Qt.KeyboardModifier) -> bool:
        if not self.points:
            return False
        if (x, y) != self.points[-1]:
            self.points.append((x, y))
        shape = editing.stroke_shape(self.points, self.host.brush_radius_px())
        self.points, self._buffer = [], None
        touching = self.host.touching(shape, Kind.REGION)
        if self.subtract:
            edit = editing.subtract_shape(shape, touching, self.host.current_class,
                                          any_class=self.erases,
                                          label="erase" if self.erases else "brush (subtract)")
        else:
            edit = editing.add_shape(shape, self.host.current_class, touching, self.host.author)
        self.host.apply(edit, quiet=True)
        self.host.update()
        return True

    def key(self, event: QKeyEvent) -> bool:
        if event.key() == Qt.Key.Key_Escape and self.points:
            self.cancel()  # the stroke in progress is dropped; nothing was saved yet
            return True
        return False

    def cancel(self) -> None:
        self.points, self._buffer = [], None
        self.host.update()

    def _color(self) -> QColor:
        if self.subtract:
            return QColor(255, 255, 255)
        rgb = self.host.overlay.colors.get(self.host.current_class or "", (255, 255, 255))
        return QColor(*rgb)

    def paint(self, p: QPainter, vp: Viewport) -> None:
        r = self.host.brush_radius_px() / vp.downsample
        p.save()
        p.setRenderHint(QPainter.RenderHint.Antialiasing, True)
        if self.points:
            self._paint_stroke(p, vp, r)
        if self.hover is not None:
            c = QPointF(*vp.to_screen(*self.hover))
            p.setBrush(Qt.BrushStyle.NoBrush)
            p.setPen(outline_pen(QColor(0, 0, 0), 3.0))
            p.drawEllipse(c, r, r)
            p.setPen(outline_pen(QColor(255, 255, 255) if not self.erases else QColor(255, 120, 120)))
            p.drawEllipse(c, r, r)
        p.restore()

    def _paint_stroke(self, p: QPainter, vp: Viewport, r: float) -> None:
        """The stroke so far, translucent. Each frame adds only the new segments to an opaque
        buffer (so a long stroke costs no more per frame than a short one) and blits the part the
        stroke covers at the preview's opacity."""
        if self._buffer is None or self._buffer_vp != vp:
            self._buffer = QImage(max(1, round(vp.width * vp.dpr)), max(1, round(vp.height * vp.dpr)),
                                  QImage.Format.Format_ARGB32_Premultiplied)
            self._buffer.setDevicePixelRatio(vp.dpr)
            self._buffer.fill(Qt.GlobalColor.transparent)
            self._buffer_vp, self._drawn, self._dirty = vp, 0, QRectF()
        pts = [QPointF(*vp.to_screen(x, y)) for x, y in self.points[max(self._drawn - 1, 0):]]
        if pts:
            bp = QPainter(self._buffer)
            bp.setRenderHint(QPainter.RenderHint.Antialiasing, True)
            bp.setPen(QPen(self._color(), 2 * r, Qt.PenStyle.SolidLine, Qt.PenCapStyle.RoundCap,
                           Qt.PenJoinStyle.RoundJoin))
            if len(pts) == 1:
                bp.drawPoint(pts[0])
            else:
                bp.drawPolyline(QPolygonF(pts))
            bp.end()
            for pt in pts:
                self._dirty = self._dirty.united(QRectF(pt.x() - r - 2, pt.y() - r - 2,
                                                        2 * r + 4, 2 * r + 4))
            self._drawn = len(self.points)
        area = self._dirty.intersected(QRectF(0, 0, vp.width, vp.height))
        if not area.isEmpty():
            p.setOpacity(PREVIEW_ALPHA)
            d = vp.dpr
            p.drawImage(area, self._buffer, QRectF(area.x() * d, area.y() * d,
                                                    area.width() * d, area.height() * d))
            p.setOpacity(1.0)

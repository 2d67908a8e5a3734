"""Brush: paint the current class (a buffered stroke unioned into the annotation under it, or a new
one); with Alt or Ctrl held at the press, the stroke is cut out of the current class instead.
The cursor is a circle of the brush's size (µm; [ and ] change it)."""

from __future__ import annotations

import math

from PySide6.QtCore import QPointF, Qt
from PySide6.QtGui import QColor, QPainter, QPainterPath, QPen

from app.state import editing
from app.state.viewport import Viewport
from app.viewer.tools.base import Tool, outline_pen
from engine.api import Kind

SUBTRACT = Qt.KeyboardModifier.AltModifier | Qt.KeyboardModifier.ControlModifier


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

    def press(self, x: float, y: float, mods: Qt.KeyboardModifier) -> bool:
        self.subtract = self.erases or bool(mods & SUBTRACT)
        if not self.subtract and self.host.current_class is None:
            self.host.message.emit("Choose a class first (the class palette, or keys 1–9).")
            return True
        self.points = [(x, y)]
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
        self.points = []
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

    def cancel(self) -> None:
        self.points = []
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
            color = self._color()
            color.setAlpha(110)
            path = QPainterPath(QPointF(*vp.to_screen(*self.points[0])))
            for pt in self.points[1:]:
                path.lineTo(QPointF(*vp.to_screen(*pt)))
            pen = QPen(color, 2 * r, Qt.PenStyle.SolidLine, Qt.PenCapStyle.RoundCap,
                       Qt.PenJoinStyle.RoundJoin)
            p.setPen(pen)
            p.setBrush(Qt.BrushStyle.NoBrush)
            if len(self.points) == 1:
                p.setPen(Qt.PenStyle.NoPen)
                p.setBrush(color)
                p.drawEllipse(path.currentPosition(), r, r)
            else:
                p.drawPath(path)
        if self.hover is not None:
            c = QPointF(*vp.to_screen(*self.hover))
            p.setBrush(Qt.BrushStyle.NoBrush)
            p.setPen(outline_pen(QColor(0, 0, 0), 3.0))
            p.drawEllipse(c, r, r)
            p.setPen(outline_pen(QColor(255, 255, 255) if not self.erases else QColor(255, 120, 120)))
            p.drawEllipse(c, r, r)
        p.restore()

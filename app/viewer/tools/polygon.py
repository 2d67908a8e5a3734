"""Polygon: click vertices (or drag to draw freehand); double-click or Enter closes, Esc cancels,
Backspace removes the last vertex. The polygon becomes a new annotation of the current class."""

from __future__ import annotations

import math

from PySide6.QtCore import QPointF, Qt
from PySide6.QtGui import QColor, QKeyEvent, QPainter, QPolygonF
from shapely.geometry import Polygon

from app.state import editing
from app.state.viewport import Viewport
from app.viewer.tools.base import Tool, outline_pen, screen_points
from engine.api import Kind

FREEHAND_STEP_PX = 3.0  # screen pixels between freehand vertices


class PolygonTool(Tool):
    name = "polygon"
    label = "Polygon"
    shortcut = "P"
    tip = "Click vertices or drag freehand; double-click or Enter closes, Esc cancels"
    kind = Kind.REGION
    dash = Qt.PenStyle.SolidLine

    def __init__(self, host: object) -> None:
        super().__init__(host)  # type: ignore[arg-type]
        self.points: list[tuple[float, float]] = []
        self.hover: tuple[float, float] | None = None
        self.pressed = False
        self.dragged = 0

    def _step(self) -> float:
        vp = self.host.view.viewport
        return FREEHAND_STEP_PX * (vp.downsample if vp is not None else 1.0)

    def _add(self, x: float, y: float) -> None:
        if not self.points or math.dist(self.points[-1], (x, y)) >= self._step() / 3:
            self.points.append((x, y))

    def press(self, x: float, y: float, mods: Qt.KeyboardModifier) -> bool:
        if self.kind is Kind.REGION and self.host.current_class is None:
            self.host.message.emit("Choose a class first (the class palette, or keys 1–9).")
            return True
        self.pressed, self.dragged = True, 0
        self._add(x, y)
        self.host.update()
        return True

    def move(self, x: float, y: float, mods: Qt.KeyboardModifier, dragging: bool) -> bool:
        self.hover = (x, y)
        if self.pressed and self.points and math.dist(self.points[-1], (x, y)) >= self._step():
            self.points.append((x, y))
            self.dragged += 1
        if self.points:
            self.host.update()
        return bool(self.points)

    def release(self, x: float, y: float, mods: Qt.KeyboardModifier) -> bool:
        if not self.pressed:
            return False
        self.pressed = False
        if self.dragged >= 2:  # a freehand outline: closed on release
            self._add(x, y)
            self.finish()
        return True

    def double_click(self, x: float, y: float) -> bool:
        self._add(x, y)
        self.pressed = False
        self.finish()
        return True

    def key(self, event: QKeyEvent) -> bool:
        k = event.key()
        if k in (Qt.Key.Key_Return, Qt.Key.Key_Enter) and self.points:
            self.finish()
            return True
        if k == Qt.Key.Key_Escape and self.points:
            self.cancel()
            return True
        if k == Qt.Key.Key_Backspace and self.points:
            self.points.pop()
            self.host.update()
            return True
        return False

    def finish(self) -> None:
        pts, self.points = self.points, []
        self.host.update()
        if len(pts) < 3:
            self.host.message.emit("A polygon needs at least three corners.")
            return
        self.commit(Polygon(pts))

    def commit(self, shape: Polygon) -> None:
        label = "correction ROI" if self.kind is Kind.ROI else f"{self.name} ({self.host.current_class})"
        self.host.apply(editing.add_shape(shape, self.host.current_class, [], self.host.author,
                                          kind=self.kind, label=label, merge=False))

    def cancel(self) -> None:
        self.points, self.pressed = [], False
        self.host.update()

    def paint(self, p: QPainter, vp: Viewport) -> None:
        if not self.points:
            return
        pts = screen_points(vp, self.points + ([self.hover] if self.hover else []))
        p.save()
        p.setRenderHint(QPainter.RenderHint.Antialiasing, True)
        p.setPen(outline_pen(QColor(0, 0, 0), 3.0))
        p.drawPolyline(QPolygonF(pts))
        p.setPen(outline_pen(QColor(255, 255, 255), 1.5, self.dash))
        p.drawPolyline(QPolygonF(pts))
        for pt in pts[:-1] if self.hover else pts:
            p.drawEllipse(QPointF(pt), 2.5, 2.5)
        p.restore()

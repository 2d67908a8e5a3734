"""Rectangle: drag a box; it becomes a new annotation of the current class."""

from __future__ import annotations

from PySide6.QtCore import QPointF, QRectF, Qt
from PySide6.QtGui import QColor, QKeyEvent, QPainter
from shapely.geometry import box

from app.state import editing
from app.state.viewport import Viewport
from app.viewer.tools.base import Tool, outline_pen
from engine.api import Kind

MIN_SIDE_PX = 3.0  # screen pixels: a smaller drag is a slip, not a rectangle


class RectangleTool(Tool):
    name = "rectangle"
    label = "Rectangle"
    shortcut = "R"
    tip = "Drag a rectangle"
    kind = Kind.REGION
    dash = Qt.PenStyle.SolidLine

    def __init__(self, host: object) -> None:
        super().__init__(host)  # type: ignore[arg-type]
        self.start: tuple[float, float] | None = None
        self.end: tuple[float, float] | None = None

    def press(self, x: float, y: float, mods: Qt.KeyboardModifier) -> bool:
        if self.kind is Kind.REGION and self.host.current_class is None:
            self.host.message.emit("Choose a class first (the class palette, or keys 1–9).")
            return True
        self.start = self.end = (x, y)
        return True

    def move(self, x: float, y: float, mods: Qt.KeyboardModifier, dragging: bool) -> bool:
        if self.start is None:
            return False
        self.end = (x, y)
        self.host.update()
        return True

    def release(self, x: float, y: float, mods: Qt.KeyboardModifier) -> bool:
        if self.start is None:
            return False
        (x0, y0), self.start, self.end = self.start, None, None
        self.host.update()
        vp = self.host.view.viewport
        ds = vp.downsample if vp is not None else 1.0
        if min(abs(x - x0), abs(y - y0)) < MIN_SIDE_PX * ds:
            return True
        shape = box(min(x0, x), min(y0, y), max(x0, x), max(y0, y))
        label = "correction ROI" if self.kind is Kind.ROI else f"rectangle ({self.host.current_class})"
        self.host.apply(editing.add_shape(shape, self.host.current_class, [], self.host.author,
                                          kind=self.kind, label=label, merge=False))
        return True

    def key(self, event: QKeyEvent) -> bool:
        if event.key() == Qt.Key.Key_Escape and self.start is not None:
            self.cancel()
            return True
        return False

    def cancel(self) -> None:
        self.start = self.end = None
        self.host.update()

    def paint(self, p: QPainter, vp: Viewport) -> None:
        if self.start is None or self.end is None:
            return
        a, b = QPointF(*vp.to_screen(*self.start)), QPointF(*vp.to_screen(*self.end))
        rect = QRectF(a, b).normalized()
        p.save()
        p.setBrush(Qt.BrushStyle.NoBrush)
        p.setPen(outline_pen(QColor(0, 0, 0), 3.0))
        p.drawRect(rect)
        p.setPen(outline_pen(QColor(255, 255, 255), 1.5, self.dash))
        p.drawRect(rect)
        p.restore()

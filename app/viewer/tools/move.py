"""Move: drag an annotation (or a correction ROI, by its border) to a new place."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtGui import QColor, QPainter, QTransform

from app.state import editing
from app.state.viewport import Viewport
from app.viewer.overlay_render import geometry_path
from app.viewer.tools.base import Tool, outline_pen
from engine.api import Annotation


class MoveTool(Tool):
    name = "move"
    label = "Move"
    shortcut = "M"
    tip = "Drag an annotation to move it"
    cursor = Qt.CursorShape.SizeAllCursor

    def __init__(self, host: object) -> None:
        super().__init__(host)  # type: ignore[arg-type]
        self.ann: Annotation | None = None
        self.start = (0.0, 0.0)
        self.offset = (0.0, 0.0)

    def press(self, x: float, y: float, mods: Qt.KeyboardModifier) -> bool:
        self.ann = self.host.picked(x, y)
        self.start, self.offset = (x, y), (0.0, 0.0)
        if self.ann is not None and self.ann.locked:
            self.host.message.emit("This annotation is locked; unlock it first.")
            self.ann = None
        return True

    def move(self, x: float, y: float, mods: Qt.KeyboardModifier, dragging: bool) -> bool:
        if self.ann is None:
            return False
        self.offset = (x - self.start[0], y - self.start[1])
        self.host.update()
        return True

    def release(self, x: float, y: float, mods: Qt.KeyboardModifier) -> bool:
        ann, self.ann = self.ann, None
        if ann is None:
            return True
        self.host.apply(editing.translate(ann, x - self.start[0], y - self.start[1]), quiet=True)
        return True

    def cancel(self) -> None:
        self.ann = None
        self.host.update()

    def paint(self, p: QPainter, vp: Viewport) -> None:
        if self.ann is None:
            return
        ds = vp.downsample
        ox, oy = vp.origin
        dx, dy = self.offset
        p.save()
        p.setTransform(QTransform(1 / ds, 0, 0, 1 / ds, (dx - ox) / ds, (dy - oy) / ds), True)
        p.setPen(outline_pen(QColor(255, 255, 255), 2.0, Qt.PenStyle.DashLine))
        p.setBrush(Qt.BrushStyle.NoBrush)
        p.drawPath(geometry_path(self.ann.geometry))
        p.restore()

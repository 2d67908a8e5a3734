"""The outline of the region "Review next" took the view to: a dark line under a bright one, so it
reads on pale glass and on dark tissue alike. Two rectangle strokes a frame: nothing to cache."""

from __future__ import annotations

from PySide6.QtCore import QObject, QRectF
from PySide6.QtGui import QColor, QPainter, QPen

from app.state.viewport import Viewport
from app.viewer.layers.base import PaintedLayer, SlideSize

UNDER = QColor(20, 20, 20, 200)
OVER = QColor(255, 214, 0)

Box = tuple[float, float, float, float]  # level-0 x, y, width, height


def paint_review_box(p: QPainter, vp: Viewport, box: Box) -> None:
    """Outline ``box`` on the view ``vp`` (cosmetic pens: 5 and 2.5 px)."""
    x, y, w, h = box
    sx, sy = vp.to_screen(x, y)
    rect = QRectF(sx, sy, w / vp.downsample, h / vp.downsample)
    p.save()
    p.setBrush(QColor(0, 0, 0, 0))
    for color, width in ((UNDER, 5.0), (OVER, 2.5)):
        pen = QPen(color, width)
        pen.setCosmetic(True)
        p.setPen(pen)
        p.drawRect(rect)
    p.restore()


class ReviewBoxLayer(PaintedLayer):
    """The box of the last "Review next" jump (none until one, and none on another slide)."""

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.box: Box | None = None

    def set_box(self, box: Box | None) -> None:
        if box != self.box:
            self.box = box
            self.updated.emit()

    def paint(self, p: QPainter, vp: Viewport, slide_size: SlideSize) -> None:
        if self.visible and self.box is not None:
            paint_review_box(p, vp, self.box)

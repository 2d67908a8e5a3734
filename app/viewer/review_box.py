"""The outline of the region "Review next" took the view to: a dark line under a bright one, so it
reads on pale glass and on dark tissue alike. Two rectangle strokes a frame: nothing to cache."""

from __future__ import annotations

from PySide6.QtCore import QRectF
from PySide6.QtGui import QColor, QPainter, QPen

from app.state.viewport import Viewport

UNDER = QColor(20, 20, 20, 200)
OVER = QColor(255, 214, 0)


def paint_review_box(p: QPainter, vp: Viewport, box: tuple[float, float, float, float]) -> None:
    """Outline ``box`` (level-0 x, y, w, h) on the view ``vp`` (cosmetic pens: 5 and 2.5 px)."""
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

"""The scale bar in the view's bottom-left corner, or a note where the slide has no pixel size."""

from __future__ import annotations

from PySide6.QtCore import QObject, QPointF, QRectF, Qt
from PySide6.QtGui import QColor, QPainter, QPen

from app.state.viewport import Viewport, nice_scale_bar
from app.viewer.layers.base import PaintedLayer, SlideSize

MARGIN = 12  # px from the view's edges


class ScaleBarLayer(PaintedLayer):
    """A 1-2-5 length of the slide, with its label, for the slide's pixel size (:attr:`mpp`)."""

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.mpp: float | None = None  # µm per level-0 pixel of the slide shown

    def paint(self, p: QPainter, vp: Viewport, slide_size: SlideSize) -> None:
        if not self.visible:
            return
        p.save()
        bar = nice_scale_bar(self.mpp, vp.downsample, target_pixels=min(160.0, vp.width / 4))
        font = p.font()
        font.setPointSizeF(max(8.0, font.pointSizeF()))
        p.setFont(font)
        fm = p.fontMetrics()
        if bar is None:
            text = "No scale bar: the slide has no pixel size"
            box = QRectF(MARGIN, vp.height - MARGIN - fm.height() - 8,
                         fm.horizontalAdvance(text) + 16, fm.height() + 8)
            p.fillRect(box, QColor(0, 0, 0, 150))
            p.setPen(QColor(255, 255, 255))
            p.drawText(box, Qt.AlignmentFlag.AlignCenter, text)
            p.restore()
            return
        width = max(bar.pixels, fm.horizontalAdvance(bar.label))
        box = QRectF(MARGIN, vp.height - MARGIN - fm.height() - 22, width + 16, fm.height() + 22)
        p.fillRect(box, QColor(255, 255, 255, 200))
        y = box.bottom() - 8
        x0 = box.left() + 8
        p.setPen(QPen(QColor(0, 0, 0), 3))
        p.drawLine(QPointF(x0, y), QPointF(x0 + bar.pixels, y))
        p.setPen(QPen(QColor(0, 0, 0), 2))
        p.drawLine(QPointF(x0, y - 5), QPointF(x0, y + 2))
        p.drawLine(QPointF(x0 + bar.pixels, y - 5), QPointF(x0 + bar.pixels, y + 2))
        p.drawText(QRectF(x0, box.top() + 3, width, fm.height()), Qt.AlignmentFlag.AlignLeft,
                   bar.label)
        p.restore()

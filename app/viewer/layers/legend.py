"""A legend in the view's top-right corner that tells predictions from corrections.

It is drawn only when there is something to tell apart: the model's predictions and the
pathologist's corrections (annotations) both on screen. One line per predicted class ("Prediction:
Tumour", a filled swatch in the prediction colour) and one per correction class in view
("Correction: Tumour", its class colour, filled and outlined as the annotations are).
"""

from __future__ import annotations

from dataclasses import dataclass

from PySide6.QtCore import QObject, QRectF, Qt
from PySide6.QtGui import QColor, QFontMetrics, QPainter, QPen

from app.state.viewport import Viewport
from app.viewer.layers.annotations import AnnotationOverlay
from app.viewer.layers.base import PaintedLayer, SlideSize
from app.viewer.layers.predictions import PredictionOverlay
from app.viewer.overlay_render import OUTLINE_PX, UNCLASSIFIED

MARGIN = 12  # px from the view's edges
PAD = 8  # px inside the box
SWATCH = 14  # px
BOX = QColor(0, 0, 0, 170)
TEXT = QColor(255, 255, 255)


@dataclass(frozen=True)
class LegendEntry:
    text: str
    color: tuple[int, int, int]
    prediction: bool  # a prediction (filled swatch) or a correction class (fill and outline)


class LegendLayer(PaintedLayer):
    """Names what the prediction and annotation layers' colours mean, when both show."""

    def __init__(self, predictions: PredictionOverlay, annotations: AnnotationOverlay,
                 parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.predictions = predictions
        self.annotations = annotations

    def entries(self, vp: Viewport) -> list[LegendEntry]:
        """What the legend says for ``vp`` (nothing unless predictions and corrections both show)."""
        pred = self.predictions
        if not self.visible or not pred.visible or not pred.has_data() or not pred.ready():
            return []
        classes = self.annotations.classes_in_view(vp)
        if not classes:
            return []
        colors = pred.style.colors
        out = [LegendEntry(f"Prediction: {name}", colors[i % len(colors)], True)
               for i, name in enumerate(pred.class_names())]
        out += [LegendEntry(f"Correction: {name}", self.annotations.colors.get(name, UNCLASSIFIED),
                            False) for name in classes]
        return out

    def rect(self, vp: Viewport, fm: QFontMetrics, entries: list[LegendEntry]) -> QRectF:
        """Where the legend's box lies on screen (logical px)."""
        line = max(fm.height(), SWATCH) + 4
        w = SWATCH + 8 + max(fm.horizontalAdvance(e.text) for e in entries) + 2 * PAD
        h = line * len(entries) - 4 + 2 * PAD
        return QRectF(vp.width - MARGIN - w, MARGIN, w, h)

    def paint(self, p: QPainter, vp: Viewport, slide_size: SlideSize) -> None:
        entries = self.entries(vp)
        if not entries:
            return
        p.save()
        p.resetTransform()
        p.setOpacity(1.0)
        fm = p.fontMetrics()
        box = self.rect(vp, fm, entries)
        p.fillRect(box, BOX)
        line = max(fm.height(), SWATCH) + 4
        fill_alpha = round(255 * self.annotations.opacity)
        for k, e in enumerate(entries):
            top = box.top() + PAD + k * line
            swatch = QRectF(box.left() + PAD, top + (line - 4 - SWATCH) / 2, SWATCH, SWATCH)
            if e.prediction:
                p.fillRect(swatch, QColor(*e.color))
            else:
                pen = QPen(QColor(*e.color), OUTLINE_PX)
                pen.setJoinStyle(Qt.PenJoinStyle.MiterJoin)
                p.setPen(pen)
                p.setBrush(QColor(*e.color, fill_alpha))
                p.drawRect(swatch.adjusted(1, 1, -1, -1))
            p.setPen(TEXT)
            p.drawText(QRectF(swatch.right() + 8, top, box.right() - swatch.right() - 8 - PAD,
                              line - 4), Qt.AlignmentFlag.AlignVCenter | Qt.AlignmentFlag.AlignLeft,
                       e.text)
        p.restore()

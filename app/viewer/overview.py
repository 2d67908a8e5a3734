"""The overview (minimap): the slide's thumbnail with the viewport's rectangle; click or drag to go."""

from __future__ import annotations

from PySide6.QtCore import QPointF, QRectF, QSize, Qt, Signal
from PySide6.QtGui import QColor, QImage, QMouseEvent, QPainter, QPaintEvent, QPen
from PySide6.QtWidgets import QSizePolicy, QWidget

from app.state.viewport import Viewport


class OverviewWidget(QWidget):
    """Shows ``thumbnail`` fitted to the widget and the current viewport as a rectangle."""

    navigate = Signal(float, float)  # slide coordinates (level-0 px) to centre on

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setMinimumSize(160, 120)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.setCursor(Qt.CursorShape.PointingHandCursor)
        self._thumb: QImage | None = None
        self._slide_size: tuple[int, int] | None = None
        self._viewport: Viewport | None = None
        self._dragging = False

    def sizeHint(self) -> QSize:  # noqa: N802
        return QSize(260, 220)

    def set_slide(self, thumbnail: QImage | None, slide_size: tuple[int, int] | None) -> None:
        self._thumb, self._slide_size, self._viewport = thumbnail, slide_size, None
        self.update()

    def set_viewport(self, viewport: Viewport) -> None:
        self._viewport = viewport
        self.update()

    def image_rect(self) -> QRectF:
        """Where the thumbnail is drawn (fitted, centred), in widget coordinates."""
        if not self._slide_size:
            return QRectF()
        w, h = self._slide_size
        scale = min((self.width() - 8) / w, (self.height() - 8) / h)
        dw, dh = w * scale, h * scale
        return QRectF((self.width() - dw) / 2, (self.height() - dh) / 2, dw, dh)

    def to_slide(self, pos: QPointF) -> tuple[float, float]:
        r = self.image_rect()
        assert self._slide_size
        w, h = self._slide_size
        x = (pos.x() - r.left()) / r.width() * w
        y = (pos.y() - r.top()) / r.height() * h
        return min(max(x, 0.0), float(w)), min(max(y, 0.0), float(h))

    def viewport_rect(self) -> QRectF:
        """The viewport's rectangle in widget coordinates (empty without a slide)."""
        if self._viewport is None or not self._slide_size:
            return QRectF()
        r = self.image_rect()
        sx = r.width() / self._slide_size[0]
        x0, y0, x1, y1 = self._viewport.visible_rect()
        return QRectF(r.left() + x0 * sx, r.top() + y0 * sx, (x1 - x0) * sx, (y1 - y0) * sx)

    def paintEvent(self, event: QPaintEvent) -> None:  # noqa: N802
        p = QPainter(self)
        p.fillRect(self.rect(), QColor(62, 64, 70))
        r = self.image_rect()
        if r.isEmpty():
            p.end()
            return
        p.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform)
        p.fillRect(r, QColor(255, 255, 255))
        if self._thumb is not None and not self._thumb.isNull():
            p.drawImage(r, self._thumb, QRectF(self._thumb.rect()))
        vr = self.viewport_rect().intersected(r.adjusted(-2, -2, 2, 2))
        if not vr.isEmpty():
            if vr.width() < 4 or vr.height() < 4:  # too small to see: mark it with a cross-hair box
                c = vr.center()
                vr = QRectF(c.x() - 4, c.y() - 4, 8, 8)
            p.setPen(QPen(QColor(20, 120, 255), 2))
            p.drawRect(vr)
        p.end()

    def mousePressEvent(self, event: QMouseEvent) -> None:  # noqa: N802
        if event.button() == Qt.MouseButton.LeftButton and self._slide_size:
            self._dragging = True
            self.navigate.emit(*self.to_slide(event.position()))

    def mouseMoveEvent(self, event: QMouseEvent) -> None:  # noqa: N802
        if self._dragging and self._slide_size:
            self.navigate.emit(*self.to_slide(event.position()))

    def mouseReleaseEvent(self, event: QMouseEvent) -> None:  # noqa: N802
        self._dragging = False

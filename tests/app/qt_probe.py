"""Driving and reading the GUI in tests: grab pixels, wait until drawn, click and drag in slide
coordinates. A module of its own (not conftest) so test files import it by a name no other test
folder shares."""

from __future__ import annotations

import numpy as np


def grab_rgb(widget) -> np.ndarray:
    """A widget's rendering as (h, w, 3) uint8 RGB, in logical pixels."""
    from PySide6.QtGui import QImage

    img = widget.grab().toImage().convertToFormat(QImage.Format.Format_RGB888)
    w, h, bpl = img.width(), img.height(), img.bytesPerLine()
    arr = np.frombuffer(img.constBits(), np.uint8, count=bpl * h).reshape(h, bpl)
    return arr[:, : w * 3].reshape(h, w, 3).copy()


def wait_drawn(qtbot, view, timeout: int = 15000) -> None:
    """Wait until the view drew every visible tile of its current viewport at the final level and
    nothing pending (pre-scaling, the smooth repaint after an interaction) will change the picture."""
    qtbot.waitUntil(view.is_settled, timeout=timeout)


def screen(view, x: float, y: float):
    """The view's screen point (QPoint) of slide pixel (x, y)."""
    from PySide6.QtCore import QPoint

    sx, sy = view.viewport.to_screen(x, y)
    return QPoint(round(sx), round(sy))


def drag(view, points, modifiers=None) -> None:
    """Press at the first slide point, move through the others, release at the last."""
    from PySide6.QtCore import Qt
    from PySide6.QtTest import QTest

    mods = modifiers or Qt.KeyboardModifier.NoModifier
    QTest.mousePress(view, Qt.MouseButton.LeftButton, mods, screen(view, *points[0]))
    for pt in points[1:]:
        QTest.mouseMove(view, screen(view, *pt))
    QTest.mouseRelease(view, Qt.MouseButton.LeftButton, mods, screen(view, *points[-1]))


def click(view, x: float, y: float, modifiers=None) -> None:
    from PySide6.QtCore import Qt
    from PySide6.QtTest import QTest

    QTest.mouseClick(view, Qt.MouseButton.LeftButton, modifiers or Qt.KeyboardModifier.NoModifier,
                     screen(view, x, y))

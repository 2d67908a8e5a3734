"""GUI test fixtures: offscreen Qt, private settings, real slides and a small synthetic pyramid."""

from __future__ import annotations

import os

os.environ["QT_QPA_PLATFORM"] = "offscreen"  # before anything creates a QApplication

import tempfile  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

# settings written by the app under test go to a throw-away folder, never the user's
os.environ["XDG_CONFIG_HOME"] = tempfile.mkdtemp(prefix="cocopath-test-config-")


@pytest.fixture(scope="session")
def app_pyramid(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 6000 × 4000 JPEG-tiled pyramidal TIFF of real H&E patches (mpp 0.25, levels 1, 2, 4, …)."""
    from engine.slide.pyramid import build_pyramid_tiff

    return build_pyramid_tiff(tmp_path_factory.mktemp("pyramid") / "pyramid.tif", 6000, 4000, seed=3)


@pytest.fixture
def settings(tmp_path: Path):
    from PySide6.QtCore import QSettings

    return QSettings(str(tmp_path / "cocopath.ini"), QSettings.Format.IniFormat)


@pytest.fixture
def cache():
    from engine.slide.cache import ByteBoundedCache

    return ByteBoundedCache(256 * 2**20)


@pytest.fixture
def window(qtbot, settings, cache) -> Iterator[object]:
    from app.main_window import MainWindow

    w = MainWindow(settings=settings, cache=cache)
    qtbot.addWidget(w)
    w.resize(1000, 700)
    w.show()
    qtbot.waitExposed(w)
    yield w
    w.close()


@pytest.fixture
def view(qtbot, cache) -> Iterator[object]:
    """A bare slide view, 640 × 480, shown offscreen."""
    from app.viewer.slide_view import SlideView

    v = SlideView(cache)
    qtbot.addWidget(v)
    v.resize(640, 480)
    v.show()
    qtbot.waitExposed(v)
    yield v
    v.loader.shutdown()
    v.close()


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


# -- annotation tools ----------------------------------------------------------------------------

ORIGIN = (800.0, 900.0)  # the slide pixel at the view's top-left corner in ``annotating``


@pytest.fixture
def annotating(qtbot, window, small_svs):
    """The window with CMU-1-Small-Region open at level 0, 1:1, slide pixel ORIGIN at the view's
    top-left (give or take half a pixel), so one screen pixel is one slide pixel (0.499 µm)."""
    from app.state.viewport import Viewport

    assert window.open_path(small_svs)
    view = window.view
    w, h = view.width(), view.height()
    view.set_viewport(Viewport(ORIGIN[0] + w / 2, ORIGIN[1] + h / 2, 1.0, w, h))
    wait_drawn(qtbot, view)
    assert view.annotator.store is not None
    return window


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

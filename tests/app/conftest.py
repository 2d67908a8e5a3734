"""GUI test fixtures: offscreen Qt, private settings, real slides and a small synthetic pyramid."""

from __future__ import annotations

import os

os.environ["QT_QPA_PLATFORM"] = "offscreen"  # before anything creates a QApplication

import tempfile  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
from qt_probe import wait_drawn  # noqa: E402

# settings written by the app under test go to a throw-away folder, never the user's
os.environ["XDG_CONFIG_HOME"] = tempfile.mkdtemp(prefix="cocopath-test-config-")


@pytest.fixture(scope="session")
def app_pyramid(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 6000 × 4000 JPEG-tiled pyramidal TIFF of real H&E patches (mpp 0.25, levels 1, 2, 4, …)."""
    from engine.slide.pyramid import build_pyramid_tiff

    return build_pyramid_tiff(tmp_path_factory.mktemp("pyramid") / "pyramid.tif", 6000, 4000, seed=3)


@pytest.fixture(autouse=True)
def _collect_in_the_gui_thread() -> Iterator[None]:
    """Python's cycle collector may run in any thread that allocates; a run in a worker thread
    (inference, a back-end trial) then destroys an earlier test's unreachable Qt widgets there and
    deadlocks with the GUI thread. As in the app (pyqtgraph's GarbageCollector), collect only in
    the GUI thread: automatic collection is off during each GUI test, and its garbage (windows
    included: this fixture is set up first, torn down last) is collected here after it."""
    import gc

    from app.state.inference_run import forget_preload

    forget_preload()  # no network loaded ahead by an earlier test (it may have patched the loader)
    gc.disable()
    yield
    gc.collect()
    gc.enable()


#: A modal dialog left open this long means nobody in the test will answer it.
STRANDED_DIALOG_S = 20.0


@pytest.fixture(autouse=True)
def _no_stranded_dialogs(qapp) -> Iterator[None]:
    """A modal dialog that no test code answers would block its ``exec()`` for ever (a hung
    suite): a watchdog closes any message box or dialog shown for longer than
    :data:`STRANDED_DIALOG_S`, and the test then fails naming it."""
    import time

    from PySide6.QtCore import QTimer
    from PySide6.QtWidgets import QApplication, QDialog

    first_seen: dict[int, float] = {}
    stranded: list[str] = []

    def watch() -> None:
        now = time.monotonic()
        shown = [w for w in QApplication.topLevelWidgets() if isinstance(w, QDialog) and w.isVisible()
                 and w.isModal()]
        for w in shown:
            seen = first_seen.setdefault(id(w), now)
            if now - seen > STRANDED_DIALOG_S:
                stranded.append(f"{type(w).__name__} {w.windowTitle()!r}")
                w.reject()

    timer = QTimer()
    timer.timeout.connect(watch)
    timer.start(500)
    yield
    timer.stop()
    assert not stranded, f"modal dialog(s) left open with nobody to answer them: {stranded}"


@pytest.fixture
def settings(tmp_path: Path):
    from PySide6.QtCore import QSettings

    return QSettings(str(tmp_path / "cocopath.ini"), QSettings.Format.IniFormat)


@pytest.fixture
def cache():
    from engine.slide.cache import ByteBoundedCache

    return ByteBoundedCache(256 * 2**20)


@pytest.fixture
def make_window(qtbot, settings, cache) -> Iterator[Callable[[], object]]:
    """Opens main windows (1000 × 700, shown offscreen) when called; closes them all at the end.
    For tests that must set something up (an environment variable, …) before the window starts."""
    from app.main_window import MainWindow

    opened = []

    def make() -> object:
        w = MainWindow(settings=settings, cache=cache)
        qtbot.addWidget(w)
        w.resize(1000, 700)
        w.show()
        qtbot.waitExposed(w)
        opened.append(w)
        return w

    yield make
    for w in opened:
        w.close()


@pytest.fixture
def window(make_window) -> object:
    return make_window()


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

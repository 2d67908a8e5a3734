"""The layer base (app/viewer/layers/base.py) with a fake windowed layer whose worker renders a
solid colour per request and can be held at a gate: request ids, stale results dropped (never
painted), shutdown stopping the worker, and ``updated`` repainting the view that holds the layer."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import pytest
from PySide6.QtGui import QColor, QImage, QPainter

from app.state.viewport import Viewport
from app.viewer.layers import Layer, WindowedLayer
from app.viewer.layers.base import window_around
from engine.slide import open_slide
from qt_probe import grab_rgb, wait_drawn

COLOURS = [(200, 0, 200), (0, 160, 255), (255, 160, 0), (0, 200, 90), (90, 60, 220)]


@dataclass(frozen=True)
class FakeRequest:
    id: int
    version: int
    window: tuple[float, float, float, float]
    downsample: float
    dpr: float
    colour: tuple[int, int, int]


@dataclass(frozen=True)
class FakeResult:
    request: FakeRequest
    image: QImage


class FakeLayer(WindowedLayer):
    """Fills its window with the colour of the request; the worker waits at ``gate``."""

    thread_name = "fake-layer"

    def __init__(self) -> None:
        super().__init__()
        self.colour = COLOURS[0]
        self.gate = threading.Event()
        self.gate.set()
        self.started = threading.Event()
        self.rendered: list[int] = []  # ids the worker rendered

    def has_data(self) -> bool:
        return True

    def make_request(self, request_id: int, vp: Viewport) -> FakeRequest:
        return FakeRequest(request_id, self.version, window_around(vp), vp.downsample, vp.dpr,
                           self.colour)

    def render(self, req: FakeRequest) -> FakeResult:
        self.started.set()
        assert self.gate.wait(10)
        self.rendered.append(req.id)
        image = QImage(16, 16, QImage.Format.Format_ARGB32_Premultiplied)
        image.fill(QColor(*req.colour))
        return FakeResult(req, image)

    def set_colour(self, colour: tuple[int, int, int]) -> None:
        self.colour = colour
        self.version += 1
        self.updated.emit()


VP = Viewport(5000.0, 5000.0, 2.0, 200, 100)


def paint_rgb(layer: FakeLayer, vp: Viewport) -> np.ndarray:
    """What the layer paints for ``vp`` on a black image, as (h, w, 3)."""
    img = QImage(vp.width, vp.height, QImage.Format.Format_RGB888)
    img.fill(QColor(0, 0, 0))
    p = QPainter(img)
    layer.paint(p, vp, None)
    p.end()
    bpl = img.bytesPerLine()
    arr = np.frombuffer(img.constBits(), np.uint8, count=bpl * vp.height).reshape(vp.height, bpl)
    return arr[:, : vp.width * 3].reshape(vp.height, vp.width, 3).copy()


@pytest.fixture
def layer(qtbot):
    lay = FakeLayer()
    yield lay
    lay.gate.set()
    lay.shutdown()


def test_a_fake_layer_is_a_layer_and_paints_its_window_once_rendered(qtbot, layer) -> None:
    assert isinstance(layer, Layer)
    assert not layer.is_current(VP)
    assert (paint_rgb(layer, VP) == 0).all()  # asked for, not in yet: nothing drawn
    qtbot.waitUntil(lambda: layer.is_current(VP), timeout=5000)
    assert (paint_rgb(layer, VP) == COLOURS[0]).all()
    assert layer.rendered == [1]
    small_pan = Viewport(VP.cx + 20, VP.cy, VP.downsample, VP.width, VP.height)
    paint_rgb(layer, small_pan)  # still inside the window rendered with a margin: no new request
    assert layer.is_current(small_pan) and layer.rendered == [1]


def test_every_request_has_a_new_id_and_one_on_its_way_is_not_asked_again(qtbot, layer) -> None:
    layer.gate.clear()
    paint_rgb(layer, VP)  # a painter that is not active: the layer only asks
    first = layer._pending
    paint_rgb(layer, VP)
    assert layer._pending is first and first.id == 1  # the right window is on its way
    far = Viewport(VP.cx + 10_000, VP.cy, VP.downsample, VP.width, VP.height)
    paint_rgb(layer, far)
    assert layer._pending.id == 2 and layer._pending.window != first.window
    layer.gate.set()
    qtbot.waitUntil(lambda: layer.is_current(far), timeout=5000)
    assert layer._shown.id == 2


def test_a_result_that_comes_back_after_a_newer_request_is_dropped_never_painted(qtbot, layer) -> None:
    shown: list[tuple[int, int, int]] = []  # what the layer showed at each update
    layer.updated.connect(lambda: shown.append(layer._shown.colour if layer._shown else None))
    layer.gate.clear()
    paint_rgb(layer, VP)  # request 1 (old colour) starts rendering and waits at the gate
    assert layer.started.wait(5)
    layer.set_colour(COLOURS[1])  # the data changed meanwhile: request 2
    paint_rgb(layer, VP)
    assert layer._pending.id == 2
    layer.gate.set()
    qtbot.waitUntil(lambda: layer.is_current(VP), timeout=5000)
    assert layer.rendered == [1, 2]  # both rendered ...
    assert layer.stale_dropped == 1  # ... the first one was dropped when it came back
    assert COLOURS[0] not in shown and shown[-1] == COLOURS[1]
    assert (paint_rgb(layer, VP) == COLOURS[1]).all()


def test_queued_requests_of_an_older_id_are_never_rendered(qtbot, layer) -> None:
    layer.gate.clear()
    paint_rgb(layer, VP)  # 1: rendering, held
    assert layer.started.wait(5)
    for k, colour in enumerate(COLOURS[1:4]):  # 2, 3, 4: queued behind it, each stale at once
        layer.set_colour(colour)
        paint_rgb(layer, VP)
    layer.gate.set()
    qtbot.waitUntil(lambda: layer.is_current(VP), timeout=5000)
    assert layer.rendered == [1, 4]
    assert (paint_rgb(layer, VP) == COLOURS[3]).all()


def test_shutdown_stops_the_worker_and_nothing_renders_afterwards(qtbot, layer) -> None:
    paint_rgb(layer, VP)
    qtbot.waitUntil(lambda: layer.is_current(VP), timeout=5000)
    workers = [t for t in threading.enumerate() if t.name.startswith("fake-layer")]
    assert len(workers) == 1
    layer.gate.clear()
    layer.set_colour(COLOURS[2])
    paint_rgb(layer, VP)  # queued ... and then the view closes
    layer.shutdown()
    layer.gate.set()
    workers[0].join(5)
    assert not workers[0].is_alive()
    layer.set_colour(COLOURS[3])
    assert (paint_rgb(layer, VP) == COLOURS[0]).all()  # a paint after closing asks nothing
    qtbot.wait(50)
    assert layer.rendered in ([1], [1, 2])  # 2 was rendering, or dropped from the queue
    assert layer._shown.id == 1 and not layer.is_current(VP)


def test_updated_repaints_the_view_and_the_view_waits_for_the_layer(qtbot, view, small_svs) -> None:
    view.set_source(open_slide(small_svs))
    wait_drawn(qtbot, view)
    fake = FakeLayer()
    fake.gate.clear()
    view.add_layer(fake)
    try:
        qtbot.waitUntil(fake.started.is_set, timeout=5000)  # the next paint asked for its window
        assert not view.is_complete()  # a layer still rendering: the frame is not final
        with qtbot.waitSignal(view.painted, timeout=5000):
            fake.gate.set()  # its result comes in: updated, and the view repaints on its own
        qtbot.waitUntil(view.is_complete, timeout=5000)
        rgb = grab_rgb(view)
        assert (rgb[10:60, 10:60] == COLOURS[0]).all()  # drawn over the slide (opaque here)
        with qtbot.waitSignal(view.painted, timeout=5000):
            fake.set_colour(COLOURS[4])  # updated: a repaint, which asks for the new window
        qtbot.waitUntil(view.is_complete, timeout=5000)
        assert (grab_rgb(view)[10:60, 10:60] == COLOURS[4]).all()
    finally:
        fake.gate.set()
        view.close()
    assert fake._closed  # the view's close shut its layers down

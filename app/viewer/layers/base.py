"""What every layer of the slide view shares: the :class:`Layer` protocol and the windowed base.

The view paints its layers in order over the slide's tiles (:class:`~app.viewer.slide_view.SlideView`
keeps the list): each one paints itself for a viewport, says whether what it drew is final, tells
the view to repaint through its ``updated`` signal, and lets go of its threads on ``shutdown``.

:class:`WindowedLayer` is the skeleton of a layer rendered off the GUI thread as an image of a
*window* (the visible area plus half a view on every side, at the view's zoom): every request
carries an id; one low-priority worker thread renders it; a result whose id is not the latest is
dropped, never shown; the GUI thread only blits the image, so a pan frame is one scaled blit.
Subclasses say what a request holds (:meth:`~WindowedLayer.make_request`), what the worker needs
(:meth:`~WindowedLayer.render_args`) and how it renders (:meth:`~WindowedLayer.render`).
"""

from __future__ import annotations

import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, runtime_checkable

from PySide6.QtCore import QObject, QRectF, Signal, SignalInstance
from PySide6.QtGui import QImage, QPainter

from app.state.viewport import Viewport

log = logging.getLogger(__name__)

Window = tuple[float, float, float, float]  # x0, y0, x1, y1 in level-0 pixels
SlideSize = tuple[int, int] | None  # level-0 width and height of the slide shown (None: none)
MARGIN = 0.5  # a window reaches this fraction of the view beyond each edge


@runtime_checkable
class Layer(Protocol):
    """Something the slide view paints over the slide, in the view's list of layers."""

    updated: SignalInstance  # what the layer shows changed: the view repaints
    visible: bool

    def paint(self, p: QPainter, vp: Viewport, slide_size: SlideSize) -> None:
        """Draw for ``vp`` (``p`` maps logical screen pixels; ``slide_size``: the slide shown)."""

    def is_current(self, vp: Viewport) -> bool:
        """Whether what is drawn for ``vp`` is final (nothing older on screen, nothing rendering)."""

    def shutdown(self) -> None:
        """Stop the layer's threads (the view is closing)."""


class WindowRequest(Protocol):
    """What a windowed layer asks its worker for (frozen dataclasses in the subclasses)."""

    id: int
    version: int
    window: Window
    downsample: float
    dpr: float


class WindowResult(Protocol):
    """What the worker hands back: the request it answers and the image rendered for its window."""

    request: Any
    image: QImage


def answers(request: WindowRequest | None, version: int, vp: Viewport) -> bool:
    """Whether an image rendered (or being rendered) for ``request`` is right for ``vp``: the
    layer's current data ``version``, the same zoom and pixel ratio, and a window covering the view.
    """
    if request is None or request.version != version or request.downsample != vp.downsample \
            or request.dpr != vp.dpr:
        return False
    (x0, y0, x1, y1), (wx0, wy0, wx1, wy1) = vp.visible_rect(), request.window
    return x0 >= wx0 and y0 >= wy0 and x1 <= wx1 and y1 <= wy1


def window_around(vp: Viewport, margin: float = MARGIN) -> Window:
    """The visible area of ``vp`` with ``margin`` of a view added on every side."""
    x0, y0, x1, y1 = vp.visible_rect()
    mx, my = (x1 - x0) * margin, (y1 - y0) * margin
    return x0 - mx, y0 - my, x1 + mx, y1 + my


def blit_window(p: QPainter, image: QImage, window: Window, vp: Viewport,
                clip: QRectF | None = None) -> None:
    """Draw ``image``, rendered for the level-0 ``window``, where it lies on screen (only its
    visible part, within ``clip`` if given): one scaled blit, no per-pixel work."""
    wx0, wy0, wx1, wy1 = window
    sx, sy = vp.to_screen(wx0, wy0)
    target = QRectF(sx, sy, (wx1 - wx0) / vp.downsample, (wy1 - wy0) / vp.downsample)
    visible = target.intersected(QRectF(0, 0, vp.width, vp.height))
    if clip is not None:
        visible = visible.intersected(clip)
    if visible.isEmpty():
        return
    k = image.width() / target.width()  # image pixels per screen pixel
    source = QRectF((visible.x() - target.x()) * k, (visible.y() - target.y()) * k,
                    visible.width() * k, visible.height() * k)
    p.drawImage(visible, image, source)


def lower_priority() -> None:
    """A worker yields the CPU to the GUI thread when both want it (Linux: a per-thread nice)."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
    except (AttributeError, OSError):  # not Linux, or not allowed: the default priority will do
        pass


class PaintedLayer(QObject):
    """A layer drawn on the GUI thread each frame (a few strokes: nothing to render ahead)."""

    updated = Signal()

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.visible = True

    def paint(self, p: QPainter, vp: Viewport, slide_size: SlideSize) -> None:
        raise NotImplementedError

    def is_current(self, vp: Viewport) -> bool:
        return True

    def shutdown(self) -> None:
        """Nothing runs in the background."""


class WindowedLayer(QObject):
    """The request id / one worker / stale drop / blit skeleton of a layer rendered off-thread."""

    updated = Signal()  # a newly rendered window is in (or the layer changed): repaint
    _rendered = Signal(object)  # a WindowResult, from the worker thread (queued to the GUI thread)

    thread_name = "layer"
    wait_on_shutdown = False  # whether shutdown waits for a render in progress to end

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.visible = True
        self.version = 0  # bumped when what the layer shows changes: shown images go out of date
        self.stale_dropped = 0  # results that came back after a newer request: never shown
        self._latest = 0  # the id of the newest request; results of any other are stale
        self._pending: Any = None  # the request on its way
        self._shown: Any = None  # the request the image shown answers
        self._image: QImage | None = None
        self._closed = False
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=self.thread_name,
                                            initializer=lower_priority)
        self._rendered.connect(self._on_rendered)

    # -- what a subclass provides ------------------------------------------------------------------

    def has_data(self) -> bool:
        """Whether there is anything to draw (a store, a cache …)."""
        raise NotImplementedError

    def ready(self) -> bool:
        """Whether the data can be drawn yet (False: draw nothing, and the frame is not final)."""
        return True

    def make_request(self, request_id: int, vp: Viewport) -> WindowRequest:
        """The frozen request for ``vp`` (GUI thread)."""
        raise NotImplementedError

    def render_args(self, request: Any) -> tuple[Any, ...]:
        """What the worker needs besides ``request``, captured on the GUI thread."""
        return ()

    def render(self, request: Any, *args: Any) -> WindowResult | None:
        """Render ``request`` (worker thread); None: nothing to show (the data went away)."""
        raise NotImplementedError

    def accept(self, result: Any) -> None:
        """Take the latest request's result (GUI thread): by default, show its image."""
        self._image, self._shown = result.image, result.request

    def blit(self, p: QPainter, vp: Viewport, slide_size: SlideSize) -> None:
        """Draw the shown image (GUI thread)."""
        blit_window(p, self._image, self._shown.window, vp)  # type: ignore[arg-type]

    def answers(self, request: WindowRequest | None, vp: Viewport) -> bool:
        """Whether ``request`` is what ``vp`` needs now (a subclass may ask for more)."""
        return answers(request, self.version, vp)

    # -- the skeleton ------------------------------------------------------------------------------

    def next_id(self) -> int:
        """A new request id: every earlier request is stale from now on."""
        self._latest += 1
        return self._latest

    def forget(self) -> None:
        """Drop the image shown and whatever is in flight (the data changed altogether)."""
        self._image = self._shown = self._pending = None
        self.next_id()

    def is_current(self, vp: Viewport) -> bool:
        if not self.visible or not self.has_data():
            return True
        return self.ready() and self.answers(self._shown, vp)

    def request(self, vp: Viewport) -> None:
        """Ask the worker for ``vp``'s window, unless the right one is on its way."""
        if self.answers(self._pending, vp):
            return
        req = self.make_request(self.next_id(), vp)
        self.submit(req, *self.render_args(req))

    def submit(self, request: WindowRequest, *args: Any) -> None:
        if self._closed:
            return  # a paint after the view closed: the worker is gone
        self._pending = request
        self._executor.submit(self._run, request, *args)

    def _run(self, request: WindowRequest, *args: Any) -> None:
        if request.id != self._latest:
            return  # a newer request came while this one waited
        try:
            result = self.render(request, *args)
        except Exception:  # noqa: BLE001 - a worker must never die silently
            log.exception("%s: render failed", type(self).__name__)
            return
        if result is not None:
            self._rendered.emit(result)

    def _on_rendered(self, result: WindowResult) -> None:
        if result.request.id != self._latest:
            self.stale_dropped += 1
            return
        self._pending = None
        self.accept(result)
        self.updated.emit()

    def paint(self, p: QPainter, vp: Viewport, slide_size: SlideSize = None) -> None:
        """Blit the layer, asking for a new window when the shown one does not answer ``vp``."""
        if not self.visible or not self.has_data() or not self.ready():
            return
        if not self.answers(self._shown, vp):
            self.request(vp)
        if self._image is not None and self._shown is not None:
            self.blit(p, vp, slide_size)

    def shutdown(self) -> None:
        self._closed = True
        self.next_id()  # whatever is queued is dropped
        self._executor.shutdown(wait=self.wait_on_shutdown, cancel_futures=True)

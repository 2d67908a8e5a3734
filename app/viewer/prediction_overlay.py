"""The prediction layer of the slide view: the model's classes (mask, outlines or heatmap) over the slide.

Like the annotation layer, it is an image of a *window* (the visible area plus half a view on every
side) at the view's zoom. One low-priority worker thread reads the window from the prediction cache
(the coarsest cache level that is still as fine as the screen), colours it
(:func:`app.state.predictions.colorize`) and scales it to screen pixels (numpy, which lets go of the
GIL: the GUI thread is not held up); the GUI thread only blits
it, so panning costs one blit. New tiles (the run fills the cache) bump :attr:`version`; the next
paint asks for the window again and keeps drawing the older image until the new one is in.
Results of older requests are dropped.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from PySide6.QtCore import QObject, Signal
from PySide6.QtGui import QImage, QPainter

from app.state.predictions import PredictionStyle, colorize
from app.state.viewport import Viewport
from app.viewer.overlay import MARGIN, _lower_priority, answers, blit_window
from engine.api import PredictionCache

log = logging.getLogger(__name__)

Window = tuple[float, float, float, float]


@dataclass(frozen=True)
class PredictionRequest:
    id: int
    version: int
    window: Window  # level-0 pixels, snapped to the cache level's pixels
    level: int
    downsample: float
    dpr: float
    style: PredictionStyle


@dataclass(frozen=True)
class PredictionImage:
    request: PredictionRequest
    image: QImage  # a view of ``pixels`` (no copy): keep both together
    pixels: np.ndarray
    seconds: float


class PredictionOverlay(QObject):
    """Draws a prediction cache over the slide; owned by the slide view."""

    updated = Signal()  # a newly rendered window is in: repaint
    _rendered = Signal(object)  # PredictionImage, from the worker (queued to the GUI thread)

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.cache: PredictionCache | None = None
        self.style = PredictionStyle(((220, 30, 30),))
        self.visible = True
        self.version = 0
        self.render_seconds = 0.0
        self._latest = 0
        self._pending: PredictionRequest | None = None
        self._shown: PredictionRequest | None = None
        self._image: QImage | None = None
        self._pixels: np.ndarray | None = None  # the image's memory
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="prediction-overlay",
                                            initializer=_lower_priority)
        self._rendered.connect(self._on_rendered)

    # -- data and style (GUI thread) -------------------------------------------------------------

    def set_cache(self, cache: PredictionCache | None) -> None:
        self.cache = cache
        self._image = self._shown = self._pending = None
        self.invalidate()

    def set_style(self, style: PredictionStyle) -> None:
        self.style = style
        self.invalidate()

    def set_visible(self, visible: bool) -> None:
        self.visible = visible
        self.updated.emit()

    def invalidate(self) -> None:
        """The cache or the style changed: the next paint renders the window again."""
        self.version += 1
        self.updated.emit()

    def is_current(self, vp: Viewport) -> bool:
        """Whether the image shown answers the current data, style and viewport (or none is due)."""
        if not self.visible or self.cache is None:
            return True
        return answers(self._shown, self.version, vp)

    # -- rendering -------------------------------------------------------------------------------

    def _request(self, vp: Viewport) -> None:
        cache = self.cache
        assert cache is not None
        p = self._pending
        if answers(p, self.version, vp):
            return  # the right window is on its way
        x0, y0, x1, y1 = vp.visible_rect()
        mx, my = (x1 - x0) * MARGIN, (y1 - y0) * MARGIN
        level = cache.best_level_for_downsample(vp.downsample / vp.dpr)
        lds = cache.level_downsample(level)
        w0, h0 = math.floor((x0 - mx) / lds) * lds, math.floor((y0 - my) / lds) * lds
        w1, h1 = math.ceil((x1 + mx) / lds) * lds, math.ceil((y1 + my) / lds) * lds
        self._latest += 1
        req = PredictionRequest(self._latest, self.version, (w0, h0, w1, h1), level, vp.downsample,
                                vp.dpr, self.style)
        self._pending = req
        self._executor.submit(self._render, req, cache)

    def _render(self, req: PredictionRequest, cache: PredictionCache) -> None:
        if req.id != self._latest:
            return  # a newer request came while this one waited
        t0 = time.perf_counter()
        try:
            x0, y0, x1, y1 = req.window
            lds = cache.level_downsample(req.level)
            w, h = round((x1 - x0) / lds), round((y1 - y0) / lds)
            rgba = colorize(cache.read_region(req.level, x0, y0, w, h), req.style)
            scale = req.dpr / req.downsample  # device pixels per level-0 pixel
            sw, sh = max(1, round((x1 - x0) * scale)), max(1, round((y1 - y0) * scale))
            # nearest-neighbour to screen pixels in numpy (QImage.scaled would hold the GIL and
            # stall the GUI thread): class borders stay crisp, pixels keep their exact colour
            # stored as Qt's ARGB32_Premultiplied (B, G, R, A bytes on little-endian machines):
            # the format QPainter blends without converting the image at every frame
            order = [2, 1, 0, 3] if sys.byteorder == "little" else [3, 0, 1, 2]
            px = np.ascontiguousarray(rgba[..., order]).view(np.uint32)[..., 0]
            px = np.take(np.take(px, np.arange(sh) * h // sh, axis=0), np.arange(sw) * w // sw, axis=1)
            buf = np.ascontiguousarray(px)
            img = QImage(buf.data, sw, sh, 4 * sw, QImage.Format.Format_ARGB32_Premultiplied)
        except Exception:  # noqa: BLE001 - a worker must never die silently
            log.exception("prediction overlay render failed")
            return
        self._rendered.emit(PredictionImage(req, img, buf, time.perf_counter() - t0))

    def _on_rendered(self, res: PredictionImage) -> None:
        if res.request.id != self._latest:
            return  # stale: a newer window is on its way
        self._pending = None
        self._image, self._pixels, self._shown = res.image, res.pixels, res.request
        self.render_seconds = res.seconds
        self.updated.emit()

    # -- painting (GUI thread) -------------------------------------------------------------------

    def paint(self, p: QPainter, vp: Viewport) -> None:
        """Blit the layer (asking for a new window when the shown one is out of date)."""
        if not self.visible or self.cache is None:
            return
        if not self.is_current(vp):
            self._request(vp)
        image, shown = self._image, self._shown
        if image is None or shown is None:
            return
        blit_window(p, image, shown.window, vp)

    def shutdown(self) -> None:
        self._latest += 1  # whatever is queued is dropped
        self._executor.shutdown(wait=True, cancel_futures=True)


"""The prediction layer of the slide view: the model's classes (mask, outlines or heatmap) over the slide.

A :class:`~app.viewer.layers.base.WindowedLayer`: the worker reads the window from the prediction
cache (the coarsest cache level that is still as fine as the screen), colours it
(:func:`app.state.predictions.colorize`) and scales it to screen pixels (numpy, which lets go of the
GIL: the GUI thread is not held up). New tiles (the run fills the cache) bump :attr:`version`; the
next paint asks for the window again and keeps drawing the older image until the new one is in.

Predictions are drawn in the prediction colours (:mod:`app.viewer.layers.palette`), never in a
correction class's colour. Outlines are a band :data:`~app.viewer.overlay_render.OUTLINE_PX`
logical pixels wide on the inner side of each class's edge, at any zoom and pixel ratio.

Nothing is painted outside tissue: with the slide's tissue mask (:meth:`PredictionOverlay.set_tissue`,
from the run's tissue detection) every probability outside it reads as 0, so neither the mask, its
outlines nor the heatmap show on glass, not even inside a predicted tile. The coarse mask (1/16) is
interpolated bilinearly to the cache pixels, so its edge follows the tissue, not a block staircase.

Until the run's tiles arrive, the pixels of tiles not yet predicted show the run's preview of the
visible field (:meth:`PredictionOverlay.set_preview`: one forward pass over the whole field,
without the blending of the final windows), so a mask is on screen within seconds of Run; each
final tile replaces it as it comes.

Opacity is the painter's (images are rendered opaque-strength), so an opacity change is the next
frame; a mode change re-colours the visible part of the shown window at once in the GUI thread (from
the probabilities the image was made of: no disk read) and the worker re-renders the whole window.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from PySide6.QtCore import QObject
from PySide6.QtGui import QImage, QPainter

from app.state.predictions import PredictionStyle, colorize
from app.state.viewport import Viewport
from app.viewer.layers.base import SlideSize, Window, WindowedLayer, answers, window_around
from app.viewer.layers.palette import prediction_color, with_prediction_colors
from app.viewer.overlay_render import OUTLINE_PX
from engine.api import PredictionCache


@dataclass(frozen=True)
class PredictionRequest:
    id: int
    version: int
    window: Window  # level-0 pixels, snapped to the cache level's pixels
    level: int
    downsample: float
    dpr: float
    style: PredictionStyle

    @property
    def line(self) -> int:
        """Outline width in device pixels."""
        return max(1, round(OUTLINE_PX * self.dpr))


@dataclass(frozen=True)
class PredictionImage:
    request: PredictionRequest
    image: QImage  # a view of ``pixels`` (no copy): keep both together
    pixels: np.ndarray
    seconds: float
    probs: np.ndarray | None = None  # the cache region it was made of (tissue-clipped), cache level
    read_at: float = 0.0  # time.perf_counter() when the cache was read
    data_version: int = 0  # the overlay's data_version the probabilities answer
    preview: Any = None  # the run's preview that filled its pending tiles, if one did


#: The last clip made: (mask, downsample, region) and the clip. A run re-renders the same window
#: for every tile that arrives, and a clip of a screen-sized window is the render's largest part.
_last_clip: tuple[Any, tuple[float, ...], np.ndarray] | None = None


def tissue_clip(tissue: Any, x0: float, y0: float, lds: float, w: int, h: int) -> np.ndarray:
    """(h, w) bool: which pixels of a cache-level region (top-left at level-0 (x0, y0), ``lds``
    level-0 px per pixel) are tissue, by bilinear interpolation of the coarse ``tissue`` mask
    (:class:`~engine.api.TissueMask`) at pixel centres, kept where it is at least one half. The
    last one is kept (read-only): the same mask and region give it again without work."""
    global _last_clip
    key = (float(tissue.downsample), float(x0), float(y0), float(lds), float(w), float(h))
    last = _last_clip
    if last is not None and last[0] is tissue.mask and last[1] == key:
        return last[2]
    clip = _tissue_clip(tissue.mask, float(tissue.downsample), x0, y0, lds, w, h)
    clip.flags.writeable = False
    _last_clip = (tissue.mask, key, clip)
    return clip


def _tissue_clip(mask: np.ndarray, ds: float, x0: float, y0: float, lds: float, w: int, h: int
                 ) -> np.ndarray:
    mh, mw = mask.shape

    def axis(start: float, n: int, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        u = (start + (np.arange(n) + 0.5) * lds) / ds - 0.5  # mask coordinates of pixel centres
        i0 = np.floor(u).astype(np.int64)
        f = (u - i0).astype(np.float32)
        return np.clip(i0, 0, size - 1), np.clip(i0 + 1, 0, size - 1), f

    xa, xb, fx = axis(x0, w, mw)
    ya, yb, fy = axis(y0, h, mh)
    lo, hi = int(min(ya.min(initial=0), yb.min(initial=0))), int(max(ya.max(initial=0), yb.max(initial=0)))
    rows = mask[lo:hi + 1].astype(np.float32)  # only the mask rows the region needs
    across = rows[:, xa] * (1 - fx) + rows[:, xb] * fx  # (rows, w)
    out = across[ya - lo] * (1 - fy)[:, None] + across[yb - lo] * fy[:, None]
    return out >= 0.5


def fill_pending(probs: np.ndarray, cache: PredictionCache, preview: Any, x0: float, y0: float,
                 lds: float) -> np.ndarray:
    """``probs`` (h, w, channels) uint8, a region of a cache level (top-left at level-0 (x0, y0),
    ``lds`` level-0 px per pixel), with the pixels of tiles not final yet taken from ``preview``
    (an engine ``Preview``: (channels, ph, pw) probabilities over its level-0 rect), nearest
    preview pixel, where the preview covers them."""
    h, w = probs.shape[:2]
    grid = cache.grid
    px, py = round(x0 / lds), round(y0 / lds)  # as read_region places the region
    xs = (px + np.arange(w) + 0.5) * lds  # level-0 centres of the region's columns and rows
    ys = (py + np.arange(h) + 0.5) * lds
    cols = ((xs / grid.downsample + grid.origin) // grid.tile).astype(np.int64)
    rows = ((ys / grid.downsample + grid.origin) // grid.tile).astype(np.int64)
    n_rows, n_cols = cache.tissue.shape
    done = np.zeros((n_rows + 1, n_cols + 1), bool)
    for c, r in cache.done_tiles():
        done[r, c] = True
    pending = ~done[np.clip(rows, 0, n_rows)[:, None], np.clip(cols, 0, n_cols)[None, :]]
    rx, ry, _, _ = preview.rect
    pc = np.floor((xs - rx) / preview.downsample).astype(np.int64)
    pr = np.floor((ys - ry) / preview.downsample).astype(np.int64)
    ph, pw = preview.probs.shape[1:]
    inside = ((pr >= 0) & (pr < ph))[:, None] & ((pc >= 0) & (pc < pw))[None, :]
    take = pending & inside
    if not take.any():
        return probs
    coarse = np.clip(np.rint(preview.probs * 255), 0, 255).astype(np.uint8)  # (C, ph, pw)
    rr, cc = np.nonzero(take)
    out = probs.copy()
    out[rr, cc] = coarse[:, pr[rr], pc[cc]].T[:, :probs.shape[2]]
    return out


def inner_band(px: np.ndarray, width: int) -> np.ndarray:
    """``px`` (uint32 colours, 0 transparent) kept only within ``width`` pixels of a pixel of
    another colour: each class's outline, drawn on its inner side (never on the transparent side).
    Boolean shifts, a few milliseconds for a screen-sized window."""
    edge = np.zeros(px.shape, bool)
    across, down = px[:, 1:] != px[:, :-1], px[1:] != px[:-1]
    edge[:, 1:] |= across
    edge[:, :-1] |= across
    edge[1:] |= down
    edge[:-1] |= down
    wide = edge.copy()
    for d in range(1, width):
        wide[:, d:] |= edge[:, :-d]
        wide[:, :-d] |= edge[:, d:]
    band = wide.copy()
    for d in range(1, width):
        band[d:] |= wide[:-d]
        band[:-d] |= wide[d:]
    return np.where(band & (px != 0), px, np.uint32(0))


def screen_pixels(probs: np.ndarray, style: PredictionStyle, sw: int, sh: int,
                  part: tuple[int, int, int, int] | None = None,
                  line: int = 0) -> tuple[QImage, np.ndarray]:
    """``probs`` coloured (at full strength: the painter applies the opacity) and scaled to ``sw`` ×
    ``sh`` screen pixels by nearest neighbour, in numpy (QImage.scaled would hold the GIL and stall
    the GUI thread): class borders stay crisp, pixels keep their exact colour. ``part`` (x0, y0, x1,
    y1 in screen pixels) colours only that part of the picture (the rest stays transparent), pixel
    for pixel as the whole. Outlines (mask mode) are ``line`` screen pixels wide (0: two pixels of
    the cache level). Stored as Qt's ARGB32_Premultiplied (B, G, R, A bytes on little-endian
    machines): the format QPainter blends without converting the image at every frame."""
    h, w = probs.shape[:2]
    j0, i0, j1, i1 = part or (0, 0, sw, sh)
    outline = style.mode == "mask" and style.outline and line > 0
    m = line if outline else 0  # an outline depends on the pixels around: colour them too
    a0, b0, a1, b1 = max(0, j0 - m), max(0, i0 - m), min(sw, j1 + m), min(sh, i1 + m)
    rows, cols = np.arange(b0, b1) * h // sh, np.arange(a0, a1) * w // sw
    r0, c0 = max(0, int(rows.min(initial=0)) - 2), max(0, int(cols.min(initial=0)) - 2)
    r1, c1 = int(rows.max(initial=0)) + 3, int(cols.max(initial=0)) + 3
    rgba = colorize(probs[r0:r1, c0:c1], replace(style, opacity=1.0, outline=style.outline
                                                   and not outline))
    order = [2, 1, 0, 3] if sys.byteorder == "little" else [3, 0, 1, 2]
    px = np.ascontiguousarray(rgba[..., order]).view(np.uint32)[..., 0]
    picked = np.take(np.take(px, rows - r0, axis=0), cols - c0, axis=1)
    if outline:
        picked = inner_band(picked, line)[i0 - b0:i1 - b0, j0 - a0:j1 - a0]
    if part is None:
        buf = np.ascontiguousarray(picked)
    else:
        buf = np.zeros((sh, sw), np.uint32)  # calloc: untouched pages cost nothing
        buf[i0:i1, j0:j1] = picked
    return QImage(buf.data, sw, sh, 4 * sw, QImage.Format.Format_ARGB32_Premultiplied), buf


def _drawing(a: PredictionStyle, b: PredictionStyle) -> bool:
    """Whether two styles draw different images (opacity aside: the painter applies it)."""
    return replace(a, opacity=1.0) != replace(b, opacity=1.0)


class PredictionOverlay(WindowedLayer):
    """Draws a prediction cache over the slide; owned by the slide view."""

    thread_name = "prediction-overlay"
    wait_on_shutdown = True

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.cache: PredictionCache | None = None
        self.tissue: Any = None  # the slide's TissueMask: nothing is painted outside it
        self.waiting_for_tissue = False  # paint nothing until set_tissue (the run is finding it)
        self.style = PredictionStyle((prediction_color(0),))
        self.render_seconds = 0.0
        self._pixels: np.ndarray | None = None  # the image's memory
        self._probs: np.ndarray | None = None  # what the shown image was coloured from
        self._probs_key: tuple[int, Window, int] | None = None  # (data_version, window, level)
        self.preview: Any = None  # the run's coarse preview of the field, under pending tiles
        self.data_version = 0  # bumped when the cache's contents or the tissue change
        self.shown_read_at = 0.0  # when the cache was read for the image shown (benchmarks)
        self.shown_preview: Any = None  # the preview in the image shown, if any (benchmarks)

    # -- data and style (GUI thread) -------------------------------------------------------------

    def set_cache(self, cache: PredictionCache | None, tissue: Any = None,
                  wait_for_tissue: bool = False) -> None:
        """Show ``cache`` clipped to ``tissue`` (a TissueMask; None: unclipped, or, with
        ``wait_for_tissue``, nothing until :meth:`set_tissue` brings it)."""
        self.cache = cache
        self.tissue = tissue
        self.preview = None
        self.waiting_for_tissue = wait_for_tissue and tissue is None and cache is not None
        self._forget_probs()
        self.invalidate()

    def set_tissue(self, tissue: Any) -> None:
        """The slide's tissue mask (None: stop waiting, paint unclipped)."""
        self.tissue = tissue
        self.waiting_for_tissue = False
        self._forget_probs()
        self.invalidate()

    def set_preview(self, preview: Any) -> None:
        """The run's coarse preview of the visible field (an engine ``Preview``): drawn where the
        cache's tiles are not final yet, until they are (None: no preview)."""
        self.preview = preview
        self.invalidate()

    def _forget_probs(self) -> None:
        self.forget()
        self._probs = self._probs_key = None

    def set_style(self, style: PredictionStyle, vp: Viewport | None = None) -> None:
        """A new style (drawn in the prediction colours), on screen at the next frame: an opacity
        change is the painter's; a mode change re-colours the visible part of the shown image now
        (``vp``: the view)."""
        old, self.style = self.style, with_prediction_colors(style)
        if not _drawing(old, self.style):
            self.updated.emit()  # the same image at another opacity
            return
        self.version += 1
        if vp is not None:
            self._recolour_now(vp)
        self.updated.emit()

    def _recolour_now(self, vp: Viewport) -> None:
        """Re-colour the visible part of the shown window from its probabilities, in this thread
        (shown as the current version), and ask the worker for the whole window behind it."""
        key, probs, cache, shown = self._probs_key, self._probs, self.cache, self._shown
        if key is None or probs is None or cache is None or shown is None \
                or key[0] != self.data_version:
            return
        _, window, level = key
        if not answers(replace(shown, window=window), shown.version, vp):
            return  # another zoom, or the view left the window: the worker renders afresh
        t0 = time.perf_counter()
        wx0, wy0, wx1, wy1 = window
        scale = shown.dpr / shown.downsample  # as the worker scales the whole window
        sw, sh = max(1, round((wx1 - wx0) * scale)), max(1, round((wy1 - wy0) * scale))
        kx, ky = sw / (wx1 - wx0), sh / (wy1 - wy0)  # image pixels per level-0 pixel
        x0, y0, x1, y1 = vp.visible_rect()  # the view's part of the image, a pixel around it
        j0, i0 = max(0, math.floor((x0 - wx0) * kx) - 1), max(0, math.floor((y0 - wy0) * ky) - 1)
        j1, i1 = min(sw, math.ceil((x1 - wx0) * kx) + 1), min(sh, math.ceil((y1 - wy0) * ky) + 1)
        if j1 <= j0 or i1 <= i0:
            return
        now = PredictionRequest(self.next_id(), self.version, window, level, shown.downsample,
                                shown.dpr, self.style)
        self._image, self._pixels = screen_pixels(probs, self.style, sw, sh, (j0, i0, j1, i1),
                                                  now.line)
        self._shown = now
        self.render_seconds = time.perf_counter() - t0
        # the whole window, coloured by the worker from the same probabilities
        self.submit(replace(now, id=self.next_id()), cache, self.tissue, probs, self.data_version)

    def set_visible(self, visible: bool) -> None:
        self.visible = visible
        self.updated.emit()

    def invalidate(self) -> None:
        """The cache's contents changed: the next paint renders the window again."""
        self.data_version += 1
        self.version += 1
        self.updated.emit()

    def class_names(self) -> tuple[str, ...]:
        """The foreground classes of the cache shown, by channel (none without a cache)."""
        return tuple(self.cache.class_names) if self.cache is not None else ()

    # -- rendering (the windowed layer's hooks) --------------------------------------------------

    def has_data(self) -> bool:
        return self.cache is not None

    def ready(self) -> bool:
        return not self.waiting_for_tissue

    def make_request(self, request_id: int, vp: Viewport) -> PredictionRequest:
        cache = self.cache
        assert cache is not None
        x0, y0, x1, y1 = window_around(vp)
        level = cache.best_level_for_downsample(vp.downsample / vp.dpr)
        lds = cache.level_downsample(level)
        w0, h0 = math.floor(x0 / lds) * lds, math.floor(y0 / lds) * lds
        w1, h1 = math.ceil(x1 / lds) * lds, math.ceil(y1 / lds) * lds
        return PredictionRequest(request_id, self.version, (w0, h0, w1, h1), level, vp.downsample,
                                 vp.dpr, self.style)

    def render_args(self, req: PredictionRequest) -> tuple[Any, ...]:
        # the same data in the same window (a mode change): colour what the shown image was made of
        kept = self._probs_key == (self.data_version, req.window, req.level)
        return (self.cache, self.tissue, self._probs if kept else None, self.data_version,
                self.preview)

    def render(self, req: PredictionRequest, cache: PredictionCache, tissue: Any,
               probs: np.ndarray | None, data_version: int = 0, preview: Any = None
               ) -> PredictionImage:
        t0 = time.perf_counter()
        read_at = 0.0  # 0: coloured again from probabilities read earlier
        x0, y0, x1, y1 = req.window
        lds = cache.level_downsample(req.level)
        w, h = round((x1 - x0) / lds), round((y1 - y0) / lds)
        used = None
        if probs is None or probs.shape[:2] != (h, w):
            read_at = time.perf_counter()
            probs = cache.read_region(req.level, x0, y0, w, h)
            if preview is not None and not cache.complete:  # pending tiles: the preview stands in
                probs, used = fill_pending(probs, cache, preview, x0, y0, lds), preview
            if tissue is not None:  # nothing outside tissue, whatever the tiles hold
                probs *= tissue_clip(tissue, x0, y0, lds, w, h)[..., None]
        scale = req.dpr / req.downsample  # device pixels per level-0 pixel
        sw, sh = max(1, round((x1 - x0) * scale)), max(1, round((y1 - y0) * scale))
        img, buf = screen_pixels(probs, req.style, sw, sh, line=req.line)
        return PredictionImage(req, img, buf, time.perf_counter() - t0, probs, read_at, data_version, used)

    def accept(self, res: PredictionImage) -> None:
        self._image, self._pixels, self._shown = res.image, res.pixels, res.request
        self._probs = res.probs
        self._probs_key = (res.data_version, res.request.window, res.request.level)
        if res.read_at:
            self.shown_read_at = res.read_at
            self.shown_preview = res.preview
        self.render_seconds = res.seconds

    def blit(self, p: QPainter, vp: Viewport, slide_size: SlideSize) -> None:
        p.save()
        p.setOpacity(self.style.opacity)
        super().blit(p, vp, slide_size)
        p.restore()

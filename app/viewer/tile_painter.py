"""Drawing tiles: parts of cached images into a viewport, and tiles pre-scaled to the current zoom.

Scaling a full screen of tiles with bilinear filtering costs 10–30 ms per frame; panning at a fixed
zoom would pay it every frame. :class:`ScaledTiles` keeps each visible tile scaled once (bilinear,
as a direct draw would), so that a panning frame is a set of plain blits.
"""

from __future__ import annotations

from PySide6.QtCore import QPointF, QRectF
from PySide6.QtGui import QImage, QPainter

from app.state.viewport import SlideGeometry, Viewport
from engine.api import ByteBoundedCache, RegionRequest, TileGrid

Rect0 = tuple[float, float, float, float]  # x, y, w, h in level-0 pixels
FALLBACK_LEVELS = 5  # how many coarser levels a missing tile may borrow from


def draw_part(p: QPainter, vp: Viewport, img: QImage, img_rect0: Rect0, want0: Rect0) -> None:
    """Draw the part of ``img`` (which covers ``img_rect0``) that lies inside ``want0``."""
    ix, iy, iw, ih = img_rect0
    wx, wy, ww, wh = want0
    x0, y0 = max(ix, wx), max(iy, wy)
    x1, y1 = min(ix + iw, wx + ww), min(iy + ih, wy + wh)
    if x1 <= x0 or y1 <= y0 or iw <= 0 or ih <= 0:
        return
    sx, sy = img.width() / iw, img.height() / ih
    src = QRectF((x0 - ix) * sx, (y0 - iy) * sy, (x1 - x0) * sx, (y1 - y0) * sy)
    (ax, ay), (bx, by) = vp.to_screen(x0, y0), vp.to_screen(x1, y1)
    p.drawImage(QRectF(ax, ay, bx - ax, by - ay), img, src)



def paint_fallback(p: QPainter, vp: Viewport, g: TileGrid, geo: SlideGeometry,
                   cache: ByteBoundedCache, thumbnail: QImage | None, level: int,
                   rect0: Rect0) -> None:
    """Fill a missing tile's place with the best coarser cached tiles (or the thumbnail), scaled.

    The finest coarser level that covers the place on its own is drawn alone; failing that, the
    thumbnail and every partial level above it, coarse to fine.
    """
    x, y, w, h = rect0
    top = min(len(geo.level_downsamples) - 1, level + FALLBACK_LEVELS)
    layers: list[list[tuple[QImage, Rect0]]] = []
    for lvl in range(level + 1, top + 1):  # fine to coarse
        tiles = list(g.tiles_in(lvl, x, y, x + w, y + h))
        found = [(img, g.tile_rect_level0(t)) for t in tiles
                 if (img := cache.peek(g.request(t))) is not None]
        if found and len(found) == len(tiles):
            for img, r0 in found:
                draw_part(p, vp, img, r0, rect0)
            return
        layers.append(found)
    if thumbnail is not None and not thumbnail.isNull():
        draw_part(p, vp, thumbnail, (0.0, 0.0, float(geo.width), float(geo.height)), rect0)
    for found in reversed(layers):  # coarse first, finer ones painted over them
        for img, r0 in found:
            draw_part(p, vp, img, r0, rect0)

class ScaledTiles:
    """Tiles scaled to their exact device-pixel rectangles at one zoom, kept while panning.

    A tile's rectangle on screen depends on the zoom and on the sub-pixel phase of the slide's origin
    on screen; pans by whole pixels (drags, arrow keys) keep both, so the scaled tiles stay valid.
    Each tile is scaled to the rounded rectangle between its rounded edges: neighbours meet exactly.
    """

    def __init__(self) -> None:
        self._scale: tuple[float, int, int, float] | None = None
        self._images: dict[RegionRequest, QImage] = {}

    def __len__(self) -> int:
        return len(self._images)

    @staticmethod
    def device_rect(vp: Viewport, rect0: Rect0) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1) of a level-0 rectangle on screen, in whole device pixels."""
        d = vp.dpr or 1.0
        (ax, ay), (bx, by) = vp.to_screen(rect0[0], rect0[1]), vp.to_screen(rect0[0] + rect0[2],
                                                                          rect0[1] + rect0[3])
        return round(ax * d), round(ay * d), round(bx * d), round(by * d)

    def get(self, key: RegionRequest, img: QImage, vp: Viewport, rect0: Rect0,
            make: bool) -> tuple[QImage, QPointF] | None:
        """``img`` scaled into its device rectangle (made now if ``make``) and where to blit it."""
        d = vp.dpr or 1.0
        ox, oy = vp.to_screen(0.0, 0.0)
        scale = (vp.downsample, round((ox * d) % 1.0 * 64), round((oy * d) % 1.0 * 64), d)
        if self._scale != scale:
            self._images.clear()
            self._scale = scale
        x0, y0, x1, y1 = self.device_rect(vp, rect0)
        scaled = self._images.get(key)
        if scaled is None or (scaled.width(), scaled.height()) != (x1 - x0, y1 - y0):
            if not make or x1 <= x0 or y1 <= y0:
                return None
            scaled = QImage(x1 - x0, y1 - y0, QImage.Format.Format_ARGB32_Premultiplied)
            sp = QPainter(scaled)  # bilinear, like drawing the tile directly, so no dearer per frame
            sp.setCompositionMode(QPainter.CompositionMode.CompositionMode_Source)  # no fill needed
            sp.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform)
            sp.drawImage(QRectF(0, 0, x1 - x0, y1 - y0), img, QRectF(img.rect()))
            sp.end()
            scaled.setDevicePixelRatio(d)
            self._images[key] = scaled
        return scaled, QPointF(x0 / d, y0 / d)

    def keep_only(self, keys: set[RegionRequest]) -> None:
        for k in [k for k in self._images if k not in keys]:
            del self._images[k]

    def clear(self) -> None:
        self._images.clear()
        self._scale = None

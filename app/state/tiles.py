"""Tile plans: which tiles a viewport needs now, and which to prefetch once those are in."""

from __future__ import annotations

from dataclasses import dataclass

from app.state.viewport import SlideGeometry, Viewport
from engine.api import TileGrid, TileId


@dataclass(frozen=True)
class TilePlan:
    """The tiles of one viewport: ``visible`` (centre first), then the low-priority prefetch sets."""

    level: int
    visible: tuple[TileId, ...]
    ring: tuple[TileId, ...] = ()
    finer: tuple[TileId, ...] = ()


def _center_out(tiles: list[TileId], grid: TileGrid, cx: float, cy: float) -> list[TileId]:
    def dist(t: TileId) -> float:
        x, y, w, h = grid.tile_rect_level0(t)
        return (x + w / 2 - cx) ** 2 + (y + h / 2 - cy) ** 2

    return sorted(tiles, key=dist)


def plan_tiles(grid: TileGrid, geometry: SlideGeometry, viewport: Viewport,
               cursor: tuple[float, float] | None = None, ring_tiles: int = 1) -> TilePlan:
    """Plan the tiles for ``viewport``; ``cursor`` (screen px) steers the next-finer-level prefetch."""
    level = viewport.level(geometry)
    x0, y0, x1, y1 = viewport.visible_rect()
    visible = _center_out(list(grid.tiles_in(level, x0, y0, x1, y1)), grid, viewport.cx, viewport.cy)
    seen = set(visible)
    pad = grid.tile_size * geometry.level_downsamples[level] * ring_tiles
    ring = [t for t in grid.tiles_in(level, x0 - pad, y0 - pad, x1 + pad, y1 + pad) if t not in seen]
    ring = _center_out(ring, grid, viewport.cx, viewport.cy)
    finer: list[TileId] = []
    if level > 0 and cursor is not None:
        px, py = viewport.to_slide(*cursor)
        # a quarter of the screen around the cursor, at the next finer level
        hw, hh = viewport.width * viewport.downsample / 4, viewport.height * viewport.downsample / 4
        finer = _center_out(list(grid.tiles_in(level - 1, px - hw, py - hh, px + hw, py + hh)), grid, px, py)
    return TilePlan(level, tuple(visible), tuple(ring), tuple(finer))

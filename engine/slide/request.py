"""Region requests: the immutable, hashable value that names a piece of a slide (and keys caches)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RegionRequest:
    """A rectangle of one pyramid level, like ``openslide.read_region``.

    ``x``, ``y`` are level-0 pixel coordinates of the top-left corner; ``width`` and ``height`` are in
    pixels of ``level``. ``slide`` is the slide's path (or any id that is unique per open slide).
    """

    slide: str
    level: int
    x: int
    y: int
    width: int
    height: int

    def __post_init__(self) -> None:
        if self.level < 0:
            raise ValueError(f"level must be ≥ 0, got {self.level}")
        if self.width <= 0 or self.height <= 0:
            raise ValueError(f"region size must be positive, got {self.width}×{self.height}")

    @property
    def nbytes_rgba(self) -> int:
        """Bytes of this region as 32-bit pixels (what the caches weigh)."""
        return self.width * self.height * 4


@dataclass(frozen=True, slots=True)
class TileId:
    """One tile of a regular grid on a level: column ``col``, row ``row``."""

    level: int
    col: int
    row: int


@dataclass(frozen=True, slots=True)
class TileGrid:
    """The regular tiling of every level of one slide, with edge tiles cropped to the level."""

    slide: str
    level_dimensions: tuple[tuple[int, int], ...]
    level_downsamples: tuple[float, ...]
    tile_size: int = 512

    def grid_shape(self, level: int) -> tuple[int, int]:
        """(columns, rows) of tiles on ``level``."""
        w, h = self.level_dimensions[level]
        return math.ceil(w / self.tile_size), math.ceil(h / self.tile_size)

    def tile_bounds(self, tile: TileId) -> tuple[int, int, int, int]:
        """(x, y, w, h) of ``tile`` in pixels of its own level, cropped at the level's edge."""
        w, h = self.level_dimensions[tile.level]
        x0, y0 = tile.col * self.tile_size, tile.row * self.tile_size
        return x0, y0, min(self.tile_size, w - x0), min(self.tile_size, h - y0)

    def request(self, tile: TileId) -> RegionRequest:
        """The region request that reads ``tile``."""
        x, y, w, h = self.tile_bounds(tile)
        ds = self.level_downsamples[tile.level]
        return RegionRequest(self.slide, tile.level, round(x * ds), round(y * ds), w, h)

    def tiles_in(self, level: int, x0: float, y0: float, x1: float, y1: float) -> Iterator[TileId]:
        """Tiles of ``level`` that meet the level-0 rectangle [x0, x1) × [y0, y1), row by row."""
        ds = self.level_downsamples[level]
        cols, rows = self.grid_shape(level)
        ts = self.tile_size * ds
        c0, c1 = max(0, int(x0 // ts)), min(cols - 1, int(math.ceil(x1 / ts)) - 1)
        r0, r1 = max(0, int(y0 // ts)), min(rows - 1, int(math.ceil(y1 / ts)) - 1)
        for r in range(r0, r1 + 1):
            for c in range(c0, c1 + 1):
                yield TileId(level, c, r)

    def tile_rect_level0(self, tile: TileId) -> tuple[float, float, float, float]:
        """(x, y, w, h) of ``tile`` in level-0 coordinates (floats: downsamples need not be integers)."""
        x, y, w, h = self.tile_bounds(tile)
        ds = self.level_downsamples[tile.level]
        return x * ds, y * ds, w * ds, h * ds


def best_level_for_downsample(downsamples: tuple[float, ...], downsample: float) -> int:
    """The coarsest level whose downsample is not coarser than ``downsample`` (openslide's rule).

    Drawing from it never magnifies a level's pixels by more than the next level would shrink them, so
    the screen always shows at least the resolution it can display.
    """
    best = 0
    for i, ds in enumerate(downsamples):
        if ds <= downsample * 1.0001:
            best = i
    return best

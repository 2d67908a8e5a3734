"""Where the network looks: the prediction grid of a slide at the model's resolution.

The prediction map has its own pixel grid, ``downsample`` slide level-0 pixels per prediction pixel
(model µm/px ÷ slide µm/px). It is cut into square *tiles* of ``tile`` pixels; each tile is
predicted from a *window* of ``tile + 2·margin`` pixels centred on it (the network's input), so
neighbouring windows overlap by ``2·margin`` and are blended there with a smooth weight
(:func:`blend_weights`): cosine ramps whose overlapping halves sum to one, normalised again where a
neighbour is missing (background, slide edge). Windows are read from the best slide level for the
downsample and resampled only when that level's downsample differs.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from engine.errors import CocoPathError
from engine.slide.request import RegionRequest
from engine.slide.source import MICRONS_AT_1X, SlideInfo

log = logging.getLogger(__name__)

#: Lowest blending weight (at a window's outer edge): never zero, so a lone window still counts.
MIN_WEIGHT = 1e-3


@dataclass(frozen=True)
class PredictionGrid:
    """Geometry of one slide's prediction map. Frozen: shared by reader, network and writer threads."""

    slide: str
    slide_size: tuple[int, int]
    downsample: float
    read_level: int
    read_downsample: float
    tile: int
    margin: int
    note: str = ""

    @property
    def window(self) -> int:
        return self.tile + 2 * self.margin

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the prediction map in its own pixels."""
        w, h = self.slide_size
        return max(1, math.ceil(w / self.downsample)), max(1, math.ceil(h / self.downsample))

    @property
    def shape(self) -> tuple[int, int]:
        """(columns, rows) of tiles."""
        w, h = self.size
        return math.ceil(w / self.tile), math.ceil(h / self.tile)

    @property
    def resampled(self) -> bool:
        return abs(self.downsample / self.read_downsample - 1) > 1e-6

    def tiles(self) -> Iterator[tuple[int, int]]:
        cols, rows = self.shape
        for r in range(rows):
            for c in range(cols):
                yield c, r

    def tile_rect_level0(self, col: int, row: int) -> tuple[float, float, float, float]:
        """(x, y, w, h) of a tile in slide level-0 pixels, cropped at the map's edge."""
        w, h = self.size
        x0, y0 = col * self.tile, row * self.tile
        tw, th = min(self.tile, w - x0), min(self.tile, h - y0)
        d = self.downsample
        return x0 * d, y0 * d, tw * d, th * d

    def window_request(self, col: int, row: int) -> RegionRequest:
        """The slide region a tile's window is read from (at :attr:`read_level`)."""
        d, rd = self.downsample, self.read_downsample
        px, py = col * self.tile - self.margin, row * self.tile - self.margin
        size = self.window if not self.resampled else math.ceil(self.window * d / rd)
        return RegionRequest(self.slide, self.read_level, round(px * d), round(py * d), size, size)

    def neighbours(self, col: int, row: int) -> Iterator[tuple[int, int]]:
        """The tile itself and its (up to) 8 neighbours inside the grid: the windows that touch it."""
        cols, rows = self.shape
        for r in range(max(0, row - 1), min(rows, row + 2)):
            for c in range(max(0, col - 1), min(cols, col + 2)):
                yield c, r

    def tiles_in(self, x: float, y: float, w: float, h: float) -> list[tuple[int, int]]:
        """Tiles meeting the level-0 rectangle (x, y, w, h)."""
        cols, rows = self.shape
        s = self.tile * self.downsample
        c0, r0 = max(0, int(x // s)), max(0, int(y // s))
        c1, r1 = min(cols - 1, int(math.ceil((x + w) / s)) - 1), min(rows - 1, int(math.ceil((y + h) / s)) - 1)
        return [(c, r) for r in range(r0, r1 + 1) for c in range(c0, c1 + 1)]


def needs_level(info: SlideInfo, model_mpp: float | None) -> bool:
    """Whether a run needs a slide level chosen: the slide or the model's card lacks µm/px, so the
    model's resolution cannot be matched."""
    return info.mpp is None or model_mpp is None


def default_level(info: SlideInfo, model_mpp: float | None) -> int:
    """The level a run takes when :func:`needs_level` and nobody chose one: on a slide without µm/px
    whose scanner recorded its objective power, the level nearest the card's µm/px (taking 10 µm/px
    at 1×); otherwise level 0, the slide's full resolution."""
    if info.mpp is None and model_mpp is not None and info.objective_power:
        estimated = MICRONS_AT_1X / info.objective_power
        return info.best_level_for_downsample(max(model_mpp / estimated, 1.0))
    return 0


def make_grid(info: SlideInfo, model_mpp: float | None, *, level: int | None = None,
              tile: int = 512, margin: int = 32) -> PredictionGrid:
    """The prediction grid at the model's µm/px, or at ``level`` (when either side lacks µm/px and
    ``level`` is None: :func:`default_level`).

    ``tile`` is the network's input size (window); tiles are ``tile - 2·margin`` pixels.
    """
    if tile % 32 or tile - 2 * margin < 32 or margin < 0:
        raise CocoPathError(f"window {tile} with margin {margin} leaves no tile (need a multiple of "
                            f"32 and a margin under a quarter of it)")
    if level is not None and not 0 <= level < info.level_count:
        raise CocoPathError(f"{info.path}: has no level {level} (levels 0–{info.level_count - 1})")
    note = ""
    if level is None and not needs_level(info, model_mpp):
        ds = model_mpp / info.mpp[0]  # type: ignore[index, operator]
        if ds < 1:
            note = (f"the model wants {model_mpp:g} µm/px but the slide's finest level is "
                    f"{info.mpp[0]:g} µm/px: upsampled")  # type: ignore[index]
        read = info.best_level_for_downsample(max(ds, 1.0))
    else:
        read = level if level is not None else default_level(info, model_mpp)
        how = "as chosen" if level is not None else "by default (the level can be chosen)"
        ds = info.level_downsamples[read]
        if model_mpp is None:
            note = f"the model's card has no µm/px: run at slide level {read} {how}"
        elif info.mpp is None:
            note = f"the slide has no µm/px: run at slide level {read} {how}"
        else:
            note = f"run at slide level {read} as chosen, not at the model's {model_mpp:g} µm/px"
    if note:
        log.warning("%s: %s", info.path, note)
    rds = info.level_downsamples[read]
    if abs(ds / rds - 1) < 1e-3:  # a level at the model's resolution: read it as is
        ds = rds
    return PredictionGrid(info.path, info.dimensions, float(ds), read, float(rds),
                          tile - 2 * margin, margin, note)


def ramp_1d(n: int, margin: int) -> np.ndarray:
    """Weights along one side of a window: cosine ramps over ``2·margin`` at each end, one inside.

    Ramps of neighbouring windows (stride ``n - 2·margin``) overlap exactly and sum to one.
    """
    w = np.ones(n, dtype=np.float64)
    if margin:
        t = (np.arange(2 * margin) + 0.5) / (2 * margin)
        up = np.sin(0.5 * np.pi * t) ** 2
        w[:2 * margin] = up
        w[n - 2 * margin:] = up[::-1]
    return np.maximum(w, MIN_WEIGHT)


def blend_weights(window: int, margin: int) -> np.ndarray:
    """The (window, window) float32 weight of one window's pixels (outer product of ramps)."""
    r = ramp_1d(window, margin)
    return np.outer(r, r).astype(np.float32)

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
    #: Prediction pixels the whole lattice of tiles and windows is moved by, right and down: map
    #: pixel q lies at slide level-0 (q - origin)·downsample. 0 in every real run; the seam check
    #: (:func:`engine.inference.seams.seam_check`) compares a run at 0 with one at half a tile.
    origin: int = 0

    @property
    def window(self) -> int:
        return self.tile + 2 * self.margin

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the prediction map in its own pixels."""
        w, h = self.slide_size
        o = self.origin
        return max(1, math.ceil(w / self.downsample)) + o, max(1, math.ceil(h / self.downsample)) + o

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
        d, o = self.downsample, self.origin
        return (x0 - o) * d, (y0 - o) * d, tw * d, th * d

    def window_origin(self, col: int, row: int) -> tuple[int, int]:
        """The top-left pixel of a tile's window in slide coordinates at the prediction resolution
        (map pixels less :attr:`origin`)."""
        return (col * self.tile - self.margin - self.origin, row * self.tile - self.margin - self.origin)

    def window_request(self, col: int, row: int) -> RegionRequest:
        """The slide region a tile's window is read from (at :attr:`read_level`).

        Unresampled, the read starts exactly at the window's first pixel: level-0 ``ceil(p·d)``,
        which OpenSlide maps back to read-level pixel ``p`` whatever the rounding of a level's
        downsample (``round`` could land one pixel early and shift a window against its
        neighbours). Resampled, it starts at the read-level pixel at or before the window and
        :func:`window_box` gives the exact sub-pixel box to resample from; one pixel more is read
        for the fraction."""
        d, rd = self.downsample, self.read_downsample
        px, py = self.window_origin(col, row)
        if not self.resampled:
            return RegionRequest(self.slide, self.read_level, math.ceil(px * d), math.ceil(py * d),
                                 self.window, self.window)
        ix, iy = math.floor(px * d / rd), math.floor(py * d / rd)
        size = math.ceil(self.window * d / rd) + 1
        return RegionRequest(self.slide, self.read_level, math.ceil(ix * rd), math.ceil(iy * rd),
                             size, size)

    def window_box(self, col: int, row: int) -> tuple[float, float, float, float]:
        """(left, top, right, bottom) of a resampled window inside its :meth:`window_request` read,
        in read-level pixels (fractional)."""
        d, rd = self.downsample, self.read_downsample
        px, py = self.window_origin(col, row)
        fx, fy = px * d / rd, py * d / rd
        fx, fy = fx - math.floor(fx), fy - math.floor(fy)
        span = self.window * d / rd
        return fx, fy, fx + span, fy + span

    def neighbours(self, col: int, row: int) -> Iterator[tuple[int, int]]:
        """The tile itself and its (up to) 8 neighbours inside the grid: the windows that touch it."""
        cols, rows = self.shape
        for r in range(max(0, row - 1), min(rows, row + 2)):
            for c in range(max(0, col - 1), min(cols, col + 2)):
                yield c, r

    def tiles_in(self, x: float, y: float, w: float, h: float) -> list[tuple[int, int]]:
        """Tiles meeting the level-0 rectangle (x, y, w, h)."""
        cols, rows = self.shape
        s, d, o = self.tile, self.downsample, self.origin
        c0, r0 = max(0, int((x / d + o) // s)), max(0, int((y / d + o) // s))
        c1 = min(cols - 1, int(math.ceil(((x + w) / d + o) / s)) - 1)
        r1 = min(rows - 1, int(math.ceil(((y + h) / d + o) / s)) - 1)
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


def run_window(spec_tile: int | object) -> tuple[int, int]:
    """(window, margin) of a whole-slide run for a model whose card gives ``tile`` px inputs.

    The student's output is still settling within about 96 px of a window's edge (measured on
    tumour tissue: labels differ from a full-context prediction on 2.9 % of pixels 32 px from the
    edge, 1.1 % at 64, 0.4 % at 96). With the card's 512 px window and a 32 px margin the blend
    used pixels 0–64 px from an edge and the mask showed a lattice (1.2–3.0 % of pixels changed
    when the windows moved by half a tile). Windows half as large again (768 px, the network is
    fully convolutional) with a 64 px margin cost 10 % more network work per pixel than 512/32 and
    bring that under 0.7 % (the seam check, :mod:`engine.inference.seams`)."""
    tile = int(getattr(spec_tile, "tile", spec_tile))
    return 32 * math.ceil(1.5 * tile / 32), max(tile // 8, 0)


def run_batch(window: int) -> int:
    """Windows per network batch for a run with ``window`` px inputs: as many pixels as 4 windows
    of 512 px, at least one (768 px: 2), which keeps a run's peak memory under 1 GB; at most 8, so
    that small windows still report progress and notice a cancel every few windows."""
    return max(1, min(8, round(4 * (512 / window) ** 2)))

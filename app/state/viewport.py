"""The viewport: which part of a slide is on screen, at which zoom, and the maths around it.

Coordinates: *slide* coordinates are level-0 pixels (floats); *screen* coordinates are the view
widget's logical pixels, (0, 0) at its top-left. ``downsample`` is level-0 pixels per logical screen
pixel (1 = level 0 at 1:1, 4 = a quarter of level 0's resolution). On a high-DPI screen each logical
pixel has ``dpr`` device pixels, so the level is chosen for ``downsample / dpr``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from engine.api import best_level_for_downsample

#: The magnifications a pathologist expects on a microscope's nosepiece.
MAGNIFICATION_PRESETS: tuple[float, ...] = (1.0, 2.5, 5.0, 10.0, 20.0, 40.0)

#: How far beyond level 0 one may zoom in (level-0 pixels shown 8× enlarged).
MIN_DOWNSAMPLE = 0.125


@dataclass(frozen=True)
class SlideGeometry:
    """What the view needs to know about a slide: its levels and its physical scale."""

    width: int
    height: int
    level_dimensions: tuple[tuple[int, int], ...]
    level_downsamples: tuple[float, ...]
    mpp: float | None = None
    base_magnification: float | None = None

    @classmethod
    def from_info(cls, info: object) -> "SlideGeometry":
        """Build from an ``engine.slide.SlideInfo`` (duck-typed to keep this module light)."""
        dims = tuple(tuple(map(int, d)) for d in info.level_dimensions)  # type: ignore[attr-defined]
        mpp = info.mpp[0] if info.mpp else None  # type: ignore[attr-defined]
        return cls(
            width=dims[0][0],
            height=dims[0][1],
            level_dimensions=dims,  # type: ignore[arg-type]
            level_downsamples=tuple(float(d) for d in info.level_downsamples),  # type: ignore[attr-defined]
            mpp=mpp,
            base_magnification=info.base_magnification,  # type: ignore[attr-defined]
        )

    def best_level(self, downsample: float) -> int:
        return best_level_for_downsample(self.level_downsamples, downsample)


def available_presets(base_magnification: float | None) -> tuple[float, ...]:
    """The presets this slide can show without magnifying level 0 (none without a known magnification)."""
    if not base_magnification:
        return ()
    return tuple(p for p in MAGNIFICATION_PRESETS if p <= base_magnification * 1.0001)


@dataclass(frozen=True)
class Viewport:
    """An immutable view of a slide: centre (slide px), downsample and size (logical screen px)."""

    cx: float
    cy: float
    downsample: float
    width: int
    height: int
    dpr: float = 1.0

    # -- geometry ----------------------------------------------------------------------------------

    @property
    def origin(self) -> tuple[float, float]:
        """Slide coordinates of the screen's top-left corner."""
        return (self.cx - self.width * self.downsample / 2, self.cy - self.height * self.downsample / 2)

    def visible_rect(self) -> tuple[float, float, float, float]:
        """(x0, y0, x1, y1) of the slide area on screen, in level-0 pixels."""
        ox, oy = self.origin
        return ox, oy, ox + self.width * self.downsample, oy + self.height * self.downsample

    def to_screen(self, x: float, y: float) -> tuple[float, float]:
        ox, oy = self.origin
        return (x - ox) / self.downsample, (y - oy) / self.downsample

    def to_slide(self, sx: float, sy: float) -> tuple[float, float]:
        ox, oy = self.origin
        return ox + sx * self.downsample, oy + sy * self.downsample

    def level(self, geometry: SlideGeometry) -> int:
        """The pyramid level to draw from: the coarsest one that still fills every device pixel."""
        return geometry.best_level(self.downsample / max(self.dpr, 1e-6))

    def magnification(self, geometry: SlideGeometry) -> float | None:
        """The equivalent microscope magnification (base magnification / downsample), if known."""
        if not geometry.base_magnification:
            return None
        return geometry.base_magnification / self.downsample

    # -- changes (each returns a new viewport) --------------------------------------------------------

    def resized(self, width: int, height: int, dpr: float | None = None) -> "Viewport":
        return replace(self, width=max(1, int(width)), height=max(1, int(height)),
                       dpr=self.dpr if dpr is None else float(dpr))

    def centered(self, x: float, y: float) -> "Viewport":
        return replace(self, cx=float(x), cy=float(y))

    def panned(self, dx: float, dy: float) -> "Viewport":
        """Move the content by (dx, dy) screen pixels (a drag to the right shows what is to the left)."""
        return replace(self, cx=self.cx - dx * self.downsample, cy=self.cy - dy * self.downsample)

    def zoomed(self, factor: float, anchor: tuple[float, float] | None = None) -> "Viewport":
        """Zoom in by ``factor`` (>1 magnifies) keeping the slide point under ``anchor`` fixed."""
        return self.with_downsample(self.downsample / factor, anchor)

    def with_downsample(self, downsample: float, anchor: tuple[float, float] | None = None) -> "Viewport":
        sx, sy = anchor if anchor is not None else (self.width / 2, self.height / 2)
        px, py = self.to_slide(sx, sy)
        ds = float(downsample)
        return replace(self, downsample=ds,
                       cx=px - (sx - self.width / 2) * ds, cy=py - (sy - self.height / 2) * ds)

    def with_magnification(self, magnification: float, geometry: SlideGeometry) -> "Viewport":
        if not geometry.base_magnification or magnification <= 0:
            return self
        return self.with_downsample(geometry.base_magnification / magnification)

    def clamped(self, geometry: SlideGeometry) -> "Viewport":
        """Keep the zoom in range and the slide's centre reachable but never lost off screen."""
        ds = min(max(self.downsample, MIN_DOWNSAMPLE), max_downsample(geometry, self.width, self.height))
        cx = min(max(self.cx, 0.0), float(geometry.width))
        cy = min(max(self.cy, 0.0), float(geometry.height))
        return replace(self, downsample=ds, cx=cx, cy=cy)


def fit_downsample(geometry: SlideGeometry, width: int, height: int, margin: float = 1.02) -> float:
    """The downsample that shows the whole slide in a ``width`` × ``height`` view."""
    return max(geometry.width / max(width, 1), geometry.height / max(height, 1)) * margin


def max_downsample(geometry: SlideGeometry, width: int, height: int) -> float:
    """Zooming out stops at four times the whole-slide view."""
    return max(fit_downsample(geometry, width, height) * 4, MIN_DOWNSAMPLE)


def fit_viewport(geometry: SlideGeometry, width: int, height: int, dpr: float = 1.0) -> Viewport:
    """A viewport showing the whole slide, centred."""
    return Viewport(geometry.width / 2, geometry.height / 2, fit_downsample(geometry, width, height),
                    max(1, width), max(1, height), dpr)


@dataclass(frozen=True)
class ScaleBar:
    """A scale bar: its length on screen and its label (µm below 1 mm, else mm)."""

    pixels: float
    microns: float
    label: str


def nice_scale_bar(mpp: float | None, downsample: float, target_pixels: float = 120.0) -> ScaleBar | None:
    """The longest 1-2-5 length whose bar is at most ``target_pixels`` long, or None without an mpp."""
    if not mpp or downsample <= 0:
        return None
    microns_per_screen_px = mpp * downsample
    raw = target_pixels * microns_per_screen_px
    exp = math.floor(math.log10(raw))
    best = 10.0 ** exp
    for m in (1.0, 2.0, 5.0, 10.0):
        if m * 10.0 ** exp <= raw:
            best = m * 10.0 ** exp
    label = f"{best / 1000:g} mm" if best >= 1000 else f"{best:g} µm"
    return ScaleBar(best / microns_per_screen_px, best, label)


def format_magnification(mag: float | None, downsample: float) -> str:
    """"20×" when the magnification is known, else the zoom as a ratio of level-0 pixels."""
    if mag is not None:
        return f"{mag:.3g}×"
    if downsample >= 1:
        return f"1:{downsample:.3g}"
    return f"{1 / downsample:.3g}:1"


def format_position(x: float, y: float, mpp: float | None) -> str:
    """A cursor position in µm (or mm) when the slide has a pixel size, else in level-0 pixels."""
    if mpp:
        ux, uy = x * mpp, y * mpp
        if max(abs(ux), abs(uy)) >= 10000:
            return f"x {ux / 1000:.3f} mm, y {uy / 1000:.3f} mm"
        return f"x {ux:.1f} µm, y {uy:.1f} µm"
    return f"x {x:.0f} px, y {y:.0f} px"

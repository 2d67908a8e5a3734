"""A coarse prediction of the field on screen, in one forward pass, before the run's tiles.

A run's first tiles come from whole windows at the model's µm/px, blended with their neighbours:
on two CPU cores a 1920×1080 field at 10× is about 20 windows, 10 s and more. The pathologist
should see *a* mask within seconds: :func:`predict_preview` reads the visible rectangle once at
the model's µm/px (``factor`` 1; coarser only when the field holds more than :data:`MAX_PIXELS`, a
zoomed-out view), pads it with ``margin`` pixels of real context (glass beyond the slide), runs the
network on that single input (fully convolutional: any multiple of 32) and crops the
probabilities back to the field. The run's final tiles replace it as they come.

Why not coarser: the shipped student's answer depends on scale more than its training augmentation
suggests. On three 1920×1080 fields of a 12 000² pyramid of real patches, a preview at 2× the
model's µm/px called 0–2 % of the field tumour where the final mask called 0.2–0.5 % (tumour IoU
0.0–0.08), at 1.5× 2.4–3.8 % (IoU 0.06–0.12); at 1× 0.2–0.3 % (IoU 0.24–0.29, the rest is the
blending of the final windows on sparse calls). A preview that shows what the final mask will not
would mislead; at 1× it costs about 1–2 s instead of 0.3 s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from engine.slide.reduced import MAX_READ_PIXELS, read_reduced
from engine.slide.request import RegionRequest
from engine.slide.source import SlideSource

#: Most pixels of a preview's network input: a 1920×1080 field at the model's µm/px with its
#: margins (about 2 s of the 5 M-parameter student on one core, 1 s on two; the app gives the
#: preview a session on every core, see ``app.state.inference_run.field_runner``).
MAX_PIXELS = 5 << 19
#: White (glass) beyond the slide's edge, as OpenSlide composites transparent areas.
GLASS = 255


@dataclass(frozen=True)
class Preview:
    """Probabilities ``probs`` (C - 1, h, w) float32 over the level-0 rectangle ``rect`` (x, y, w, h):
    preview pixel (i, j) covers level-0 [x + j·downsample, x + (j + 1)·downsample)."""

    probs: np.ndarray
    rect: tuple[float, float, float, float]
    downsample: float


def preview_downsample(grid_downsample: float, rect: tuple[float, float, float, float],
                       factor: float = 1.0, max_pixels: int = MAX_PIXELS) -> float:
    """Level-0 pixels per preview pixel: ``factor`` × the run's, coarser when the field would
    exceed ``max_pixels`` (a zoomed-out view), never finer than the run's."""
    _, _, w, h = rect
    return max(grid_downsample * factor, math.sqrt(max(w, 1.0) * max(h, 1.0) / max_pixels),
               grid_downsample)


def read_field(slide: SlideSource, x: float, y: float, width: int, height: int, ds: float
               ) -> np.ndarray:
    """(height, width, 3) uint8 RGB of the level-0 region from (x, y) at ``ds`` level-0 pixels per
    pixel; glass (white) beyond the slide. Reads the level at or below ``ds`` once, averaged down in
    bounded pieces when that read would be large (a single-level slide)."""
    from PIL import Image

    out = np.full((height, width, 3), GLASS, np.uint8)
    sw, sh = slide.info.dimensions
    x0, y0 = max(0.0, x), max(0.0, y)
    x1, y1 = min(float(sw), x + width * ds), min(float(sh), y + height * ds)
    if x1 - x0 < ds or y1 - y0 < ds:
        return out
    level = slide.info.best_level_for_downsample(ds)
    lds = slide.info.level_downsamples[level]
    lw, lh = max(1, math.ceil((x1 - x0) / lds)), max(1, math.ceil((y1 - y0) / lds))
    step = int(ds / lds)
    if step >= 2 and lw * lh > MAX_READ_PIXELS:
        rgb = read_reduced(slide, level, int(x0), int(y0), lw, lh, step, exact_pixels=math.inf)
    else:
        rgb = slide.read_rgb(RegionRequest(slide.info.path, level, int(x0), int(y0), lw, lh))
    tw = max(1, min(width, round((x1 - x0) / ds)))
    th = max(1, min(height, round((y1 - y0) / ds)))
    ox = min(width - tw, round((x0 - x) / ds))
    oy = min(height - th, round((y0 - y) / ds))
    img = Image.fromarray(np.ascontiguousarray(rgb)).resize((tw, th), Image.Resampling.BILINEAR)
    out[oy:oy + th, ox:ox + tw] = np.asarray(img)
    return out


def predict_preview(slide: SlideSource, grid_downsample: float, runner: Any,
                    rect: tuple[float, float, float, float], *, factor: float = 1.0,
                    margin: int = 32, max_pixels: int = MAX_PIXELS) -> Preview:
    """One forward pass over the level-0 rectangle ``rect`` (x, y, w, h) at ``factor`` times the
    run's downsample ``grid_downsample`` (see :func:`preview_downsample`), with ``margin`` pixels of
    context on every side; ``runner`` takes (1, H, W, 3) uint8 and gives (1, C - 1, H, W)."""
    x, y, w, h = rect
    ds = preview_downsample(grid_downsample, rect, factor, max_pixels)
    pw, ph = max(1, math.ceil(w / ds)), max(1, math.ceil(h / ds))
    big_w = 32 * math.ceil((pw + 2 * margin) / 32)
    big_h = 32 * math.ceil((ph + 2 * margin) / 32)
    rgb = read_field(slide, x - margin * ds, y - margin * ds, big_w, big_h, ds)
    probs = np.asarray(runner(rgb[None]))[0]
    crop = np.ascontiguousarray(probs[:, margin:margin + ph, margin:margin + pw], dtype=np.float32)
    return Preview(crop, (float(x), float(y), pw * ds, ph * ds), ds)

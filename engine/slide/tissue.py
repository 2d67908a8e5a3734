"""Tissue detection at low resolution, so background glass is never sent to a network.

The slide is read at a coarse level (about 1/16 by default, far below what the eye needs; read in
bounded pieces by :func:`~engine.slide.reduced.read_reduced`, so a slide of any size fits), then a
pixel is tissue when it is darker than the glass (Otsu on grey levels, fixed to stay below the glass
peak) or clearly coloured (HSV saturation). Morphology closes gaps, fills holes (lumina of glands are
tissue) and drops specks smaller than a minimum area. The result is a boolean mask with its
downsample relative to level 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from engine.slide.reduced import read_reduced
from engine.slide.source import SlideSource

#: Longest side of a tissue mask: beyond it the mask is coarser than asked, so that detecting tissue
#: on a slide of any size takes bounded memory and time (a 4096² mask: about 300 MiB and a few
#: seconds of morphology; at the default 1/16, slides up to 65 536 px keep their resolution).
MAX_MASK_SIDE = 4096


@dataclass(frozen=True)
class TissueMask:
    """``mask[y, x]`` is True where tissue covers level-0 pixels [x·ds, (x+1)·ds) × [y·ds, (y+1)·ds)."""

    mask: np.ndarray
    downsample: float

    def covers(self, x: float, y: float, w: float, h: float, min_fraction: float = 0.0) -> bool:
        """Whether the level-0 rectangle holds tissue (more than ``min_fraction`` of its cells)."""
        ds = self.downsample
        x0, y0 = max(0, int(x // ds)), max(0, int(y // ds))
        x1, y1 = int(np.ceil((x + w) / ds)), int(np.ceil((y + h) / ds))
        cells = self.mask[y0:y1, x0:x1]
        if cells.size == 0:
            return False
        return bool(cells.mean() > min_fraction) if min_fraction > 0 else bool(cells.any())

    @property
    def fraction(self) -> float:
        return float(self.mask.mean())


def otsu_threshold(values: np.ndarray) -> float:
    """Otsu's threshold of uint8 values (the level that best splits them into two classes)."""
    flat = values.ravel()
    hist = np.zeros(256, np.float64)
    for i in range(0, flat.size, 1 << 22):  # (bincount widens to intp: a chunk at a time)
        hist += np.bincount(flat[i:i + (1 << 22)], minlength=256)[:256]
    total = hist.sum()
    if total == 0:
        return 128.0
    levels = np.arange(256)
    w0 = np.cumsum(hist)
    w1 = total - w0
    m0 = np.cumsum(hist * levels)
    mean_all = m0[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mean_all * w0 / total - m0) ** 2 / (w0 * w1 / total)
    between[~np.isfinite(between)] = 0
    return float(np.argmax(between))


def _grey(rgb: np.ndarray, rows: int = 1024) -> np.ndarray:
    """Luma (0.299 R + 0.587 G + 0.114 B, rounded down) as uint8, a band of rows at a time so that
    a large mask needs no full-size temporaries wider than a byte."""
    out = np.empty(rgb.shape[:2], np.uint8)
    for y in range(0, rgb.shape[0], rows):
        band = rgb[y:y + rows].astype(np.uint32)
        out[y:y + rows] = (band[..., 0] * 299 + band[..., 1] * 587 + band[..., 2] * 114) // 1000
    return out


def detect_tissue_rgb(rgb: np.ndarray, *, min_saturation: int = 20, min_area_px: int = 16,
                      closing: int = 2) -> np.ndarray:
    """Boolean tissue mask of an RGB image (background = bright, unsaturated glass)."""
    from scipy import ndimage  # deferred: the viewer does not pay for scipy at start-up

    rgb = np.asarray(rgb, dtype=np.uint8)
    grey = _grey(rgb)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    sat = np.maximum(np.maximum(r, g), b)
    sat -= np.minimum(np.minimum(r, g), b)  # max ≥ min: no wrap-around
    # Otsu splits glass from tissue; never above 235 (glass) nor so low that pale stroma is lost.
    t = min(235.0, max(otsu_threshold(grey), 180.0))
    mask = (grey < t) | (sat > min_saturation)
    mask &= grey > 8  # pure black: scanner padding, not tissue
    if closing:
        # pad with the edge's own values so that closing does not erode tissue at the slide's border
        pad = closing + 1
        padded = np.pad(mask, pad, mode="edge")
        padded = ndimage.binary_closing(padded, structure=np.ones((3, 3)), iterations=closing)
        mask = padded[pad:-pad, pad:-pad]
    mask = ndimage.binary_fill_holes(mask)
    mask = ndimage.binary_opening(mask, structure=np.ones((3, 3)))
    labels, n = ndimage.label(mask)
    if n:
        sizes = np.bincount(labels.ravel())
        keep = sizes >= min_area_px
        keep[0] = False
        mask = keep[labels]
    return mask


def detect_tissue(slide: SlideSource, target_downsample: float = 16.0, **kw: int) -> TissueMask:
    """Detect tissue on ``slide`` at about ``target_downsample`` (the best level, averaged down in
    bounded pieces; coarser on a slide so large that the mask would pass :data:`MAX_MASK_SIDE`)."""
    info = slide.info
    level = info.best_level_for_downsample(target_downsample)
    ds = info.level_downsamples[level]
    w, h = info.level_dimensions[level]
    step = max(1, int(round(target_downsample / ds)), math.ceil(max(w, h) / MAX_MASK_SIDE))
    rgb = read_reduced(slide, level, 0, 0, w, h, step)
    if w >= step and h >= step:  # whole cells only, as a box filter of the level would give
        rgb = rgb[:h // step, :w // step]
    return TissueMask(detect_tissue_rgb(rgb, **kw), ds * step)

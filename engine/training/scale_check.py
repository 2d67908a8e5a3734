"""How many µm a pixel of a tile set is, measured against a ruler: cell nuclei.

EBHI-Seg and the CAMELYON mini tiles state no pixel size, so the model card's µm/px is an
estimate. This checks it: nuclear diameters, read the same way (hematoxylin optical density by
colour deconvolution, smoothed, split at Otsu's level, blobs filled and measured) on images whose
µm/px is known (the rulers: MoNuSeg's 40× crops, 0.25 µm/px, resampled to each candidate µm/px,
and a real slide at its own µm/px) and on the tiles. The estimate is the µm/px at which the
rulers' median diameter in pixels equals the tiles'. It assumes the nuclei of the tissues are of
like size (they differ by tens of per cent between tissues), so it checks a scale to within about
±30 %; it cannot fix it more finely than that. No torch and no Qt.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np

from engine.slide.tissue import otsu_threshold
from engine.training.augment import hematoxylin

METHOD = ("nuclear diameters read the same way on the tiles and on rulers of known µm/px (MoNuSeg's 40x "
          "crops resampled, a real slide at its own µm/px): hematoxylin optical density by colour "
          "deconvolution, Gaussian sigma 1 px, Otsu's level, blobs opened and filled, equivalent diameter of "
          "blobs of 4 px or more; the estimate is the µm/px at which a ruler's median diameter in px equals "
          "the tiles'. Nuclei differ in size between tissues by tens of per cent: a check to about ±30 %.")
#: candidate µm/px for the rulers' curve
CANDIDATES = (0.5, 0.6, 0.71, 0.85, 1.0, 1.19, 1.41, 1.68, 2.0)
_OD_FULL = 2.0  # hematoxylin optical density mapped to 255 for Otsu


def nuclear_diameters(rgb: np.ndarray, min_px: int = 4) -> np.ndarray:
    """Equivalent diameters (px) of the hematoxylin-dark blobs of an RGB image (uint8, H×W×3)."""
    from scipy import ndimage

    h = ndimage.gaussian_filter(hematoxylin(rgb), 1.0)
    levels = np.clip(h / _OD_FULL * 255.0, 0, 255).astype(np.uint8)
    stained = levels[levels > 6]  # not the glass
    if stained.size == 0:
        return np.zeros(0)
    mask = levels > otsu_threshold(stained)
    mask = ndimage.binary_fill_holes(ndimage.binary_opening(mask))
    labels, n = ndimage.label(mask)
    if n == 0:
        return np.zeros(0)
    areas = np.bincount(labels.ravel())[1:]
    areas = areas[areas >= min_px]
    return 2.0 * np.sqrt(areas / math.pi)


def median_diameter(images: Iterable[np.ndarray]) -> tuple[float, int]:
    """The median nuclear diameter (px) over all the images' nuclei, and how many were measured."""
    ds = [nuclear_diameters(im) for im in images]
    d = np.concatenate(ds) if ds else np.zeros(0)
    return (float(np.median(d)) if d.size else math.nan), int(d.size)


def resample(rgb: np.ndarray, factor: float) -> np.ndarray:
    """``rgb`` scaled by ``factor`` (< 1: fewer pixels), area-averaged."""
    from PIL import Image

    h, w = rgb.shape[:2]
    size = (max(1, round(w * factor)), max(1, round(h * factor)))
    return np.asarray(Image.fromarray(rgb).resize(size, Image.BOX if factor < 1 else Image.BICUBIC))


def ruler_curve(ruler: list[np.ndarray], ruler_mpp: float,
                candidates: Iterable[float] = CANDIDATES) -> list[dict[str, float]]:
    """The ruler's median nuclear diameter (px) read at each candidate µm/px no finer than its own."""
    out = []
    for mpp in candidates:
        if mpp + 1e-9 < ruler_mpp:
            continue
        d, n = median_diameter(resample(im, ruler_mpp / mpp) for im in ruler)
        out.append({"mpp": mpp, "median_px": d, "nuclei": n})
    return out


def crossing(curve: list[dict[str, float]], median_px: float) -> float | None:
    """The µm/px at which the ruler's curve reads ``median_px`` (log-log interpolation), or None
    when it lies outside the curve."""
    pts = sorted((c["mpp"], c["median_px"]) for c in curve if math.isfinite(c["median_px"]))
    for (m0, d0), (m1, d1) in zip(pts, pts[1:]):
        lo, hi = min(d0, d1), max(d0, d1)
        if lo <= median_px <= hi and d0 != d1:
            t = (math.log(median_px) - math.log(d0)) / (math.log(d1) - math.log(d0))
            return math.exp(math.log(m0) + t * (math.log(m1) - math.log(m0)))
    return None


def estimate_mpp(tiles: dict[str, list[np.ndarray]], rulers: dict[str, tuple[list[np.ndarray], float]],
                 candidates: Iterable[float] = CANDIDATES) -> dict[str, Any]:
    """Each tile set's µm/px by each ruler (see the module's docstring), and the range over rulers."""
    curves = {name: ruler_curve(images, mpp, candidates) for name, (images, mpp) in rulers.items()}
    sets = {}
    for name, images in tiles.items():
        d, n = median_diameter(images)
        by = {r: crossing(curve, d) for r, curve in curves.items()}
        found = [v for v in by.values() if v is not None]
        sets[name] = {"median_px": d, "nuclei": n, "mpp_by_ruler": by,
                      "mpp_range": [min(found), max(found)] if found else None}
    return {"method": METHOD, "rulers": curves, "tile_sets": sets}


def _slide_level0(path: Any) -> tuple[np.ndarray, float | None]:
    """A small slide's level 0 as RGB, and its µm/px (None when it states none)."""
    from engine.slide.request import RegionRequest
    from engine.slide.source import open_slide

    slide = open_slide(path)
    try:
        w, h = slide.info.dimensions
        if w * h > 64_000_000:
            raise ValueError(f"{path}: level 0 is {w}×{h}, too large to read whole for a ruler")
        rgb = slide.read_rgb(RegionRequest(str(path), 0, 0, 0, w, h))
        return rgb, (slide.info.mpp[0] if slide.info.mpp else None)
    finally:
        slide.close()


def shared_data_report(per_set: int = 60) -> dict[str, Any]:
    """The check on the shared data: each tile folder's µm/px (``per_set`` images spread over it)
    and the slides that state none, against MoNuSeg's crops (0.25 µm/px) and cmu-1-small-region."""
    from PIL import Image

    from engine.shared_data import data_path

    def rgb(path: Any) -> np.ndarray:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))

    monuseg = sorted((data_path("annotations", "aperio", "images")).glob("*.png"))
    cmu, cmu_mpp = _slide_level0(data_path("slides", "cmu-1-small-region.svs"))
    if cmu_mpp is None:
        raise ValueError("cmu-1-small-region.svs states no µm/px: it cannot serve as a ruler")
    rulers = {"MoNuSeg 40x crops (0.25 µm/px)": ([rgb(p) for p in monuseg], 0.25),
              f"cmu-1-small-region ({cmu_mpp:.3f} µm/px)": ([cmu], float(cmu_mpp))}
    tiles: dict[str, list[np.ndarray]] = {}
    seg = data_path("seg")
    for folder in sorted(p for p in seg.iterdir() if (p / "images").is_dir()):
        files = sorted(f for f in (folder / "images").iterdir() if f.suffix.lower() in (".png", ".jpg", ".jpeg"))
        step = max(1, len(files) // per_set)
        tiles[folder.name] = [rgb(f) for f in files[::step][:per_set]]
    for slide in sorted(data_path("slides").glob("*.svs")):
        image, mpp = _slide_level0(slide)
        if mpp is None:
            tiles[f"{slide.name} (level 0, no µm/px)"] = [image]
    return estimate_mpp(tiles, rulers)


def markdown(report: dict[str, Any], card_mpp: float) -> str:
    """The report as Markdown: each ruler's curve, then each tile set's estimate."""
    cols = sorted({c["mpp"] for curve in report["rulers"].values() for c in curve})
    lines = ["# Pixel size of the training tiles, checked against nuclei", "", report["method"], "",
             f"The model card's µm/px: {card_mpp:g}.", "",
             "Median nuclear diameter (px) of each ruler read at each µm/px:", "",
             "| ruler | " + " | ".join(f"{m:g}" for m in cols) + " |", "|---" * (1 + len(cols)) + "|"]
    for name, curve in report["rulers"].items():
        cells = {c["mpp"]: c["median_px"] for c in curve}
        lines.append(f"| {name} | " + " | ".join(f"{cells[m]:.1f}" if m in cells else "–" for m in cols) + " |")
    lines += ["", "| tiles | nuclei | median diameter, px | µm/px by each ruler | range |", "|---|---|---|---|---|"]
    for name, row in report["tile_sets"].items():
        by = ", ".join(f"{v:.2f}" if v is not None else "outside" for v in row["mpp_by_ruler"].values())
        rng = "–" if row["mpp_range"] is None else f"{row['mpp_range'][0]:.2f}–{row['mpp_range'][1]:.2f}"
        lines.append(f"| {name} | {row['nuclei']} | {row['median_px']:.1f} | {by} | {rng} |")
    return "\n".join(lines) + "\n"

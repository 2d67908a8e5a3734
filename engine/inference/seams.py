"""The seam check: does the mask depend on where the windows fall?

A mask without seams is the same whatever the window lattice: :func:`seam_check` runs the whole
pipeline (reading, blending, the cache) twice on one slide, once with the lattice as every run has it
and once moved by half a tile (``PredictionGrid.origin``), and compares the two label maps pixel by
pixel over the tissue both runs cover. A seam shows as disagreement concentrated on the tile borders
of either lattice; the figures separate the pixels within ``band`` px of a border from the rest, and
the last row and column of tiles (the slide's right and bottom edge) from the others.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from engine.inference.cache import PredictionCache
from engine.inference.geometry import PredictionGrid
from engine.inference.pipeline import SlideInference, tissue_tiles
from engine.inference.vectorize import labels_from_probs
from engine.slide.source import SlideSource
from engine.slide.tissue import TissueMask

#: Most map pixels a seam check compares (it holds two label maps): larger slides are refused.
MAX_CHECK_PIXELS = 1 << 26
#: Target: share of compared pixels whose label differs between the two lattices.
SEAM_LIMIT = 0.01


def _labels(cache: PredictionCache, shift: int, w: int, h: int) -> tuple[np.ndarray, np.ndarray]:
    """(labels, covered) of map pixels [shift, shift + w) × [shift, shift + h) of ``cache``."""
    ds = cache.level_downsample(0)
    probs = cache.read_region(0, shift * ds, shift * ds, w, h)
    t = cache.tile
    cover = np.kron(cache.tissue, np.ones((t, t), bool))[shift:shift + h, shift:shift + w]
    out = np.zeros((h, w), bool)
    out[:cover.shape[0], :cover.shape[1]] = cover
    return labels_from_probs(probs), out


def _run(slide: SlideSource, grid: PredictionGrid, tissue: TissueMask | None, runner: Any,
         root: Path, batch_size: int, channels: int) -> PredictionCache:
    cache = PredictionCache.open(root, grid, "seam-check", channels, tissue_tiles(grid, tissue))
    SlideInference(slide, grid, cache, runner, batch_size=batch_size, flush_s=None).run()
    return cache


def border_distance(n: int, tile: int, shift: int) -> np.ndarray:
    """Distance of each of ``n`` pixels to the nearest tile border of a lattice moved by ``shift``."""
    q = (np.arange(n) + shift) % tile
    return np.minimum(q, tile - q)


def seam_check(slide: SlideSource, grid: PredictionGrid, runner: Any, tissue: TissueMask | None = None,
               *, channels: int = 1, batch_size: int = 4, band: int = 8, workdir: Path | None = None) -> dict[str, Any]:
    """Compare the mask of ``grid``'s lattice with the lattice moved by half a tile (see module).

    Returns JSON-ready figures: ``differing_fraction`` (target ≤ :data:`SEAM_LIMIT`), the same
    within ``band`` px of either lattice's tile borders and away from them, in the last row and
    column of tiles, and the mean absolute probability difference."""
    if grid.origin:
        raise ValueError("seam_check takes the grid of a real run (origin 0)")
    w, h = grid.size
    if w * h > MAX_CHECK_PIXELS:
        raise ValueError(f"prediction map {w}×{h} too large for a seam check (at most "
                         f"{MAX_CHECK_PIXELS} pixels): check a smaller slide")
    shift = grid.tile // 2
    moved = dataclasses.replace(grid, origin=shift)
    if workdir is None:
        with tempfile.TemporaryDirectory(prefix="cocopath-seams-") as tmp:
            return seam_check(slide, grid, runner, tissue, channels=channels, batch_size=batch_size, band=band,
                              workdir=Path(tmp))
    a = _run(slide, grid, tissue, runner, workdir / "a", batch_size, channels)
    b = _run(slide, moved, tissue, runner, workdir / "b", batch_size, channels)
    la, ca = _labels(a, 0, w, h)
    lb, cb = _labels(b, shift, w, h)
    both = ca & cb
    diff = (la != lb) & both
    dy = np.minimum(border_distance(h, grid.tile, 0), border_distance(h, grid.tile, shift))
    dx = np.minimum(border_distance(w, grid.tile, 0), border_distance(w, grid.tile, shift))
    near = np.minimum(dy[:, None], dx[None, :]) < band
    cols, rows = grid.shape
    last = np.zeros((h, w), bool)
    last[(rows - 1) * grid.tile:, :] = True
    last[:, (cols - 1) * grid.tile:] = True

    def frac(mask: np.ndarray) -> float | None:
        n = int((mask & both).sum())
        return float((diff & mask).sum() / n) if n else None

    pa = a.read_region(0, 0, 0, w, h).astype(np.int16)
    pb = b.read_region(0, shift * grid.downsample, shift * grid.downsample, w, h)
    n = int(both.sum())
    return {
        "shift_px": shift, "compared_pixels": n,
        "differing_fraction": float(diff.sum() / n) if n else 0.0,
        "limit": SEAM_LIMIT,
        "near_tile_borders": {"band_px": band, "differing_fraction": frac(near)},
        "away_from_borders": {"differing_fraction": frac(~near)},
        "last_row_and_column": {"differing_fraction": frac(last), "pixels": int((last & both).sum())},
        "foreground_fraction": float((la.astype(bool) & both).sum() / n) if n else 0.0,
        "mean_abs_prob_diff": float(np.abs(pa - pb)[both].max(axis=-1).mean() / 255) if n else 0.0,
    }


def uncovered_tissue(cache: PredictionCache) -> int:
    """Tissue tiles of a finished run with no tile on disk (the last row and column included)."""
    rows, cols = cache.tissue.shape
    done = cache.done_tiles()
    return sum(1 for r in range(rows) for c in range(cols) if cache.tissue[r, c] and (c, r) not in done)

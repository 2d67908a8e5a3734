"""Seams: the mask does not depend on where the windows fall (the lattice moved by half a tile),
windows sit exactly where they belong (also resampled), and the last row and column are covered."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from infer_fixtures import GLASS, RedIsTumour, pattern_rgb, plain_spec, write_slide

from engine.inference.cache import PredictionCache
from engine.inference.geometry import make_grid, run_window
from engine.inference.pipeline import SlideInference, read_window, tissue_tiles
from engine.inference.runner import TorchRunner
from engine.inference.seams import seam_check, uncovered_tissue
from engine.slide import open_slide
from engine.slide.request import RegionRequest
from engine.slide.tissue import detect_tissue


def test_seam_check_on_a_small_resampled_slide(tmp_path: Path) -> None:
    # 0.45 µm/px under a 1 µm/px model: every window is resampled by 2.22 from level 0
    slide_path = write_slide(tmp_path / "s.tif", pattern_rgb(1500, 1100, glass_right=0.1), mpp=0.45)
    spec = plain_spec(tile=128, mpp=1.0)
    with open_slide(slide_path) as slide:
        grid = make_grid(slide.info, spec.mpp, tile=128, margin=16)
        assert grid.resampled and grid.downsample != round(grid.downsample)
        r = seam_check(slide, grid, TorchRunner(RedIsTumour(), spec), detect_tissue(slide),
                       workdir=tmp_path / "w")
    assert r["compared_pixels"] > 100_000 and 0.05 < r["foreground_fraction"] < 0.95
    assert r["differing_fraction"] <= r["limit"]
    # a per-pixel network sees the same pixels through every window: only rounding may differ
    assert r["differing_fraction"] < 1e-3 and r["mean_abs_prob_diff"] < 2 / 255
    assert r["last_row_and_column"]["pixels"] > 0
    assert r["last_row_and_column"]["differing_fraction"] < 1e-3


def test_windows_start_exactly_on_their_pixel(tmp_path: Path) -> None:
    slide_path = write_slide(tmp_path / "s.tif", pattern_rgb(900, 700, glass_right=0.0, border=2),
                             mpp=0.5, levels=3)
    with open_slide(slide_path) as slide:
        grid = make_grid(slide.info, None, level=1, tile=96, margin=16)  # level 1, not resampled
        assert not grid.resampled
        whole = slide.read_rgb(RegionRequest(grid.slide, 1, 0, 0, 300, 300))
        for c, r in ((1, 1), (2, 1), (1, 2)):
            x, y = c * grid.tile - grid.margin, r * grid.tile - grid.margin
            assert np.array_equal(read_window(slide, grid, c, r), whole[y:y + 96, x:x + 96])


def test_the_last_row_and_column_of_windows_are_covered(tmp_path: Path) -> None:
    # a size that is no multiple of the tile: the last column and row are partial tiles
    w, h = 1000, 730
    rgb = pattern_rgb(w, h, glass_right=0.0, border=12)  # tissue up to 12 px from every edge
    rgb[:, :300] = rgb[:200] = GLASS  # and glass at the top left
    slide_path = write_slide(tmp_path / "s.tif", rgb, mpp=1.0)
    spec = plain_spec(tile=128, mpp=1.0)
    with open_slide(slide_path) as slide:
        grid = make_grid(slide.info, spec.mpp, tile=128, margin=16)
        cols, rows = grid.shape
        assert w % grid.tile and h % grid.tile
        cache = PredictionCache.open(tmp_path / "c", grid, "v", 1,
                                     tissue_tiles(grid, detect_tissue(slide)))
        SlideInference(slide, grid, cache, TorchRunner(RedIsTumour(), spec)).run()
    assert cache.tissue[-1, 4:].all() and cache.tissue[3:, -1].all()  # tissue up to both edges
    assert uncovered_tissue(cache) == 0
    got = cache.read_region(0, 0, 0, w, h)[..., 0].astype(int)
    want = rgb[..., 0].astype(int)  # RedIsTumour: the probability is the red channel
    got[rgb[..., 1] != 60] = want[rgb[..., 1] != 60] = 0  # compare on tissue pixels only
    right, bottom = got[300:, -40:] - want[300:, -40:], got[-40:, 400:] - want[-40:, 400:]
    assert np.abs(right).max() <= 1 and np.abs(bottom).max() <= 1  # the last column and row
    assert np.abs(got[300:, 400:] - want[300:, 400:]).max() <= 1  # and all tissue inside


def test_run_window_is_larger_than_the_card_tile_with_a_wider_margin() -> None:
    assert run_window(512) == (768, 64)
    window, margin = run_window(plain_spec(tile=128))
    assert window % 32 == 0 and window > 128 and margin == 16

"""Qt-free view state: zoom around a point, level choice, presets, scale bar, tile plans."""

from __future__ import annotations

import sys

import pytest

from app.state import (SlideGeometry, Viewport, available_presets, fit_viewport,
                       format_magnification, format_position, nice_scale_bar, plan_tiles)
from engine.slide.request import TileGrid

GEO = SlideGeometry(50_000, 40_000, ((50_000, 40_000), (25_000, 20_000), (12_500, 10_000)),
                    (1.0, 2.0, 4.0), mpp=0.25, base_magnification=40.0)


def test_state_does_not_import_qt() -> None:
    assert not any(m.startswith("PySide6") for m in sys.modules if m.startswith("app.state")), \
        "app.state must stay Qt-free"


def test_zoom_keeps_the_point_under_the_cursor() -> None:
    vp = Viewport(1000, 2000, 4.0, 800, 600)
    anchor = (123.0, 456.0)
    before = vp.to_slide(*anchor)
    after = vp.zoomed(2.5, anchor).to_slide(*anchor)
    assert after == pytest.approx(before)
    assert vp.zoomed(2.5).downsample == pytest.approx(1.6)


def test_pan_moves_content_with_the_mouse() -> None:
    vp = Viewport(1000, 1000, 2.0, 800, 600)
    moved = vp.panned(10, -20)  # dragging right shows what is to the left
    assert (moved.cx, moved.cy) == (980, 1040)


def test_level_is_the_coarsest_that_fills_device_pixels() -> None:
    assert Viewport(0, 0, 1.0, 10, 10).level(GEO) == 0
    assert Viewport(0, 0, 2.5, 10, 10).level(GEO) == 1
    assert Viewport(0, 0, 100.0, 10, 10).level(GEO) == 2
    assert Viewport(0, 0, 2.5, 10, 10, dpr=2.0).level(GEO) == 0  # high DPI needs finer pixels


def test_fit_and_clamp() -> None:
    vp = fit_viewport(GEO, 1000, 800)
    x0, y0, x1, y1 = vp.visible_rect()
    assert x0 <= 0 and y0 <= 0 and x1 >= 50_000 and y1 >= 40_000
    wild = Viewport(-1e9, 1e9, 1e-6, 1000, 800).clamped(GEO)
    assert 0 <= wild.cx <= 50_000 and 0 <= wild.cy <= 40_000 and wild.downsample > 0.1


def test_presets_and_magnification() -> None:
    assert available_presets(20.0) == (1.0, 2.5, 5.0, 10.0, 20.0)
    assert available_presets(40.0)[-1] == 40.0
    assert available_presets(None) == ()
    vp = Viewport(0, 0, 1.0, 100, 100).with_magnification(10, GEO)
    assert vp.downsample == pytest.approx(4.0)
    assert vp.magnification(GEO) == pytest.approx(10.0)
    assert format_magnification(10.0, 4.0) == "10×"
    assert format_magnification(None, 4.0) == "1:4"


def test_scale_bar_and_positions() -> None:
    bar = nice_scale_bar(0.25, 4.0, target_pixels=120)  # 1 µm per screen pixel
    assert bar is not None and bar.label == "100 µm" and bar.pixels == pytest.approx(100)
    assert nice_scale_bar(0.25, 64.0, 120).label == "1 mm"
    assert nice_scale_bar(None, 4.0) is None
    assert format_position(400, 800, 0.25) == "x 100.0 µm, y 200.0 µm"
    assert format_position(400, 800, None) == "x 400 px, y 800 px"


def test_plan_is_centre_first_with_a_prefetch_ring_and_finer_tiles() -> None:
    grid = TileGrid("s", GEO.level_dimensions, GEO.level_downsamples, 512)
    vp = Viewport(25_000, 20_000, 3.0, 1920, 1080)
    plan = plan_tiles(grid, GEO, vp, cursor=(960, 540))
    assert plan.level == 1
    first = grid.tile_rect_level0(plan.visible[0])
    assert first[0] <= 25_000 <= first[0] + first[2] and first[1] <= 20_000 <= first[1] + first[3]
    assert not set(plan.ring) & set(plan.visible)
    assert plan.ring and all(t.level == 1 for t in plan.ring)
    assert plan.finer and all(t.level == 0 for t in plan.finer)

"""The slide view draws what the slide holds: rendered pixels against openslide read directly."""

from __future__ import annotations

import numpy as np
import pytest
from PySide6.QtCore import QPoint, QPointF, Qt
from PySide6.QtGui import QWheelEvent
from PySide6.QtWidgets import QApplication

from app.state.viewport import Viewport
from engine.slide import RegionRequest, open_slide
from qt_probe import grab_rgb, wait_drawn

BAR_MARGIN = 70  # the scale bar / no-scale note sits in the bottom 70 px


def show_at(qtbot, view, source, x0: int, y0: int, downsample: float) -> None:
    """Put slide pixel (x0, y0) at the view's top-left corner, at ``downsample``, and wait."""
    w, h = view.width(), view.height()
    view.set_viewport(Viewport(x0 + w * downsample / 2, y0 + h * downsample / 2, downsample, w, h))
    wait_drawn(qtbot, view)


def expected_rgb(source, level: int, x0: int, y0: int, w: int, h: int) -> np.ndarray:
    return source.read_rgb(RegionRequest(source.info.path, level, x0, y0, w, h))


def assert_matches(rendered: np.ndarray, expected: np.ndarray, mean_tol: float = 1.0) -> None:
    h = rendered.shape[0] - BAR_MARGIN
    diff = np.abs(rendered[:h].astype(int) - expected[:h].astype(int))
    assert diff.mean() <= mean_tol, f"mean |diff| {diff.mean():.2f} > {mean_tol}"
    assert np.percentile(diff, 99) <= 8


@pytest.mark.parametrize("slide", ["small_svs", "no_mpp_svs", "dicom_dir"])
def test_level0_at_one_to_one_is_the_slide(qtbot, view, slide, request) -> None:
    source = open_slide(request.getfixturevalue(slide))
    view.set_source(source)
    show_at(qtbot, view, source, 700, 900, 1.0)
    assert view.plan.level == 0
    rendered = grab_rgb(view)
    assert_matches(rendered, expected_rgb(source, 0, 700, 900, view.width(), view.height()))


def test_coarser_level_at_one_to_one_is_that_level(qtbot, view, app_pyramid) -> None:
    source = open_slide(app_pyramid)
    view.set_source(source)
    show_at(qtbot, view, source, 1200, 800, 2.0)
    assert view.plan.level == 1
    rendered = grab_rgb(view)
    assert_matches(rendered, expected_rgb(source, 1, 1200, 800, view.width(), view.height()))


def block_mean(img: np.ndarray, k: int) -> np.ndarray:
    h, w = (img.shape[0] // k) * k, (img.shape[1] // k) * k
    return img[:h, :w].reshape(h // k, k, w // k, k, 3).mean(axis=(1, 3))


def region_diff(view, source, level: int = 0) -> float:
    """Mean |difference| (8-px blocks) between the view and the slide region it shows, read directly."""
    from PIL import Image

    vp = view.viewport
    W, H = source.info.dimensions
    ds = source.info.level_downsamples[level]
    rendered = grab_rgb(view)
    (ax, ay), (bx, by) = vp.to_screen(0, 0), vp.to_screen(W, H)
    c0x, c0y = max(0, int(np.ceil(ax)) + 1), max(0, int(np.ceil(ay)) + 1)
    c1x, c1y = min(view.width(), int(bx) - 1), min(view.height() - BAR_MARGIN, int(by) - 1)
    crop = rendered[c0y:c1y, c0x:c1x]
    (x0, y0), (x1, y1) = vp.to_slide(c0x, c0y), vp.to_slide(c1x, c1y)
    lx0, ly0, lx1, ly1 = (round(v / ds) for v in (x0, y0, x1, y1))
    ref = expected_rgb(source, level, round(lx0 * ds), round(ly0 * ds), lx1 - lx0, ly1 - ly0)
    ref_small = np.asarray(Image.fromarray(ref).resize((crop.shape[1], crop.shape[0]),
                                                       Image.Resampling.BOX))
    return float(np.abs(block_mean(crop, 8) - block_mean(ref_small, 8)).mean())


def test_every_preset_shows_the_region_at_that_magnification(qtbot, view, small_svs) -> None:
    source = open_slide(small_svs)
    view.set_source(source)
    presets = view.presets()
    assert presets == (1.0, 2.5, 5.0, 10.0, 20.0)
    for mag in presets:
        view.center_on(1110, 1480)
        view.set_magnification(mag)
        wait_drawn(qtbot, view)
        assert view.viewport.magnification(view.geometry_) == pytest.approx(mag)
        diff = region_diff(view, source)
        assert diff < 4, f"{mag}×: rendered region differs from the slide (mean {diff:.1f})"


def test_panning_at_a_scaled_zoom_shows_the_right_place(qtbot, view, app_pyramid) -> None:
    source = open_slide(app_pyramid)
    view.set_source(source)
    view.set_viewport(Viewport(2500, 1800, 1.5, view.width(), view.height()))  # level 0, scaled ×⅔
    wait_drawn(qtbot, view)
    assert view.plan.level == 0
    assert region_diff(view, source) < 4
    for key in (Qt.Key.Key_Right, Qt.Key.Key_Right, Qt.Key.Key_Down, Qt.Key.Key_Left):
        qtbot.keyClick(view, key)
        wait_drawn(qtbot, view)
        assert region_diff(view, source) < 4
    assert len(view.scaled) > 0  # the frames were blits of pre-scaled tiles


def test_arrow_keys_and_drag_pan_to_the_right_place(qtbot, view, small_svs) -> None:
    source = open_slide(small_svs)
    view.set_source(source)
    show_at(qtbot, view, source, 400, 600, 1.0)
    before = view.viewport
    qtbot.keyClick(view, Qt.Key.Key_Right)
    assert view.viewport.cx == pytest.approx(before.cx + view.width() / 4)
    qtbot.keyClick(view, Qt.Key.Key_Down)
    assert view.viewport.cy == pytest.approx(before.cy + view.height() / 4)
    wait_drawn(qtbot, view)
    x0, y0 = (int(round(v)) for v in view.viewport.origin)
    assert_matches(grab_rgb(view), expected_rgb(source, 0, x0, y0, view.width(), view.height()))
    # drag the content 100 px left and 50 px up
    start = view.viewport
    qtbot.mousePress(view, Qt.MouseButton.LeftButton, pos=QPoint(300, 300))
    qtbot.mouseMove(view, QPoint(250, 275))
    qtbot.mouseMove(view, QPoint(200, 250))
    qtbot.mouseRelease(view, Qt.MouseButton.LeftButton, pos=QPoint(200, 250))
    assert (view.viewport.cx, view.viewport.cy) == pytest.approx((start.cx + 100, start.cy + 50))
    wait_drawn(qtbot, view)
    x0, y0 = (int(round(v)) for v in view.viewport.origin)
    assert_matches(grab_rgb(view), expected_rgb(source, 0, x0, y0, view.width(), view.height()))


def test_wheel_zooms_around_the_cursor(qtbot, view, small_svs) -> None:
    source = open_slide(small_svs)
    view.set_source(source)
    show_at(qtbot, view, source, 300, 300, 2.0)
    pos = QPointF(123, 321)
    under = view.viewport.to_slide(pos.x(), pos.y())
    ev = QWheelEvent(pos, view.mapToGlobal(pos), QPoint(0, 0), QPoint(0, 120), Qt.MouseButton.NoButton,
                     Qt.KeyboardModifier.NoModifier, Qt.ScrollPhase.NoScrollPhase, False)
    QApplication.sendEvent(view, ev)
    assert view.viewport.downsample == pytest.approx(2.0 / 1.25)
    assert view.viewport.to_slide(pos.x(), pos.y()) == pytest.approx(under)
    assert view.fast_paint  # while the wheel turns, frames are painted fast …
    qtbot.waitUntil(lambda: not view.fast_paint, timeout=3000)  # … then smoothly once it stops
    wait_drawn(qtbot, view)
    qtbot.keyClick(view, Qt.Key.Key_Plus)
    assert view.viewport.downsample == pytest.approx(2.0 / 1.25 / 1.5)
    qtbot.keyClick(view, Qt.Key.Key_F)
    x0, y0, x1, y1 = view.viewport.visible_rect()
    assert x0 <= 0 and y0 <= 0 and x1 >= 2220 and y1 >= 2967


def test_stale_requests_are_never_painted(qtbot, view, app_pyramid, cache) -> None:
    source = open_slide(app_pyramid)
    view.set_source(source)
    wait_drawn(qtbot, view)
    cache.clear()
    records = []
    view.painted.connect(records.append)
    view.loader.load_delay_s = 0.5  # every read takes at least 500 ms: the requests below go stale
    first_id = view.request_id + 1
    for i in range(6):  # six far-apart places at 1:1, quicker than any tile can load
        view.set_viewport(Viewport(800 + i * 800, 1000 + (i % 2) * 2000, 1.0, view.width(), view.height()))
        qtbot.wait(10)
    last_id = view.request_id
    view.loader.load_delay_s = 0.0  # reads that start from now on (the last request's) are quick
    assert last_id - first_id == 5
    wait_drawn(qtbot, view, timeout=20000)
    final_keys = {view.grid.request(t) for t in view.plan.visible}
    painted_tiles = [(r.request_id, k) for r in records for k in r.drawn]
    assert painted_tiles, "the final viewport was painted"
    assert all(rid == last_id for rid, _ in painted_tiles), "a stale request's tiles reached the paint"
    assert {k for _, k in painted_tiles} <= final_keys
    stats = view.loader.stats
    assert stats.cancelled > 0  # queued reads of stale requests never ran
    assert view.stale_dropped > 0  # reads that were running finished, were cached, not painted


def test_coarse_tiles_stand_in_while_fine_ones_load(qtbot, view, app_pyramid) -> None:
    source = open_slide(app_pyramid)
    view.set_source(source)
    view.set_downsample(8.0)
    wait_drawn(qtbot, view)  # levels around 8× are in the cache now
    view.loader.load_delay_s = 1.0
    records = []
    view.painted.connect(records.append)
    view.set_viewport(Viewport(3000, 2000, 1.0, view.width(), view.height()))
    qtbot.waitUntil(lambda: bool(records), timeout=3000)
    assert records[-1].missing > 0 and not records[-1].complete  # the fine tiles are still loading
    rendered = grab_rgb(view)[:-BAR_MARGIN]
    # never blank: no background colour and no untouched white where the slide is
    assert (np.abs(rendered.astype(int) - (62, 64, 70)).sum(axis=2) < 6).mean() < 0.001
    assert (rendered.min(axis=2) == 255).mean() < 0.01
    x0, y0 = (int(round(v)) for v in view.viewport.origin)
    ref = expected_rgb(source, 0, x0, y0, view.width(), view.height())[:-BAR_MARGIN]
    diff = np.abs(block_mean(rendered, 16) - block_mean(ref, 16))
    assert diff.mean() < 12, "the stand-in is the same place, only blurrier"
    view.loader.load_delay_s = 0.0
    wait_drawn(qtbot, view, timeout=20000)


def test_the_review_box_is_outlined_over_its_region_until_cleared(qtbot, view, app_pyramid) -> None:
    source = open_slide(app_pyramid)
    view.set_source(source)
    show_at(qtbot, view, source, 1000, 1000, 2.0)
    plain = grab_rgb(view)
    box = (1100.0, 1100.0, 400.0, 300.0)  # on screen: x 50..250, y 50..200
    view.set_review_box(box)
    wait_drawn(qtbot, view)
    drawn = grab_rgb(view)
    yellow = (drawn[..., 0] > 200) & (drawn[..., 1] > 170) & (drawn[..., 2] < 80)
    assert yellow[50, 100:200].all() and yellow[200, 100:200].all()  # top and bottom edges
    assert yellow[80:170, 50].all() and yellow[80:170, 250].all()  # left and right edges
    assert not yellow[60:190, 60:240].any()  # an outline: the region itself stays visible
    assert (drawn[60:190, 60:240] == plain[60:190, 60:240]).all()
    view.set_review_box(None)
    wait_drawn(qtbot, view)
    assert (grab_rgb(view)[:-BAR_MARGIN] == plain[:-BAR_MARGIN]).all()
    view.set_review_box(box)
    view.set_source(open_slide(app_pyramid))  # another slide: no box
    assert view.review_box is None

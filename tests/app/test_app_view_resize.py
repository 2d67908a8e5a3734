"""After the window is resized or maximised the view stays on the same slide point (issue 15): the
slide coordinate at the view's centre does not move, at the same zoom; a view showing the whole
slide (fitted) is fitted to its new size, the slide centred."""

from __future__ import annotations

import numpy as np

from app.state.viewport import Viewport, fit_downsample
from engine.slide import open_slide
from qt_probe import grab_rgb, wait_drawn


def centre(view) -> tuple[float, float]:
    return view.viewport.to_slide(view.width() / 2, view.height() / 2)


def test_a_resize_keeps_the_slide_point_at_the_centre(qtbot, view, small_svs) -> None:
    view.set_source(open_slide(small_svs))
    view.set_viewport(Viewport(1234.0, 1050.0, 1.0, view.width(), view.height()))
    view.zoom_by(0.5, (100, 80))  # a zoom about another point, then a pan: not the fit any more
    view.pan_by(-37, 22)
    wait_drawn(qtbot, view)
    before_c, before_ds = centre(view), view.viewport.downsample
    h, w = view.height(), view.width()
    patch = grab_rgb(view)[h // 2 - 32:h // 2 + 32, w // 2 - 32:w // 2 + 32]
    for size in ((900, 700), (420, 300), (640, 480)):
        view.resize(*size)
        qtbot.waitUntil(lambda s=size: (view.width(), view.height()) == s, timeout=5000)
        assert view.viewport.width == size[0] and view.viewport.height == size[1]
        assert np.allclose(centre(view), before_c, atol=0.5), (size, centre(view), before_c)
        assert view.viewport.downsample == before_ds
        wait_drawn(qtbot, view)
        h, w = size[1], size[0]
        now = grab_rgb(view)[h // 2 - 32:h // 2 + 32, w // 2 - 32:w // 2 + 32]
        assert np.abs(now.astype(int) - patch.astype(int)).mean() < 2  # the same tissue there


def test_maximising_keeps_the_centre(qtbot, view, small_svs) -> None:
    view.set_source(open_slide(small_svs))
    view.set_viewport(Viewport(700.0, 1500.0, 2.0, view.width(), view.height()))
    wait_drawn(qtbot, view)
    before = centre(view)
    size = view.size()
    view.showMaximized()
    qtbot.waitUntil(lambda: view.size() != size, timeout=5000)
    assert np.allclose(centre(view), before, atol=0.5)
    assert view.viewport.downsample == 2.0


def test_a_fitted_view_is_fitted_again_after_a_resize(qtbot, view, small_svs) -> None:
    view.set_source(open_slide(small_svs))  # opens fitted
    geo = view.geometry_
    view.resize(1000, 760)
    qtbot.waitUntil(lambda: view.width() == 1000, timeout=5000)
    vp = view.viewport
    assert vp.downsample == fit_downsample(geo, 1000, 760)
    assert np.allclose(centre(view), (geo.width / 2, geo.height / 2), atol=0.5)
    wait_drawn(qtbot, view)
    rgb = grab_rgb(view).astype(int)
    # the slide (glass white or tissue, never the grey background) fills the width it was fitted to
    (x0, _), (x1, _) = vp.to_screen(0, 0), vp.to_screen(geo.width, 0)
    row = rgb[view.height() // 2]
    slide = np.abs(row - (62, 64, 70)).max(axis=-1) > 8
    assert slide[round(x0) + 2:round(x1) - 2].all() and not slide[: max(0, round(x0) - 2)].any()
    view.zoom_by(2.0)  # zoomed in: no longer fitted, so a resize keeps the zoom
    ds = view.viewport.downsample
    view.resize(800, 600)
    qtbot.waitUntil(lambda: view.width() == 800, timeout=5000)
    assert view.viewport.downsample == ds

"""What a pathologist sees of corrections and predictions together (issue 15): two palettes far apart
in hue, a legend naming both, and outlines two logical pixels wide on normal and high-DPI screens.

On CMU-1-Small-Region at 1:1 (``annotating``: slide pixel (800, 900) at the view's top-left), with a
prediction cache (2 slide pixels per cache pixel, one class "tumour") holding one block.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from PySide6.QtCore import Qt
from PySide6.QtGui import QFontMetrics, QImage, QPainter

from app.state.predictions import PredictionStyle
from app.state.session import STARTER_CLASSES
from app.state.viewport import Viewport
from app.viewer.layers import AnnotationOverlay, PredictionOverlay
from app.viewer.layers.legend import MARGIN
from app.viewer.layers.palette import PREDICTION_COLORS, hue_distance
from engine.api import PredictionCache, PredictionGrid
from qt_probe import drag, grab_rgb, screen, wait_drawn

DS = 2.0  # slide pixels per cache pixel
BLOCK = (1300, 1000, 1500, 1200)  # the predicted block, level-0 x0, y0, x1, y1
CORRECTION = (1000, 1000, 1100, 1100)  # a Tumour rectangle drawn by the test


def make_cache(root, slide_path, size) -> PredictionCache:
    """A cache whose one class is predicted (probability 230) in :data:`BLOCK` only."""
    grid = PredictionGrid(str(slide_path), size, DS, 0, 1.0, 64, 16)
    cols, rows = grid.shape
    cache = PredictionCache.open(root, grid, "test-v1", 1, np.ones((rows, cols), bool),
                                 {"name": "toy", "classes": ["background", "tumour"]})
    bx0, by0, bx1, by1 = (int(v / DS) for v in BLOCK)  # in cache pixels
    ys, xs = np.mgrid[0:64, 0:64]
    for r, c in itertools.product(range(rows), range(cols)):
        x, y = xs + c * 64, ys + r * 64
        block = (x >= bx0) & (x < bx1) & (y >= by0) & (y < by1)
        cache.write_tile(c, r, np.where(block, 230, 0).astype(np.uint8)[..., None], flush=False)
    cache.flush()
    return cache


@pytest.fixture
def both(qtbot, annotating, tmp_path, small_svs):
    """The annotating window with a Tumour correction and the block's prediction in view."""
    window = annotating
    view = window.view
    an = view.annotator
    an.set_tool("rectangle")
    an.set_class("Tumour")
    drag(view, [CORRECTION[:2], CORRECTION[2:]])
    an.set_tool(None)
    geo = view.geometry_
    view.predictions.set_cache(make_cache(tmp_path / "cache", small_svs, (geo.width, geo.height)))
    # the Model panel's style, in the colours the model card asks for (the engine palette's red)
    style = window.predictions.panel.style()
    assert style.colors == ((220, 30, 30),)
    view.predictions.set_style(style, view.viewport)
    wait_drawn(qtbot, view)
    return window


def at(rgb: np.ndarray, view, x: float, y: float) -> np.ndarray:
    pt = screen(view, x, y)
    return rgb[pt.y(), pt.x()].astype(int)


def test_prediction_colours_are_far_in_hue_from_every_starter_class_colour() -> None:
    for colour in PREDICTION_COLORS:
        for cls in STARTER_CLASSES:
            assert hue_distance(colour, cls.color) >= 30, (colour, cls)
    tumour = next(c for c in STARTER_CLASSES if c.name == "Tumour")
    assert hue_distance(PREDICTION_COLORS[0], tumour.color) >= 120


def test_a_correction_and_a_prediction_differ_strongly_in_hue_on_screen(qtbot, both) -> None:
    view = both.view
    rgb = grab_rgb(view)
    correction = at(rgb, view, 1050, 1050)  # inside the Tumour rectangle, away from its outline
    prediction = at(rgb, view, 1400, 1100)  # inside the predicted block
    view.annotator.overlay.visible = False
    view.predictions.set_visible(False)
    wait_drawn(qtbot, view)
    bare = grab_rgb(view)
    assert np.abs(correction - at(bare, view, 1050, 1050)).max() > 20  # both are drawn ...
    assert np.abs(prediction - at(bare, view, 1400, 1100)).max() > 20
    assert hue_distance(correction, prediction) >= 90, (correction, prediction)  # ... far apart
    # the model's own colour for "tumour" (the engine palette's red) is not what is drawn
    assert hue_distance(prediction, (220, 30, 30)) >= 90


def test_the_legend_names_the_prediction_and_the_corrections_only_when_both_show(qtbot, both) -> None:
    view = both.view
    entries = view.legend.entries(view.viewport)
    assert [e.text for e in entries] == ["Prediction: tumour", "Correction: Tumour"]
    box = view.legend.rect(view.viewport, QFontMetrics(view.font()), entries).toRect()
    assert box.right() <= view.width() - MARGIN + 1 and box.top() == MARGIN  # top-right corner
    rgb = grab_rgb(view).astype(int)
    inside = rgb[box.top() + 1:box.bottom(), box.left() + 1:box.right()]
    swatch = (np.abs(inside - PREDICTION_COLORS[0]).max(axis=-1) == 0).sum()
    assert swatch >= 100  # the prediction swatch, in the colour predictions are drawn in
    tumour = (np.abs(inside - (220, 40, 40)).max(axis=-1) <= 12).sum()
    assert tumour >= 30  # the correction swatch's outline, in the Tumour colour
    assert (inside.min(axis=-1) > 200).sum() >= 40  # white text on the dark box
    view.predictions.set_visible(False)  # predictions hidden: nothing to tell apart, no legend
    wait_drawn(qtbot, view)
    assert view.legend.entries(view.viewport) == []
    hidden = grab_rgb(view).astype(int)[box.top() + 1:box.bottom(), box.left() + 1:box.right()]
    assert (np.abs(hidden - PREDICTION_COLORS[0]).max(axis=-1) == 0).sum() == 0
    assert (np.abs(hidden - inside).max(axis=-1) > 40).mean() > 0.5  # the dark box is gone
    view.predictions.set_visible(True)
    view.annotator.overlay.visible = False  # corrections hidden: no legend either
    wait_drawn(qtbot, view)
    assert view.legend.entries(view.viewport) == []


# -- outlines ------------------------------------------------------------------------------------


def coverage(row: np.ndarray, bare: np.ndarray, colour) -> float:
    """How many pixels of ``colour`` a line across an outline holds: each pixel counts for the
    fraction of the way it went from the bare picture towards ``colour`` (anti-aliased edges
    count in part), so a line 2 px wide counts about 2 wherever it falls between pixels."""
    row, bare, colour = row.astype(float), bare.astype(float), np.asarray(colour, float)
    d = colour - bare
    f = ((row - bare) * d).sum(axis=-1) / np.maximum((d * d).sum(axis=-1), 1.0)
    return float(np.clip(f, 0.0, 1.0).sum())


def test_annotation_outlines_are_two_pixels_wide_on_a_normal_screen(qtbot, annotating) -> None:
    view, an = annotating.view, annotating.view.annotator
    an.overlay.opacity = 0.0  # outlines only
    an.set_tool("rectangle")
    an.set_class("Tumour")
    drag(view, [CORRECTION[:2], CORRECTION[2:]])
    an.set_tool(None)
    wait_drawn(qtbot, view)
    rgb = grab_rgb(view)
    an.overlay.visible = False
    view.update()
    wait_drawn(qtbot, view)
    bare = grab_rgb(view)
    y = screen(view, 1050, 1050).y()
    x = screen(view, CORRECTION[0], 1050).x()
    width = coverage(rgb[y, x - 6:x + 7], bare[y, x - 6:x + 7], (220, 40, 40))
    assert 1.8 <= width <= 2.8, width


def render(layer, vp: Viewport, size) -> np.ndarray:
    """Paint ``layer`` for ``vp`` (dpr from the viewport) into a transparent image of that pixel
    ratio, as a screen of that ratio gets it; (h, w) alpha of the device pixels."""
    img = QImage(round(vp.width * vp.dpr), round(vp.height * vp.dpr),
                 QImage.Format.Format_ARGB32_Premultiplied)
    img.setDevicePixelRatio(vp.dpr)
    img.fill(Qt.GlobalColor.transparent)
    p = QPainter(img)
    layer.paint(p, vp, size)
    p.end()
    img = img.convertToFormat(QImage.Format.Format_RGBA8888)
    bpl = img.bytesPerLine()
    arr = np.frombuffer(img.constBits(), np.uint8, count=bpl * img.height()).reshape(img.height(), bpl)
    return arr[:, : img.width() * 4].reshape(img.height(), img.width(), 4)[..., 3].astype(float) / 255


def rendered(qtbot, layer, vp: Viewport, size) -> np.ndarray:
    render(layer, vp, size)  # asks the worker for the window
    qtbot.waitUntil(lambda: layer.is_current(vp), timeout=10000)
    return render(layer, vp, size)


@pytest.mark.parametrize("dpr", [1.0, 2.0])
def test_annotation_outlines_are_two_logical_pixels_at_any_pixel_ratio(qtbot, annotating, dpr) -> None:
    view, an = annotating.view, annotating.view.annotator
    an.set_tool("rectangle")
    an.set_class("Tumour")
    drag(view, [CORRECTION[:2], CORRECTION[2:]])
    layer = AnnotationOverlay()  # a second layer on the same store, painted at ``dpr``
    try:
        layer.set_store(an.store)
        layer.set_colors(an.overlay.colors)
        layer.opacity = 0.0
        vp = Viewport(1050.0, 1050.0, 1.0, 300, 200, dpr)  # the rectangle's left edge at x = 100
        alpha = rendered(qtbot, layer, vp, (view.geometry_.width, view.geometry_.height))
        row = alpha[round(100 * dpr), round(70 * dpr):round(130 * dpr)]
        assert 1.8 * dpr <= row.sum() <= 2.8 * dpr, (dpr, row.sum())
    finally:
        layer.shutdown()


@pytest.mark.parametrize("dpr", [1.0, 2.0])
def test_prediction_outlines_are_two_logical_pixels_at_any_pixel_ratio(qtbot, annotating, tmp_path,
                                                                       small_svs, dpr) -> None:
    geo = annotating.view.geometry_
    layer = PredictionOverlay()
    try:
        layer.set_cache(make_cache(tmp_path / "cache", small_svs, (geo.width, geo.height)))
        layer.set_style(PredictionStyle(((220, 30, 30),), 1.0, "mask", outline=True))
        # 3 slide px per screen px: the cache level drawn has 2 slide px per pixel, where a band
        # two cache pixels wide was 1.3 screen pixels (at a pixel ratio of 2: 0.7)
        vp = Viewport(1400.0, 1100.0, 3.0, 300, 200, dpr)
        alpha = rendered(qtbot, layer, vp, (geo.width, geo.height)) > 0
        # the block is x 116.7–183.3, y 66.7–133.3 on screen
        y, x_edge = round(100 * dpr), round(116.7 * dpr)
        start = x_edge - round(5 * dpr)
        run = alpha[y, start:x_edge + round(15 * dpr)]
        assert run.sum() == round(2 * dpr), (dpr, run.astype(int))
        at = np.nonzero(run)[0] + start  # one band, on the inner side of the edge
        assert at.max() - at.min() + 1 == len(at) and x_edge - 1 <= at.min() <= x_edge + 1
        assert alpha[round(75 * dpr):round(125 * dpr), round(125 * dpr):round(175 * dpr)].sum() == 0
    finally:
        layer.shutdown()


def test_prediction_outline_on_screen_is_two_pixels_wide(qtbot, both) -> None:
    view, panel = both.view, both.predictions.panel
    view.set_viewport(Viewport(1400.0, 1100.0, 3.0, view.width(), view.height()))
    view.annotator.overlay.visible = False
    panel.opacity.setValue(100)
    panel.outline.setChecked(True)
    wait_drawn(qtbot, view)
    rgb = grab_rgb(view)
    view.predictions.set_visible(False)
    wait_drawn(qtbot, view)
    bare = grab_rgb(view)
    y = screen(view, 1400, 1100).y()
    x = screen(view, BLOCK[0], 1100).x()
    width = coverage(rgb[y, x - 5:x + 15], bare[y, x - 5:x + 15], PREDICTION_COLORS[0])
    assert 1.8 <= width <= 2.2, width

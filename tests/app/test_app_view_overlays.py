"""What a pathologist sees of corrections and predictions together (issue 15): two palettes far apart
in hue, and a legend naming both.

On CMU-1-Small-Region at 1:1 (``annotating``: slide pixel (800, 900) at the view's top-left), with a
prediction cache (2 slide pixels per cache pixel, one class "tumour") holding one block.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from PySide6.QtGui import QFontMetrics

from app.state.session import STARTER_CLASSES
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

"""Accepting the prediction into annotations (A, Shift+A) and the fill-from-prediction tool
(Shift+G), on CMU-1-Small-Region with a prediction cache holding a known pattern.

The cache (2 slide pixels per cache pixel, one class "tumour") holds, in slide level-0 pixels:
a ring 200 × 180 with a 120 × 100 hole (in the view), a bar 80 × 60 (in the view), a square far
outside the view, and a 6 × 6 speck in the view (under the 200 µm² smallest island).
"""

from __future__ import annotations

import numpy as np
import pytest
from PySide6.QtCore import Qt
from PySide6.QtTest import QTest
from shapely.geometry import box

from app.state import editing
from engine.api import Kind, PredictionCache, PredictionGrid, Source
from qt_probe import click

DS = 2.0
RING = box(840, 940, 1040, 1120).difference(box(880, 980, 1000, 1080))
BAR = box(1120, 940, 1200, 1000)
FAR = box(200, 200, 300, 300)
SPECK = box(840, 1200, 846, 1206)


def make_cache(root, slide_path, size, write: bool = True) -> PredictionCache:
    grid = PredictionGrid(str(slide_path), size, DS, 0, 1.0, 64, 16)
    cols, rows = grid.shape
    cache = PredictionCache.open(root, grid, "test-v1", 1, np.ones((rows, cols), bool),
                                 {"name": "toy", "classes": ["background", "tumour"]})
    if not write:
        return cache
    w, h = grid.size
    probs = np.zeros((rows * 64, cols * 64, 1), np.uint8)
    for shape in (RING, BAR, FAR, SPECK):
        x0, y0, x1, y1 = (int(v / DS) for v in shape.bounds)
        probs[y0:y1, x0:x1] = 230
    probs[490:540, 440:500] = 0  # the ring's hole
    for r in range(rows):
        for c in range(cols):
            cache.write_tile(c, r, probs[r * 64:(r + 1) * 64, c * 64:(c + 1) * 64], flush=False)
    cache.flush()
    return cache


@pytest.fixture
def predicted_view(annotating, tmp_path, small_svs):
    """The annotating window (1:1 at slide pixel (800, 900)) showing the pattern's prediction."""
    window = annotating
    geo = window.view.geometry_
    window.view.predictions.set_cache(make_cache(tmp_path / "cache", small_svs,
                                                 (geo.width, geo.height)))
    x0, y0, x1, y1 = window.view.viewport.visible_rect()
    assert x0 < 840 and y0 < 940 and x1 > 1200 and y1 > 1206, "the pattern must be in view"
    return window


def regions(window):
    return window.view.annotator.store.annotations(Kind.REGION)


def status(window) -> str:
    return window.statusBar().currentMessage()


def test_accept_in_view_makes_the_predicted_regions_annotations_in_one_undo_step(predicted_view):
    window = predicted_view
    stack = window.view.annotator.document.undo_stack
    before = stack.count()
    window.view.setFocus()
    QTest.keyClick(window.view, Qt.Key.Key_A)
    anns = sorted(regions(window), key=lambda a: -a.area)
    assert len(anns) == 2, status(window)  # the far square is out of view, the speck too small
    ring, bar = anns
    assert ring.geometry.equals(RING) and len(ring.geometry.interiors) == 1
    assert ring.area == pytest.approx(RING.area) == (200 * 180 - 120 * 100)
    assert bar.geometry.equals(BAR)
    for a in anns:
        assert a.class_name == "Tumour" and a.source is Source.MODEL and a.geometry.is_valid
        assert a.author.startswith("toy ")
    assert stack.count() == before + 1 and "2 new annotation(s)" in status(window)
    window.annotations.act_undo.trigger()
    assert regions(window) == []
    window.annotations.act_redo.trigger()
    assert len(regions(window)) == 2
    QTest.keyClick(window.view, Qt.Key.Key_A)  # again: nothing new
    assert len(regions(window)) == 2 and "annotated already" in status(window)
    assert stack.count() == before + 1


def test_what_the_pathologist_drew_wins_and_same_class_outlines_grow(predicted_view):
    window = predicted_view
    ann = window.view.annotator
    mine = ann.apply(editing.add_shape(box(1000, 1100, 1060, 1160), "Tumour", [], "me", merge=False))
    stroma = ann.apply(editing.add_shape(box(1160, 900, 1300, 1100), "Stroma", [], "me", merge=False))
    assert mine is not None and stroma is not None
    mine_id = mine.changes[0].uuid
    window.predictions.accept.act_view.trigger()
    anns = {a.uuid: a for a in regions(window)}
    assert len(anns) == 3  # mine (grown into the ring), the stroma box, the rest of the bar
    grown = anns[mine_id]
    assert grown.source is Source.PATHOLOGIST
    assert grown.geometry.equals(RING.union(box(1000, 1100, 1060, 1160)))
    bar = next(a for a in anns.values() if a.source is Source.MODEL)
    assert bar.geometry.equals(box(1120, 940, 1160, 1000))  # cut where the stroma lies
    assert next(a for a in anns.values() if a.class_name == "Stroma").area == 140 * 200
    assert "1 new annotation(s), 1 of yours extended" in status(window)
    window.annotations.act_undo.trigger()  # one undo: the ring and bar are gone, mine is as it was
    anns = {a.uuid: a for a in regions(window)}
    assert len(anns) == 2 and anns[mine_id].area == 60 * 60


def test_accept_in_the_selected_roi_only(predicted_view):
    window = predicted_view
    ann = window.view.annotator
    roi_step = ann.apply(editing.add_shape(box(1100, 960, 1180, 1300), None, [], "me",
                                           kind=Kind.ROI, label="correction ROI", merge=False))
    assert roi_step is not None
    window.view.setFocus()
    QTest.keyClick(window.view, Qt.Key.Key_A, Qt.KeyboardModifier.ShiftModifier)
    assert regions(window) == [] and "Select a correction ROI first" in status(window)
    ann.set_selection([roi_step.changes[0].uuid])
    QTest.keyClick(window.view, Qt.Key.Key_A, Qt.KeyboardModifier.ShiftModifier)
    [got] = regions(window)
    assert got.geometry.equals(box(1120, 960, 1180, 1000)) and got.class_name == "Tumour"


def test_fill_from_prediction_takes_the_clicked_region_only(predicted_view):
    window = predicted_view
    view, ann = window.view, window.view.annotator
    view.setFocus()
    QTest.keyClick(view, Qt.Key.Key_G, Qt.KeyboardModifier.ShiftModifier)
    assert ann.tool is not None and ann.tool.name == "fill_prediction"
    click(view, 950, 960)  # on the ring
    [ring] = regions(window)
    assert ring.geometry.equals(RING) and ring.class_name == "Tumour"
    assert ring.source is Source.MODEL
    click(view, 940, 1030)  # in the ring's hole: background
    assert len(regions(window)) == 1 and "predicts no tumour here" in status(window)
    click(view, 1250, 1150)  # nothing predicted there either
    assert len(regions(window)) == 1
    click(view, 1150, 970)  # the bar
    assert len(regions(window)) == 2
    assert any(a.geometry.equals(BAR) for a in regions(window))
    window.annotations.act_undo.trigger()  # one undo: the bar only
    [left] = regions(window)
    assert left.geometry.equals(RING)
    click(view, 843, 1203)  # the speck: a click takes it whatever its size
    assert any(a.geometry.equals(SPECK) for a in regions(window))


def test_without_a_prediction_the_status_bar_says_why(annotating, tmp_path, small_svs):
    window = annotating
    view = window.view
    view.setFocus()
    QTest.keyClick(view, Qt.Key.Key_A)
    assert "No prediction on this slide yet" in status(window)
    QTest.keyClick(view, Qt.Key.Key_G, Qt.KeyboardModifier.ShiftModifier)
    click(view, 950, 960)
    assert "No prediction on this slide yet" in status(window) and regions(window) == []
    geo = view.geometry_
    view.predictions.set_cache(make_cache(tmp_path / "empty", small_svs, (geo.width, geo.height),
                                          write=False))  # a run that has not got here yet
    click(view, 950, 960)
    assert "not predicted this spot yet" in status(window)
    QTest.keyClick(view, Qt.Key.Key_A)
    assert "has not predicted the view yet" in status(window) and regions(window) == []

"""A correction ROI is picked by its border only (issue 15): a click inside one, on the tissue being
reviewed, selects what lies under it or nothing, never the whole reviewed area (which the next
Delete would remove). On CMU-1-Small-Region at 1:1 (``annotating``)."""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import Qt
from PySide6.QtTest import QTest

from app.viewer.layers.annotations import SELECTED_COLOR
from engine.api import Kind
from qt_probe import click, drag, grab_rgb, screen, wait_drawn

ROI = (1000, 1000, 1300, 1200)  # level-0 x0, y0, x1, y1: on screen x 200–500, y 100–300
REGION = (1150, 1050, 1250, 1150)  # a Tumour rectangle inside it


def cyan(rgb: np.ndarray) -> np.ndarray:
    target = np.array([SELECTED_COLOR.red(), SELECTED_COLOR.green(), SELECTED_COLOR.blue()])
    return np.abs(rgb.astype(int) - target).max(axis=-1) <= 40


def make_roi(qtbot, window):
    view, an = window.view, window.view.annotator
    an.set_tool("roi")
    drag(view, [ROI[:2], ROI[2:]])
    [roi] = an.store.rois()
    an.set_tool("select")
    wait_drawn(qtbot, view)
    return roi


def test_a_click_inside_a_roi_does_not_select_it_a_click_on_its_border_does(qtbot, annotating) -> None:
    view, an = annotating.view, annotating.view.annotator
    roi = make_roi(qtbot, annotating)
    click(view, 1100, 1100)  # inside, on nothing but the ROI
    assert an.selection == []
    wait_drawn(qtbot, view)
    left = screen(view, ROI[0], 1100)
    assert not cyan(grab_rgb(view)[left.y() - 40:left.y() + 40, left.x() - 3:left.x() + 4]).any()
    click(view, ROI[0] + 2, 1100)  # on the left border (2 screen px in)
    assert an.selection == [roi.uuid]
    wait_drawn(qtbot, view)
    rgb = grab_rgb(view)
    edge = cyan(rgb[left.y() - 40:left.y() + 40, left.x() - 3:left.x() + 4])
    assert edge.any(axis=1).all()  # the selected ROI's border is drawn in the selection colour
    mid = screen(view, 1100, 1100)
    assert not cyan(rgb[mid.y() - 20:mid.y() + 20, mid.x() - 20:mid.x() + 20]).any()
    click(view, 1100, 1100)  # inside again: the selection clears
    assert an.selection == []
    click(view, 1100, ROI[3] + 3)  # just outside the bottom border, within a few pixels
    assert an.selection == [roi.uuid]
    click(view, 1100, ROI[3] + 12)  # farther out: nothing
    assert an.selection == []


def test_a_click_inside_a_roi_selects_the_annotation_under_it(qtbot, annotating) -> None:
    view, an = annotating.view, annotating.view.annotator
    roi = make_roi(qtbot, annotating)
    an.set_tool("rectangle")
    an.set_class("Tumour")
    drag(view, [REGION[:2], REGION[2:]])
    [region] = an.store.annotations(Kind.REGION)
    an.set_tool("select")
    click(view, 1200, 1100)
    assert an.selection == [region.uuid]
    click(view, ROI[2] - 1, 1100, Qt.KeyboardModifier.ShiftModifier)  # Shift-click the border
    assert an.selection == [region.uuid, roi.uuid]


def test_delete_and_move_inside_a_roi_leave_it_alone(qtbot, annotating) -> None:
    view, an = annotating.view, annotating.view.annotator
    roi = make_roi(qtbot, annotating)
    an.set_tool("delete")
    click(view, 1100, 1100)
    assert [r.uuid for r in an.store.rois()] == [roi.uuid]  # a click inside deletes nothing
    an.set_tool("move")
    drag(view, [(1100, 1100), (1150, 1150)])
    assert an.store.get(roi.uuid).geometry.bounds == ROI  # a drag inside moves nothing
    drag(view, [(ROI[0] + 1, 1100), (ROI[0] + 51, 1150)])  # a drag by the border moves it
    assert an.store.get(roi.uuid).geometry.bounds == (ROI[0] + 50, ROI[1] + 50, ROI[2] + 50,
                                                      ROI[3] + 50)
    an.set_tool("delete")
    click(view, ROI[0] + 50, 1150)  # its (moved) border: deleted
    assert an.store.rois() == []
    view.setFocus()
    QTest.keyClick(view, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    assert [r.uuid for r in an.store.rois()] == [roi.uuid]

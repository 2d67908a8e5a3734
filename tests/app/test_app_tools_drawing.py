"""Drawing with each tool (simulated mouse on the slide view) puts the expected geometry in the store.

The view shows CMU-1-Small-Region at level 0, 1:1 (``annotating``): one screen pixel is one level-0
pixel (0.499 µm), so shapes are checked in level-0 pixels and µm.
"""

from __future__ import annotations

import math

import pytest
from PySide6.QtCore import Qt
from PySide6.QtTest import QTest

from shapely.geometry import Point
from qt_probe import click, drag, screen
from engine.api import Kind

MPP = 0.499
ALT = Qt.KeyboardModifier.AltModifier


def regions(window):
    return window.view.annotator.store.annotations()


def use(window, tool: str, class_name: str | None = None):
    an = window.view.annotator
    an.set_tool(tool)
    if class_name:
        an.set_class(class_name)
    return an


def test_rectangle_makes_a_box_of_the_current_class(annotating) -> None:
    use(annotating, "rectangle", "Stroma")
    drag(annotating.view, [(1000, 1000), (1100, 1050), (1200, 1150)])
    [ann] = regions(annotating)
    assert ann.class_name == "Stroma" and ann.kind is Kind.REGION
    assert ann.geometry.bounds == pytest.approx((1000, 1000, 1200, 1150), abs=1)
    assert ann.area * MPP ** 2 == pytest.approx(200 * 150 * MPP ** 2, rel=0.02)  # ≈ 7470 µm²
    assert annotating.view.annotator.document.undo_stack.count() == 1


def test_brush_stroke_is_a_buffered_line_of_the_brush_size(annotating) -> None:
    an = use(annotating, "brush", "Tumour")
    an.set_brush_um(40.0)  # diameter 40 µm: radius 40.08 px
    r = 40 / (2 * MPP)
    drag(annotating.view, [(1000 + 20 * i, 1200) for i in range(16)])  # 300 px long
    [ann] = regions(annotating)
    assert ann.class_name == "Tumour"
    x0, y0, x1, y1 = ann.geometry.bounds
    assert (x0, x1) == pytest.approx((1000 - r, 1300 + r), abs=1.5)
    assert (y0, y1) == pytest.approx((1200 - r, 1200 + r), abs=1.5)
    assert ann.area == pytest.approx(300 * 2 * r + math.pi * r * r, rel=0.02)


def test_escape_drops_a_brush_stroke_in_progress(annotating) -> None:
    view = annotating.view
    use(annotating, "brush", "Tumour")
    QTest.mousePress(view, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier,
                     screen(view, 1000, 1000))
    QTest.mouseMove(view, screen(view, 1100, 1000))
    QTest.keyClick(view, Qt.Key.Key_Escape)
    QTest.mouseRelease(view, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier,
                       screen(view, 1200, 1000))
    assert regions(annotating) == []
    drag(view, [(1000, 1000), (1100, 1000)])
    assert len(regions(annotating)) == 1


def test_brush_unions_into_the_annotation_under_it_and_alt_subtracts(annotating) -> None:
    view = annotating.view
    use(annotating, "rectangle", "Tumour")
    drag(view, [(1000, 1000), (1200, 1200)])
    [rect] = regions(annotating)
    an = use(annotating, "brush")
    an.set_brush_um(20.0)  # radius ≈ 20 px
    drag(view, [(1150, 1100), (1250, 1100), (1300, 1100)])  # from inside to outside
    [grown] = regions(annotating)
    assert grown.uuid == rect.uuid and grown.geometry.bounds[2] == pytest.approx(1320, abs=1.5)
    assert grown.area > rect.area
    drag(view, [(990, 1100), (1100, 1100), (1210, 1100)], ALT)  # cut a band across the box
    [cut] = regions(annotating)
    assert cut.uuid == rect.uuid and cut.area < grown.area - 200 * 38
    assert not cut.geometry.contains(Point(1100, 1100))
    assert cut.geometry.geom_type == "MultiPolygon"  # the band split the box in two


def test_eraser_cuts_every_class(annotating) -> None:
    view = annotating.view
    use(annotating, "rectangle", "Tumour")
    drag(view, [(1000, 1000), (1100, 1100)])
    use(annotating, "rectangle", "Stroma")
    drag(view, [(1150, 1000), (1250, 1100)])
    an = use(annotating, "eraser")
    an.set_brush_um(10.0)
    drag(view, [(990, 1050), (1100, 1050), (1200, 1050), (1260, 1050)])
    anns = regions(annotating)
    assert sorted(a.class_name for a in anns) == ["Stroma", "Tumour"]
    for a in anns:
        assert a.area < 100 * 100 - 100 * 18
        assert not a.geometry.intersects(Point(a.geometry.centroid.x, 1050))


def test_polygon_by_clicks_closes_on_double_click(qtbot, annotating) -> None:
    view = annotating.view
    use(annotating, "polygon", "Necrosis")
    for x, y in [(1000, 1000), (1200, 1000)]:
        click(view, x, y)
    QTest.mouseDClick(view, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier,
                      screen(view, 1000, 1200))
    [ann] = regions(annotating)
    assert ann.class_name == "Necrosis"
    assert ann.area == pytest.approx(200 * 200 / 2, rel=0.01)


def test_polygon_enter_closes_escape_cancels(annotating) -> None:
    view = annotating.view
    use(annotating, "polygon", "Tumour")
    for x, y in [(1000, 1000), (1100, 1000), (1100, 1100)]:
        click(view, x, y)
    QTest.keyClick(view, Qt.Key.Key_Escape)
    assert regions(annotating) == []
    for x, y in [(1000, 1000), (1100, 1000), (1100, 1100), (1000, 1100)]:
        click(view, x, y)
    QTest.keyClick(view, Qt.Key.Key_Return)
    [ann] = regions(annotating)
    assert ann.area == pytest.approx(100 * 100, rel=0.01)


def test_freehand_polygon_follows_the_drag(annotating) -> None:
    use(annotating, "polygon", "Tumour")
    pts = [(1000 + 5 * i, 1000) for i in range(41)] + [(1200, 1000 + 5 * i) for i in range(41)]
    drag(annotating.view, pts)  # released at (1200, 1200): closed back to the start
    [ann] = regions(annotating)
    assert ann.area == pytest.approx(200 * 200 / 2, rel=0.03)


def test_fill_closes_a_hole_and_floods_the_free_part_of_an_roi(annotating) -> None:
    view = annotating.view
    an = use(annotating, "rectangle", "Tumour")
    drag(view, [(1000, 1000), (1200, 1200)])
    an.set_tool("eraser")
    an.set_brush_um(20.0)
    drag(view, [(1100, 1100), (1101, 1100)])  # a hole in the middle
    [holed] = regions(annotating)
    assert holed.area < 200 * 200 - 1000
    an.set_tool("fill")
    click(view, 1100, 1100)
    [filled] = regions(annotating)
    assert filled.uuid == holed.uuid and filled.area == pytest.approx(200 * 200, rel=0.001)
    an.set_tool("roi")
    drag(view, [(1300, 1000), (1500, 1200)])
    [roi] = an.store.rois()
    an.set_tool("rectangle")
    an.set_class("Stroma")
    drag(view, [(1300, 1000), (1400, 1200)])  # the left half of the ROI is Stroma
    an.set_tool("fill")
    an.set_class("Tumour")
    click(view, 1450, 1100)
    tumour = [a for a in regions(annotating) if a.class_name == "Tumour"
              and a.geometry.intersects(roi.geometry)]
    assert len(tumour) == 1 and tumour[0].area == pytest.approx(100 * 200, rel=0.01)
    click(view, 1700, 1700)  # outside everything: nothing to flood, nothing changes
    assert len(regions(annotating)) == 3


def test_select_move_delete_merge_reclass(annotating) -> None:
    view = annotating.view
    an = use(annotating, "rectangle", "Tumour")
    drag(view, [(1000, 1000), (1100, 1100)])
    drag(view, [(1200, 1000), (1300, 1100)])
    first, second = regions(annotating)
    an.set_tool("move")
    drag(view, [(1050, 1050), (1080, 1090), (1110, 1130)])  # by (60, 80)
    moved = an.store.get(first.uuid)
    assert moved.geometry.bounds == pytest.approx((1060, 1080, 1160, 1180), abs=0.01)
    an.set_tool("reclass")
    an.set_class("Stroma")
    click(view, 1250, 1050)
    assert an.store.get(second.uuid).class_name == "Stroma"
    an.set_tool("merge")
    click(view, 1100, 1130)
    click(view, 1250, 1050)
    [merged] = regions(annotating)
    assert merged.uuid == first.uuid and merged.area == pytest.approx(2 * 100 * 100)
    an.set_tool("select")
    click(view, 1250, 1050)
    assert an.selection == [merged.uuid]
    QTest.keyClick(view, Qt.Key.Key_Delete)
    assert regions(annotating) == []
    an.set_tool("rectangle")
    drag(view, [(1000, 1000), (1100, 1100)])
    an.set_tool("delete")
    click(view, 1500, 1500)  # a miss deletes nothing
    assert len(regions(annotating)) == 1
    click(view, 1050, 1050)
    assert regions(annotating) == []


def test_correction_roi_tools_make_rois(annotating) -> None:
    view = annotating.view
    an = use(annotating, "roi")
    drag(view, [(1000, 1000), (1400, 1300)])
    an.set_tool("roi_polygon")
    for x, y in [(1500, 1000), (1700, 1000), (1700, 1200)]:
        click(view, x, y)
    QTest.keyClick(view, Qt.Key.Key_Return)
    rois = an.store.rois()
    assert [r.class_name for r in rois] == [None, None] and regions(annotating) == []
    assert sorted(round(r.area) for r in rois) == [20000, 120000]


def test_shapes_are_cut_to_the_slide(annotating) -> None:
    view = annotating.view
    an = use(annotating, "rectangle", "Tumour")
    view.center_on(2220, 2967)  # the slide's bottom-right corner in the middle of the view
    drag(view, [(2100, 2900), (2400, 3100)])
    [ann] = an.store.annotations()
    assert ann.geometry.bounds == pytest.approx((2100, 2900, 2220, 2967), abs=1)

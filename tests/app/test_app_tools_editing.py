"""The tools' geometry (app.state.editing, no Qt) against shapely's own set operations."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from shapely.geometry import Polygon, box

from app.state import editing
from engine.api import Annotation, Kind

coords = st.integers(0, 400)


@st.composite
def boxes(draw):
    x, y = draw(coords), draw(coords)
    return box(x, y, x + draw(st.integers(5, 200)), y + draw(st.integers(5, 200)))


@settings(max_examples=60, deadline=None)
@given(boxes(), boxes(), boxes())
def test_add_unions_same_class_overlaps_into_the_oldest(a, b, shape) -> None:
    anns = [Annotation(a, "T"), Annotation(b, "T")]
    edit = editing.add_shape(shape, "T", anns, "me")
    touched = [x for x in anns if x.geometry.intersects(shape)]
    if not touched:
        [(before, after)] = edit.pairs
        assert before is None and after.area == shape.area
        return
    kept = [after for _, after in edit.pairs if after is not None]
    assert len(kept) == 1 and kept[0].uuid == touched[0].uuid
    union = shape.union(touched[0].geometry)
    for x in touched[1:]:
        union = union.union(x.geometry)
    assert abs(kept[0].area - union.area) < 1e-6 * union.area + 1
    assert sum(1 for _, after in edit.pairs if after is None) == len(touched) - 1


@settings(max_examples=60, deadline=None)
@given(boxes(), boxes())
def test_subtract_leaves_the_difference_or_deletes(a, shape) -> None:
    ann = Annotation(a, "T")
    edit = editing.subtract_shape(shape, [ann], "T", any_class=False)
    rest = a.difference(shape)
    if not a.intersects(shape) or rest.equals(a):
        assert edit is None
        return
    [(before, after)] = edit.pairs
    if after is None:
        assert rest.area < editing.MIN_AREA * 4
    else:
        assert abs(after.area - rest.area) <= 4 * editing.MIN_AREA
    other = editing.subtract_shape(shape, [Annotation(a, "S")], "T", any_class=False)
    assert other is None  # another class is left alone unless erasing


@settings(max_examples=40, deadline=None)
@given(boxes(), st.integers(2, 40))
def test_fill_restores_a_punched_hole(outer, r) -> None:
    cx, cy = outer.centroid.x, outer.centroid.y
    hole = box(cx - r, cy - r, cx + r, cy + r)
    if not outer.buffer(-2).contains(hole):
        return
    holed = Annotation(outer.difference(hole), "T")
    edit = editing.fill_at(cx, cy, [holed], "T", "me")
    [(before, after)] = edit.pairs
    assert after.uuid == holed.uuid and abs(after.area - outer.area) < 1e-6


def test_clip_cuts_to_the_slide_and_drops_what_falls_off() -> None:
    slide = box(0, 0, 100, 100)
    inside, half, off = (Annotation(box(10, 10, 20, 20)), Annotation(box(90, 90, 120, 120)),
                         Annotation(box(200, 200, 220, 220)))
    edit = editing.clip_edit(editing.Edit("x", ((None, inside), (None, half), (None, off))), slide)
    assert [a.area for _, a in edit.pairs] == [100, 100]


def test_rois_have_no_class_and_merge_only_with_rois() -> None:
    roi = Annotation(box(0, 0, 10, 10), kind=Kind.ROI)
    region = Annotation(box(0, 0, 10, 10), "T")
    edit = editing.add_shape(Polygon([(5, 5), (15, 5), (15, 15)]), "T", [roi, region], "me",
                             kind=Kind.ROI)
    [(before, after)] = edit.pairs
    assert before is roi and after.class_name is None and after.kind is Kind.ROI

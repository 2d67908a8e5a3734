"""What accepting a prediction does to the annotations (app.state.accept, no Qt)."""

from __future__ import annotations

from shapely.geometry import box

from app.state.accept import accept_shapes, accepted_counts, match_class, target_classes
from engine.api import Annotation, AnnotationClass, Kind, Source

PROJECT = [AnnotationClass("Tumour", (220, 40, 40), "1"), AnnotationClass("Stroma", (60, 160, 60))]


def test_model_classes_find_the_project_class_or_are_created():
    assert match_class("tumor", PROJECT).name == "Tumour"
    assert match_class(" TUMOUR ", PROJECT).name == "Tumour"
    assert match_class("necrosis", PROJECT) is None
    names, new = target_classes(["tumor", "necrosis", "Necrosis"], PROJECT, [(1, 2, 3), (4, 5, 6)])
    assert names == ["Tumour", "necrosis", "necrosis"]  # created once, then matched
    assert new == [AnnotationClass("necrosis", (4, 5, 6))]


def test_a_piece_bridging_two_annotations_of_its_class_joins_them_into_the_first():
    a, b = Annotation(box(0, 0, 10, 10), "Tumour"), Annotation(box(30, 0, 40, 10), "Tumour")
    edit = accept_shapes([("Tumour", [box(5, 0, 35, 10), box(100, 100, 110, 110)])], [a, b],
                         "toy v1", "accept")
    assert edit is not None and accepted_counts(edit.pairs) == (1, 1)
    changed = {(bf.uuid if bf else None): af for bf, af in edit.pairs}
    assert changed[a.uuid].geometry.equals(box(0, 0, 40, 10)) and changed[b.uuid] is None
    [new] = [af for bf, af in edit.pairs if bf is None]
    assert new.geometry.equals(box(100, 100, 110, 110)) and new.source is Source.MODEL
    assert new.author == "toy v1" and new.class_name == "Tumour"


def test_locked_and_other_class_annotations_are_cut_out_and_left_alone():
    locked = Annotation(box(0, 0, 10, 10), "Tumour", locked=True)
    other = Annotation(box(10, 0, 20, 10), "Stroma")
    roi = Annotation(box(-50, -50, 50, 50), None, kind=Kind.ROI)
    edit = accept_shapes([("Tumour", [box(0, 0, 30, 10)])], [locked, other, roi], "m", "accept")
    assert edit is not None and len(edit.pairs) == 1
    before, after = edit.pairs[0]
    assert before is None and after.geometry.equals(box(20, 0, 30, 10))
    assert accept_shapes([("Tumour", [box(0, 0, 20, 10)])], [locked, other], "m", "x") is None


def test_single_makes_one_annotation_and_classes_go_with_the_edit_only_when_used():
    cls = AnnotationClass("necrosis", (1, 2, 3))
    split = Annotation(box(10, 0, 20, 10), "Stroma")
    edit = accept_shapes([("necrosis", [box(0, 0, 30, 10)])], [split], "m", "fill", [cls],
                         single=True)
    [(before, after)] = edit.pairs
    assert before is None and after.geometry.equals(box(0, 0, 10, 10).union(box(20, 0, 30, 10)))
    assert edit.classes == (cls,)
    edit2 = accept_shapes([("Tumour", [box(0, 0, 5, 5)])], [], "m", "x", [cls])
    assert edit2 is not None and edit2.classes == ()

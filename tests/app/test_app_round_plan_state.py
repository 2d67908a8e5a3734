"""What the Training panel says before a round, Qt-free (app.state.round_plan): slide names, which
slides are ticked after a slide switch, and how the classes drawn map to the model's."""

from __future__ import annotations

from pathlib import Path

from app.state.round_plan import SlideRow, class_plan, roi_text, slide_label, ticked_after_switch
from engine.api import class_lut


def test_slides_are_named_by_file_and_a_dicom_by_folder_and_file(tmp_path: Path, dicom_dir: Path):
    assert slide_label("/data/slides/CMU-1.svs") == "CMU-1.svs"
    assert slide_label(dicom_dir) == f"{dicom_dir.name}/level-0-frames-0-30.dcm"
    assert slide_label(dicom_dir / "level-3-frames-0-1.dcm") == f"{dicom_dir.name}/level-3-frames-0-1.dcm"
    empty = tmp_path / "scan"
    empty.mkdir()
    assert slide_label(empty) == "scan/"
    assert roi_text(SlideRow("/a.svs", "a.svs", 1)) == "a.svs — 1 ROI"
    assert roi_text(SlideRow("/a.svs", "a.svs", 3)) == "a.svs — 3 ROIs"


def test_the_open_slide_is_ticked_after_a_switch_with_those_ticked_by_hand():
    paths = ["/a.svs", "/b.svs", "/c.svs"]
    assert ticked_after_switch(paths, "/b.svs", {}) == {"/b.svs"}
    assert ticked_after_switch(paths, "/b.svs", {"/a.svs": True, "/c.svs": False}) == {"/a.svs", "/b.svs"}
    assert ticked_after_switch(paths, "/b.svs", {"/b.svs": False}) == {"/b.svs"}  # open: ticked
    assert ticked_after_switch(paths, None, {"/c.svs": True}) == {"/c.svs"}


def test_the_class_plan_says_how_each_drawn_class_trains_the_model():
    project = ["Tumour", "Stroma", "Necrosis"]
    model = ["background", "tumour"]
    lut, notes = class_lut(project, model, {"Tumour", "Stroma"})
    text = class_plan(project, model, {"Tumour", "Stroma"}, [int(v) for v in lut], notes)
    assert text == ("Classes: class 'Tumour' is the model's 'tumour'; class 'Stroma' is taken as "
                    "'background' (not tumour).")
    lut, notes = class_lut(project, model, {"Stroma"})
    text = class_plan(project, model, {"Stroma"}, [int(v) for v in lut], notes)
    assert "class 'Stroma' is taken as 'background' (not tumour)" in text
    assert "learns only what is not tumour" in text and "Tumour" not in text.replace("'Tumour'", "")
    assert class_plan(project, model, set(), [0] * 256, []).startswith("Classes: no class is drawn")

"""Projects in the GUI: the default project, switching projects, and refusals a user can meet."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from qt_probe import click, drag
from engine.api import Project


def test_a_slide_opened_without_a_project_goes_to_the_default_project(annotating) -> None:
    project = annotating.annotations.project
    assert project.folder == Path(os.environ["COCOPATH_DATA_DIR"]).resolve() / "Default project"
    assert [c.name for c in project.classes()][:2] == ["Tumour", "Stroma"]
    assert "Default project" in annotating.annotations.project_label.text()
    view = annotating.view
    view.annotator.set_tool("rectangle")
    drag(view, [(1000, 1000), (1100, 1100)])
    # committed at once: another connection sees it while the window is still open
    with Project.open(project.folder) as other:
        assert other.store(other.slides()[0]).count() == 1


def test_new_and_open_project_move_the_open_slide_along(annotating, tmp_path: Path) -> None:
    actions = annotating.annotations
    view, an = annotating.view, annotating.view.annotator
    an.set_tool("rectangle")
    drag(view, [(1000, 1000), (1100, 1100)])
    default = actions.project.folder
    assert actions.new_project(tmp_path / "case-17")
    assert actions.project.folder == (tmp_path / "case-17").resolve()
    assert an.store is not None and an.store.count() == 0  # the slide, in the new project
    assert an.document.undo_stack.count() == 0
    drag(view, [(1200, 1000), (1300, 1150)])
    drag(view, [(1400, 1000), (1500, 1150)])
    assert actions.open_project(default)
    assert an.store.count() == 1 and an.document.undo_stack.count() == 1
    assert not actions.new_project(default)  # a folder that holds a project is not overwritten
    assert "already holds a CoCoPath project" in annotating.last_error
    assert actions.project.folder == default


def test_opening_a_folder_that_is_no_project_says_so(annotating, tmp_path: Path) -> None:
    before = annotating.annotations.project
    assert not annotating.annotations.open_project(tmp_path)
    assert "not a CoCoPath project" in annotating.last_error
    assert annotating.annotations.project is before


def test_a_locked_annotation_refuses_edits_with_a_message(annotating) -> None:
    view, an = annotating.view, annotating.view.annotator
    an.set_tool("rectangle")
    drag(view, [(1000, 1000), (1100, 1100)])
    [ann] = an.store.annotations()
    an.store.set_locked(ann.uuid)
    an.document.rebuild()  # the lock was set behind the GUI's back (another tool, say)
    an.set_tool("eraser")
    drag(view, [(990, 1050), (1110, 1050)])  # an eraser skips locked outlines: nothing to do
    an.set_tool("delete")
    click(view, 1050, 1050)
    assert an.store.count() == 1
    assert "locked" in annotating.statusBar().currentMessage()
    an.set_tool("select")
    click(view, 1050, 1050)
    an.delete_selection()
    assert an.store.get(ann.uuid).locked and an.store.count() == 1


def test_brush_size_is_in_pixels_on_a_slide_without_a_pixel_size(annotating, no_mpp_svs) -> None:
    palette, an = annotating.annotations.palette, annotating.view.annotator
    assert palette.brush.suffix() == " µm"
    an.set_brush_um(30.0)
    assert an.brush_radius_px() == pytest.approx(30 / (2 * 0.499), rel=0.01)
    assert annotating.open_path(no_mpp_svs)
    assert palette.brush.suffix() == " px" and an.brush_radius_px() == 15.0


def test_drawing_needs_a_slide(qtbot, window) -> None:
    an = window.view.annotator
    an.set_tool("rectangle")
    assert an.store is None
    window.annotations.import_annotations("/nonexistent.geojson")
    assert "Open a slide first" in window.last_error
    assert not window.annotations.act_import.isEnabled()


def test_the_file_menu_actions_run_through_their_dialogs(annotating, monkeypatch,
                                                         tmp_path: Path) -> None:
    from PySide6.QtWidgets import QFileDialog

    from engine.shared_data import data_path

    actions = annotating.annotations
    menu = [a.text() for a in annotating.file_menu.actions()]
    for text in ("&New project…", "Open pro&ject…", "&Import annotations…",
                 "&Export annotations…"):
        assert text in menu
    xml = data_path("annotations", "aperio", "TCGA-AR-A1AK-01Z-00-DX1.xml")
    monkeypatch.setattr(QFileDialog, "getOpenFileName", lambda *a, **k: (str(xml), ""))
    actions.act_import.trigger()
    assert annotating.view.annotator.store.count() == 433
    out = tmp_path / "exported"  # no ending: the chosen filter's is added
    monkeypatch.setattr(QFileDialog, "getSaveFileName",
                        lambda *a, **k: (str(out), "ASAP XML (*.xml)"))
    actions.act_export.trigger()
    parts = sum(len(getattr(a.geometry, "geoms", [a.geometry]))
                for a in annotating.view.annotator.store.annotations())
    assert (tmp_path / "exported.xml").read_text().count("<Annotation ") == parts  # ASAP: polygons
    monkeypatch.setattr(QFileDialog, "getExistingDirectory", lambda *a, **k: str(tmp_path / "p2"))
    actions.act_new_project.trigger()
    assert actions.project.folder == (tmp_path / "p2").resolve()
    assert annotating.view.annotator.store.count() == 0

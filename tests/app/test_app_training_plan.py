"""The Training panel before a round tells the truth: ROI counts follow drawing, deleting, undo and
redo; the open slide is the ticked one after a slide switch; slides are named by file (a DICOM
slide by folder and file); the class plan and a warning for a slide far coarser than the model
reads show before Start (and the Model panel warns before Run)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PySide6.QtCore import Qt

from app_students import save_uniform
from qt_probe import drag, wait_drawn
from tiff_fixtures import write_slide

SMALL = "cmu-1-small-region.svs — {} ROI{}"


def rois_text(n: int) -> str:
    return SMALL.format(n, "" if n == 1 else "s")


def ready(qtbot, window):
    ta = window.training
    qtbot.waitUntil(lambda: ta.ready and ta.rounds.panel.slides.count() > 0, timeout=10000)
    return ta


def texts(ta) -> list[str]:
    return ta.rounds.panel.slide_texts()


def ticked_names(ta) -> list[str]:
    return [Path(p).name for p in ta.rounds.panel.chosen_slides()]


def test_roi_counts_follow_drawing_deleting_undo_and_redo(qtbot, annotating):
    window = annotating
    ta = ready(qtbot, window)
    view, an = window.view, window.view.annotator
    assert texts(ta) == [rois_text(0)]
    an.set_tool("roi")
    drag(view, [(850, 950), (950, 1050), (1000, 1100)])
    assert texts(ta) == [rois_text(1)]  # at once, no refresh needed
    drag(view, [(1100, 950), (1200, 1050), (1250, 1100)])
    assert texts(ta) == [rois_text(2)]
    undo = an.document.undo_stack
    undo.undo()
    assert texts(ta) == [rois_text(1)]
    undo.redo()
    assert texts(ta) == [rois_text(2)]
    first = an.store.rois()[0]
    an.set_selection([first.uuid])
    an.delete_selection()
    assert len(an.store.rois()) == 1 and texts(ta) == [rois_text(1)]
    assert ticked_names(ta) == ["cmu-1-small-region.svs"]


def test_the_open_slide_is_ticked_after_a_switch_and_a_dicom_is_named_by_folder_and_file(
        qtbot, window, small_svs, dicom_dir):
    assert window.open_path(small_svs)
    wait_drawn(qtbot, window.view)
    ta = ready(qtbot, window)
    window.view.annotator.set_tool("roi")
    drag(window.view, [(300, 300), (500, 500), (600, 600)])
    assert texts(ta) == [rois_text(1)] and ticked_names(ta) == ["cmu-1-small-region.svs"]
    assert window.open_path(dicom_dir / "level-3-frames-0-1.dcm")  # one file of the DICOM slide
    wait_drawn(qtbot, window.view)
    dicom = f"{dicom_dir.name}/level-0-frames-0-30.dcm — 0 ROIs"
    qtbot.waitUntil(lambda: texts(ta) == [rois_text(1), dicom], timeout=5000)
    assert ticked_names(ta) == [dicom_dir.name]  # the open slide, not the one before
    # the user ticks the first slide too: a slide switch keeps what they ticked by hand
    ta.rounds.panel.slides.item(0).setCheckState(Qt.CheckState.Checked)
    assert ticked_names(ta) == ["cmu-1-small-region.svs", dicom_dir.name]
    assert window.open_path(small_svs)
    wait_drawn(qtbot, window.view)
    qtbot.waitUntil(lambda: ticked_names(ta) == ["cmu-1-small-region.svs"], timeout=5000)
    assert window.open_path(dicom_dir)
    wait_drawn(qtbot, window.view)
    qtbot.waitUntil(lambda: ticked_names(ta) == ["cmu-1-small-region.svs", dicom_dir.name],
                    timeout=5000)


@pytest.fixture
def coarse_slide(tmp_path: Path) -> Path:
    """A small pyramid scanned at 10 µm/px: ten times coarser than a 1 µm/px model."""
    rng = np.random.default_rng(0)
    rgb = (rng.integers(90, 200, (600, 800, 3))).astype(np.uint8)
    return write_slide(tmp_path / "coarse.tif", rgb, mpp=10.0, levels=2)


def test_a_coarse_slide_is_warned_of_in_the_model_and_training_panels(qtbot, window, small_svs,
                                                                       coarse_slide, tmp_path):
    pa = window.predictions
    assert pa.load_model(str(save_uniform(tmp_path / "uniform.safetensors", mpp=1.0)))
    assert window.open_path(small_svs)  # 0.499 µm/px: fine
    wait_drawn(qtbot, window.view)
    ta = ready(qtbot, window)
    assert not pa.panel.warning.isVisible() and not ta.rounds.panel.warning.isVisible()
    assert window.open_path(coarse_slide)
    wait_drawn(qtbot, window.view)
    sentence = "this slide is 10 µm/px; the model reads 1 µm/px: its predictions here are not meaningful"
    pa.model_dock.raise_()
    qtbot.waitUntil(lambda: not pa.panel.warning.visibleRegion().isEmpty(), timeout=5000)  # in sight
    assert pa.panel.warning.text() == sentence[0].upper() + sentence[1:] + "."
    assert pa.panel.run_button.isEnabled()  # a warning, not a refusal: the user decides
    qtbot.waitUntil(lambda: ticked_names(ta) == ["coarse.tif"], timeout=5000)
    ta.training_dock.raise_()
    qtbot.waitUntil(lambda: not ta.rounds.panel.warning.visibleRegion().isEmpty(), timeout=5000)
    assert ta.rounds.panel.warning.text() == f"coarse.tif: {sentence}. A round refuses it: untick it."
    assert "\n" not in ta.rounds.panel.warning.text()
    ta.rounds.panel.slides.item(1).setCheckState(Qt.CheckState.Unchecked)  # untick it: no warning
    qtbot.waitUntil(lambda: not ta.rounds.panel.warning.isVisible(), timeout=5000)


def test_the_class_plan_shows_before_the_round(qtbot, annotating, tmp_path):
    window = annotating
    ta = ready(qtbot, window)
    assert window.predictions.load_model(str(save_uniform(tmp_path / "uniform.safetensors", mpp=1.0)))
    view, an = window.view, window.view.annotator
    an.set_tool("roi")
    drag(view, [(850, 950), (950, 1050), (1100, 1150)])
    an.set_tool("rectangle")
    an.set_class("Stroma")
    drag(view, [(900, 1000), (950, 1050), (1000, 1100)])
    ta.training_dock.raise_()
    stroma = "class 'Stroma' is taken as 'background' (not tumour)"
    qtbot.waitUntil(lambda: stroma in ta.rounds.panel.plan.text(), timeout=5000)
    assert ta.rounds.panel.plan.text() == ("Classes: no annotated class is named 'tumour' ('Stroma' drawn): "
                                    f"the round learns only what is not tumour; {stroma}.")
    assert ta.rounds.panel.plan.isVisible()
    an.set_class("Tumour")
    drag(view, [(1020, 1000), (1050, 1050), (1080, 1100)])
    qtbot.waitUntil(lambda: ta.rounds.panel.plan.text() == f"Classes: class 'Tumour' is the model's "
                                                    f"'tumour'; {stroma}.", timeout=5000)
    # the pathologist asks for the classes the model lacks as classes of their own: the plan says
    # so before the start, and the round is told which
    ta.rounds.panel.new_classes.setChecked(True)
    new = "class 'Stroma' becomes a new output class of the model (not tumour either)"
    qtbot.waitUntil(lambda: new in ta.rounds.panel.plan.text(), timeout=5000)
    assert stroma not in ta.rounds.panel.plan.text()
    assert ta.rounds.plan.round_new_classes() == ("Stroma",)
    # distillation cannot add classes: ticking it unticks and greys the option, the plan follows
    ta.rounds.panel.teacher.setChecked(True)
    assert not ta.rounds.panel.new_classes.isChecked() and not ta.rounds.panel.new_classes.isEnabled()
    qtbot.waitUntil(lambda: stroma in ta.rounds.panel.plan.text(), timeout=5000)
    assert ta.rounds.plan.round_new_classes() == ()
    ta.rounds.panel.teacher.setChecked(False)
    assert ta.rounds.panel.new_classes.isEnabled()

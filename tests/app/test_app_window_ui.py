"""What a new user met in the window (issue 15): an export note in a pop-up, docks that took most of
a small window, a Model panel that described another slide than the one open."""

from __future__ import annotations

from pathlib import Path

import pytest
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QApplication, QDialog, QDockWidget, QMessageBox

from app.main_window import MIN_DOCK_WIDTH
from app_students import save_uniform
from qt_probe import drag, wait_drawn


def _dialogs() -> list:
    return [w for w in QApplication.topLevelWidgets()
            if isinstance(w, (QDialog, QMessageBox)) and w.isVisible()]


def test_a_geojson_export_says_its_note_in_the_status_bar_not_in_a_dialog(qtbot, annotating,
                                                                          tmp_path: Path):
    window = annotating
    an = window.view.annotator
    assert any(c.shortcut for c in an.classes)  # GeoJSON keeps no class keys: the export notes it
    an.set_tool("rectangle")
    drag(window.view, [(1000, 1000), (1100, 1100)])
    assert not _dialogs()
    out = tmp_path / "mine.geojson"
    assert window.annotations.export_annotations(out, "geojson")
    qtbot.wait(200)  # a dialog opened with open() would be on screen by now
    assert not _dialogs()
    assert out.is_file()
    assert window.statusBar().currentMessage() == (
        "Exported 1 annotation(s) to mine.geojson. Note: class shortcuts are not stored in GeoJSON.")


def _right_docks(window) -> list[QDockWidget]:
    return [d for d in window.findChildren(QDockWidget) if d.isVisible()
            and not d.visibleRegion().isEmpty()]


def _column(window) -> int:
    return max(d.width() for d in _right_docks(window))


def test_docks_leave_a_small_window_to_the_slide_and_come_back_in_a_big_one(qtbot, window,
                                                                          small_svs):
    assert window.open_path(small_svs)
    wait_drawn(qtbot, window.view)
    window.resize(1920, 1080)  # a big screen, the docks widened by hand (or a layout saved there)
    qtbot.waitUntil(lambda: window.width() == 1920, timeout=5000)
    window.resizeDocks(_right_docks(window), [600] * len(_right_docks(window)), Qt.Orientation.Horizontal)
    qtbot.waitUntil(lambda: _column(window) >= 590, timeout=5000)
    big = _column(window)
    window.resize(800, 600)
    qtbot.waitUntil(lambda: window.width() == 800, timeout=5000)
    qtbot.wait(50)
    assert window.view.width() >= 0.5 * window.width(), (window.view.width(), window.width())
    docks = _right_docks(window)
    assert {"overview", "model", "training"} <= {d.objectName() for d in docks}  # still there
    assert all(d.width() <= max(MIN_DOCK_WIDTH, 800 / 3) + 1 for d in docks)
    training = window.training.rounds.area  # narrow, but nothing cut off or scrolled sideways
    assert not training.horizontalScrollBar().isVisible()
    window.resize(1920, 1080)
    qtbot.waitUntil(lambda: window.width() == 1920, timeout=5000)
    qtbot.waitUntil(lambda: _column(window) >= big - 10, timeout=5000)  # about as wide as it was
    docks = _right_docks(window)
    assert {"overview", "model", "training"} <= {d.objectName() for d in docks}
    assert window.view.width() <= 1920 - (big - 10)


NOT_RUN = "Not run on this slide yet."


@pytest.fixture(scope="module")
def uniform_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_uniform(tmp_path_factory.mktemp("model") / "uniform.safetensors", tile=128)


def test_the_model_panel_and_the_summary_describe_the_open_slide(qtbot, window, small_svs,
                                                                no_mpp_svs, uniform_model):
    pa = window.predictions
    panel, summary = pa.panel, pa.summary
    assert window.open_path(small_svs)
    wait_drawn(qtbot, window.view)
    assert pa.load_model(str(uniform_model))
    # a model, a slide it never predicted: both panels say there is nothing yet
    assert panel.progress_label.text() == NOT_RUN
    assert summary.note.text() == "Run a model to measure the tumour area."
    with qtbot.waitSignal(pa.run_finished, timeout=60000):
        assert pa.run()
    assert panel.progress_label.text() == "Finished"
    assert summary.note.text().startswith("cmu-1-small-region.svs — ")
    # another slide, never predicted: the first slide's run is not described any more
    assert window.open_path(no_mpp_svs)
    assert panel.progress_label.text() == NOT_RUN and panel.progress.value() == 0
    assert summary.note.text() == "Run a model to measure the tumour area."
    # back to the first: its earlier run is shown and measured, and both panels say so
    with qtbot.waitSignal(pa.run_finished, timeout=60000):
        assert window.open_path(small_svs)
        assert panel.progress_label.text() == "Measuring an earlier run's predictions…"
        assert summary.note.text() == "Measuring an earlier run's predictions…"
    assert panel.progress_label.text() == "Predictions of an earlier run"
    assert summary.note.text().startswith("cmu-1-small-region.svs — ")
    # and away again before the measuring ends: nothing of it is said of the other slide
    assert window.open_path(no_mpp_svs)
    qtbot.waitUntil(lambda: not pa.bridge.running, timeout=60000)
    qtbot.wait(100)
    assert panel.progress_label.text() == NOT_RUN
    assert summary.note.text() == "Run a model to measure the tumour area."


def test_a_slide_opened_while_another_is_measured_gets_its_own_summary(qtbot, window, small_svs,
                                                                      dicom_dir, uniform_model):
    """The bridge runs one thing at a time: a slide with predictions opened while the slide before
    is still being measured is measured once that ends (it used to say "Run a model" for good)."""
    pa = window.predictions
    assert window.open_path(small_svs)
    assert pa.load_model(str(uniform_model))
    with qtbot.waitSignal(pa.run_finished, timeout=60000):
        assert pa.run()
    assert window.open_path(dicom_dir)  # the same image as DICOM: a slide of its own
    with qtbot.waitSignal(pa.run_finished, timeout=60000):
        assert pa.run()
    assert window.open_path(small_svs)  # its measuring starts ...
    assert pa.bridge.running
    assert window.open_path(dicom_dir)  # ... and is still going when this one opens
    qtbot.waitUntil(lambda: pa.panel.progress_label.text() == "Predictions of an earlier run",
                    timeout=60000)
    assert pa.summary.summary is not None
    assert pa.summary.note.text().startswith(Path(window.source.info.path).name + " — ")

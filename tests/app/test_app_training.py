"""The Training dock drives a real subprocess: ``fake_round.py`` prints the engine's event lines
(progress, held-out evaluations, log, result, error) with the endings a test needs, standing in for
``cocopath-engine finetune --events`` through the same ``finetune_argv`` hook the app calls; a
real (tiny) round is in ``test_app_training_round.py``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from PySide6.QtCore import Qt, QTimer
from PySide6.QtTest import QTest

import app.finetune_bridge as bridge_module
import engine.api
from engine.finetune.job import finetune_argv as real_finetune_argv
from engine.finetune.registry import ModelRegistry
from app_students import open_registry, publish_student, save_student

FAKE = Path(__file__).with_name("fake_round.py")


@pytest.fixture(scope="module")
def student_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_student(tmp_path_factory.mktemp("student") / "student.safetensors", 1)


@pytest.fixture
def training(qtbot, window, small_svs, student_file, monkeypatch, tmp_path):
    """The window on the slide, its project's registry with v0001 (active) and v0002 (a child, not
    active); ``finetune_argv`` returns the fake round's command line for ``training.mode`` and
    records the settings it was given."""
    reg = open_registry(qtbot, window, small_svs)
    ta = window.training
    reg.import_model(student_file)
    publish_student(reg, 2, parent="v0001", metrics={}, note="round")
    ta.versions.refresh_models()
    state = {"mode": "ok", "settings": [], "go": tmp_path / "go",
             "result": {"status": "done", "version": "v0002", "parent": "v0001",
                        "before": {"miou": 0.5, "dice": 0.6}, "after": {"miou": 0.625, "dice": 0.7},
                        "activated": False, "seconds": 3.0, "message": "", "curves": {}}}

    def argv(project_dir, settings, explicit=()):
        state["settings"].append((Path(project_dir), settings))
        state["explicit"] = tuple(explicit)
        return [sys.executable, str(FAKE), state["mode"], str(state["go"]), json.dumps(state["result"])]

    monkeypatch.setattr(engine.api, "finetune_argv", argv)
    ta.reg, ta.state = reg, state  # for the tests
    yield ta
    ta.rounds.process.shutdown()
    window.predictions.cancel()
    window.predictions.bridge.wait(30)


def _start(qtbot, ta) -> None:
    assert ta.rounds.panel.finetune_button.isEnabled()
    with qtbot.waitSignal(ta.rounds.process.started, timeout=15000):
        QTest.mouseClick(ta.rounds.panel.finetune_button, Qt.MouseButton.LeftButton)


def test_progress_reaches_the_gui_while_the_round_runs(qtbot, training):
    ta = training
    panel = ta.rounds.panel
    assert panel.budget.text() == "auto" and "60 s on a CPU, 20 s on a GPU" in panel.budget.toolTip()
    panel.budget.setValue(45)
    assert not panel.teacher.isChecked()  # the anchored round by default
    _start(qtbot, ta)
    (project, settings), = ta.state["settings"]
    assert project == Path(ta.window.annotations.project.folder)
    assert settings.budget_s == 45.0 and settings.steps is None and settings.use_teacher is False
    assert settings.method == "anchored"
    assert ta.state["explicit"] == ("budget_s",)
    # the engine's own command line passes the budget on to the round's process
    real = real_finetune_argv(project, settings, explicit=ta.state["explicit"])
    assert real[real.index("--budget") + 1] in ("45.0", "45") and "--steps" not in real
    assert [Path(s).name for s in settings.slides] == ["cmu-1-small-region.svs"]
    # the slides viewed last are checked first by the round (by id): here the open one
    open_slide = ta.window.annotations.project.slide(ta.window.source.info.path)
    assert settings.check_first == (str(open_slide.id),)
    assert real[real.index("--check-first") + 1] == str(open_slide.id)
    assert not panel.finetune_button.isEnabled() and panel.cancel_button.isEnabled()
    # every event before the fake waits for GO: the curves fill while the process still runs
    qtbot.waitUntil(lambda: panel.point_counts().get("heldout_miou") == 2, timeout=20000)
    assert ta.rounds.process.running
    counts = panel.point_counts()
    assert counts["teacher: total"] == 3 and counts["teacher: loss_ce"] == 3
    assert counts["student: total"] == 5 and counts["student: loss_ce"] == 5
    assert panel.progress.isVisible() and panel.progress.maximum() == 5 and panel.progress.value() == 5
    assert panel.status.text() == "student: step 5 of 5 — about 5 s left"
    assert "teacher adapted on 12 patches" in panel.details.toPlainText()
    assert panel.details_button.isVisible() and not panel.details.isVisible()  # folded
    assert panel.loss_plot.isVisible() and panel.miou_plot.isVisible()
    xs, ys = panel.miou_line.getData()
    assert list(ys) == pytest.approx([0.6, 0.75])
    with qtbot.waitSignal(ta.rounds.process.ended, timeout=20000):
        ta.state["go"].touch()
    assert ta.rounds.last_end.status == "done"
    assert panel.result_box.isVisible()
    assert [panel.cell(0, c) for c in range(4)] == ["Held-out mIoU", "0.500", "0.625", "+0.125"]
    assert [panel.cell(1, c) for c in range(4)] == ["Held-out Dice", "0.600", "0.700", "+0.100"]
    assert "improved by 0.125" in panel.verdict.text()
    assert panel.active_label.text().startswith("Active version: v0001;")
    assert panel.accept_button.isEnabled() and panel.keep_button.isEnabled()
    assert panel.finetune_button.isEnabled() and not panel.cancel_button.isEnabled()


def test_accept_activates_the_new_version_and_keep_old_its_parent(qtbot, training):
    ta = training
    reg, pa = ta.reg, ta.window.predictions
    ta.state["go"].touch()
    _start(qtbot, ta)
    qtbot.waitUntil(lambda: ta.rounds.last_end is not None, timeout=20000)
    assert reg.active_name() == "v0001"
    # Show on slide: the new version's mask, the old one still active and still chosen by nothing
    assert ta.rounds.panel.show_button.isEnabled()
    QTest.mouseClick(ta.rounds.panel.show_button, Qt.MouseButton.LeftButton)
    assert reg.active_name() == "v0001" and Path(pa.spec.checkpoint) == reg.get("v0002").path.resolve()
    assert ta.rounds.panel.active_label.text().endswith("The Model panel shows another model (v0002).")
    assert ta.rounds.panel.accept_button.isEnabled() and ta.rounds.panel.keep_button.isEnabled()
    QTest.mouseClick(ta.rounds.panel.accept_button, Qt.MouseButton.LeftButton)
    assert reg.active_name() == "v0002"
    assert Path(pa.spec.checkpoint) == reg.get("v0002").path.resolve()
    assert [ta.versions.panel.cell(r, 1) for r in range(2) if ta.versions.panel.cell(r, 0) == "●"] == ["v0002"]
    assert not ta.rounds.panel.accept_button.isEnabled()
    sentence = ("Active version: v0002 (fine-tuned from v0001); it predicts, and the next round "
                "starts from it.")
    assert ta.rounds.panel.active_label.text() == sentence
    assert ta.versions.panel.note.text().endswith(sentence) and "active" not in ta.rounds.panel.verdict.text()
    qtbot.waitUntil(lambda: not pa.bridge.running, timeout=120000)  # the re-prediction
    # a second round whose new version the pathologist does not want
    _start(qtbot, ta)
    qtbot.waitUntil(lambda: ta.rounds.last_end is not None and not ta.rounds.process.running, timeout=20000)
    QTest.mouseClick(ta.rounds.panel.keep_button, Qt.MouseButton.LeftButton)
    assert reg.active_name() == "v0001"
    assert Path(pa.spec.checkpoint) == reg.get("v0001").path.resolve()
    assert ta.rounds.panel.active_label.text().startswith("Active version: v0001;")
    qtbot.waitUntil(lambda: not pa.bridge.running, timeout=120000)


def test_cancel_stops_the_process_and_leaves_the_registry(qtbot, training):
    ta = training
    ta.state["mode"] = "forever"
    before = [v.version for v in ta.reg.versions()], ta.reg.active_name()
    assert ta.rounds.panel.budget.text() == "auto"
    _start(qtbot, ta)
    (_, settings), = ta.state["settings"]
    assert settings.budget_s is None and ta.state["explicit"] == ()  # auto: the device's default
    assert "--budget" not in real_finetune_argv(Path("/p"), settings)
    qtbot.waitUntil(lambda: ta.rounds.panel.point_counts().get("total", 0) >= 3, timeout=20000)
    pid = ta.rounds.process.pid
    with qtbot.waitSignal(ta.rounds.process.ended, timeout=10000):
        QTest.mouseClick(ta.rounds.panel.cancel_button, Qt.MouseButton.LeftButton)
    assert ta.rounds.last_end.status == "cancelled"
    assert not ta.rounds.process.running
    with pytest.raises(ProcessLookupError):
        import os

        os.kill(pid, 0)
    assert ([v.version for v in ta.reg.versions()], ta.reg.active_name()) == before
    assert ta.rounds.panel.status.text().startswith("Cancelled") and not ta.rounds.panel.progress.isVisible()
    assert not ta.rounds.panel.result_box.isVisible() and not ta.rounds.panel.error.isVisible()
    assert ta.rounds.panel.finetune_button.isEnabled()


def test_a_round_that_ignores_sigterm_is_killed(qtbot, training, monkeypatch):
    ta = training
    ta.state["mode"] = "stubborn"
    monkeypatch.setattr(bridge_module, "KILL_AFTER_MS", 400)
    _start(qtbot, ta)
    qtbot.waitUntil(lambda: ta.rounds.panel.point_counts().get("total", 0) >= 2, timeout=20000)
    with qtbot.waitSignal(ta.rounds.process.ended, timeout=10000):
        ta.rounds.cancel()
    assert ta.rounds.last_end.status == "cancelled" and not ta.rounds.process.running


def test_an_error_event_and_stderr_are_shown(qtbot, training):
    ta = training
    ta.state["mode"] = "error"
    with qtbot.waitSignal(ta.rounds.process.ended, timeout=20000):
        _start(qtbot, ta)
    end = ta.rounds.last_end
    assert end.status == "failed" and end.exit_code == 2
    message = "No correction ROIs on the chosen slides: draw some with O."
    assert ta.rounds.panel.error.isVisible() and ta.rounds.panel.error.text() == message
    assert ta.window.last_error == message
    assert "CocoPathError: no ROIs" in ta.rounds.panel.details.toPlainText()
    assert ta.rounds.panel.details.isVisible()  # an error unfolds the process's messages
    assert not ta.rounds.panel.result_box.isVisible()


def test_a_crash_names_its_exit_code_and_last_stderr_line(qtbot, training):
    ta = training
    ta.state["mode"] = "crash"
    with qtbot.waitSignal(ta.rounds.process.ended, timeout=20000):
        _start(qtbot, ta)
    text = ta.rounds.panel.error.text()
    assert "exit code 3" in text and "RuntimeError: boom" in text, text
    assert ta.window.last_error == text


def test_a_program_that_cannot_start_is_reported(qtbot, training, monkeypatch):
    ta = training
    monkeypatch.setattr(engine.api, "finetune_argv", lambda *_, **__: ["/nonexistent/cocopath-engine"])
    with qtbot.waitSignal(ta.rounds.process.ended, timeout=10000):
        QTest.mouseClick(ta.rounds.panel.finetune_button, Qt.MouseButton.LeftButton)
    assert "could not be started" in ta.rounds.panel.error.text()
    assert ta.rounds.panel.finetune_button.isEnabled()


def test_accept_after_switching_project_changes_neither_registry(qtbot, training, tmp_path):
    ta = training
    ta.state["go"].touch()
    _start(qtbot, ta)
    qtbot.waitUntil(lambda: ta.rounds.last_end is not None and not ta.rounds.process.running, timeout=20000)
    assert ta.window.annotations.new_project(tmp_path / "other")
    QTest.mouseClick(ta.rounds.panel.accept_button, Qt.MouseButton.LeftButton)
    assert "belong to the project" in ta.window.last_error
    assert ta.reg.active_name() == "v0001"
    assert ModelRegistry.of_project(tmp_path / "other").versions() == []


def test_the_round_yields_the_cpu_to_the_gui(qtbot, training):
    import os

    ta = training
    ta.state["mode"] = "forever"
    _start(qtbot, ta)
    qtbot.waitUntil(lambda: ta.rounds.panel.point_counts().get("total", 0) >= 1, timeout=20000)
    mine = os.getpriority(os.PRIO_PROCESS, 0)
    assert os.getpriority(os.PRIO_PROCESS, ta.rounds.process.pid) == min(19, mine + bridge_module.NICE)
    if hasattr(os, "SCHED_OTHER"):  # not the idle class: a busy process elsewhere would starve it
        assert os.sched_getscheduler(ta.rounds.process.pid) == os.SCHED_OTHER
    with qtbot.waitSignal(ta.rounds.process.ended, timeout=10000):
        ta.rounds.cancel()


WORSE_GUARD = {"heldout": {"before": 0.404, "after": 0.33, "ok": False},
               "replay": {"before": 0.61, "after": 0.6, "tolerance": 0.01, "ok": True},
               "activated": False, "reason": "worse on the held-out ROIs (mIoU 0.404 → 0.330)"}


def answer_dialog(qtbot, button: str, seen: list) -> None:
    """When the next modal dialog opens, note its text, default button and buttons, then press
    the button whose text starts with ``button``."""
    from PySide6.QtWidgets import QApplication, QMessageBox

    def answer() -> None:
        # the visible message box, whether or not the offscreen platform made it the active one
        boxes = [w for w in QApplication.topLevelWidgets() if isinstance(w, QMessageBox) and w.isVisible()]
        box = boxes[0] if boxes else None
        if box is None:
            QTimer.singleShot(20, answer)
            return
        seen.append((box.text(), box.defaultButton().text(), [b.text() for b in box.buttons()]))
        [target] = [b for b in box.buttons() if b.text().startswith(button)]
        target.click()

    QTimer.singleShot(0, answer)


def _worse_round(qtbot, ta) -> None:
    ta.state["result"] = {**ta.state["result"], "before": {"miou": 0.404, "dice": 0.52},
                          "after": {"miou": 0.33, "dice": 0.47}, "data": {"guard": WORSE_GUARD}}
    ta.state["go"].touch()
    _start(qtbot, ta)
    qtbot.waitUntil(lambda: ta.rounds.last_end is not None and not ta.rounds.process.running, timeout=20000)


def test_accepting_a_worse_version_asks_and_keep_old_keeps_it(qtbot, training):
    ta = training
    _worse_round(qtbot, ta)
    panel = ta.rounds.panel
    assert "worse than v0001 on the held-out ROIs" in panel.verdict.text()
    assert [panel.cell(2, c) for c in range(4)] == ["Replay mIoU", "0.610", "0.600", "-0.010"]
    seen: list = []
    answer_dialog(qtbot, "Keep v0001", seen)
    QTest.mouseClick(panel.accept_button, Qt.MouseButton.LeftButton)
    [(text, default, buttons)] = seen
    assert "0.404 (v0001) → 0.330 (v0002), worse" in text  # held-out, parent → new
    assert "0.610 (v0001) → 0.600 (v0002), not worse" in text  # and the replay sample
    assert default == "Keep v0001" and sorted(buttons) == ["Keep v0001", "Use v0002 anyway"]
    assert ta.reg.active_name() == "v0001"  # kept: as Keep old
    assert not panel.accept_button.isEnabled() and not panel.keep_button.isEnabled()
    assert panel.active_label.text().startswith("Active version: v0001;")


def test_a_worse_version_becomes_active_only_when_the_user_says_so(qtbot, training):
    ta = training
    _worse_round(qtbot, ta)
    seen: list = []
    answer_dialog(qtbot, "Use v0002 anyway", seen)
    QTest.mouseClick(ta.rounds.panel.accept_button, Qt.MouseButton.LeftButton)
    assert len(seen) == 1 and ta.reg.active_name() == "v0002"
    assert ta.rounds.panel.active_label.text().startswith("Active version: v0002 (fine-tuned from v0001)")
    qtbot.waitUntil(lambda: not ta.window.predictions.bridge.running, timeout=120000)


def _activate_v3_and_keep_v1(qtbot, ta, metrics: dict) -> list:
    """Publish v0003 (from v0001) with ``metrics``, press Activate in the Models panel, answer
    "Keep v0001"; the questions asked."""
    v3 = publish_student(ta.reg, 3, parent="v0001", note="round 2", metrics=metrics)
    ta.versions.refresh_models()
    assert ta.versions.panel.select_version(v3.version)
    seen: list = []
    answer_dialog(qtbot, "Keep v0001", seen)
    QTest.mouseClick(ta.versions.panel.activate_button, Qt.MouseButton.LeftButton)
    return seen


def test_activating_a_worse_version_in_the_models_panel_asks_too(qtbot, training):
    ta = training
    seen = _activate_v3_and_keep_v1(qtbot, ta, {"heldout_miou": 0.33, "heldout_miou_parent": 0.404,
                                                "replay_miou": 0.58, "replay_miou_parent": 0.61})
    [(text, default, _)] = seen
    assert "0.404 (v0001) → 0.330 (v0003), worse" in text
    assert "0.610 (v0001) → 0.580 (v0003), worse" in text
    assert default == "Keep v0001" and ta.reg.active_name() == "v0001"
    # a version that is not worse (v0002 has no parent figures) is activated without a question
    assert ta.versions.panel.select_version("v0002")
    QTest.mouseClick(ta.versions.panel.activate_button, Qt.MouseButton.LeftButton)
    assert ta.reg.active_name() == "v0002" and len(seen) == 1
    qtbot.waitUntil(lambda: not ta.window.predictions.bridge.running, timeout=120000)


def test_a_version_that_changed_a_slide_nobody_corrected_asks_before_it_is_used(qtbot, training):
    ta = training
    moved = {"scc.svs": {"before": {"tumour": 0.566}, "after": {"tumour": 0.004}, "changed": 0.56, "ok": False}}
    seen = _activate_v3_and_keep_v1(qtbot, ta, {"heldout_miou": 0.5, "heldout_miou_parent": 0.4, "elsewhere": moved})
    [(text, default, _)] = seen
    assert text.startswith("v0003 is not worse than v0001 on what the round measured:")
    assert "scc.svs, which nobody corrected: tumour on 56.6% of the sampled tissue (v0001) → 0.4% (v0003)" in text
    assert default == "Keep v0001" and ta.reg.active_name() == "v0001"


def _fully_visible(widget) -> bool:
    """Shown on screen whole: not hidden, not scrolled away, not clipped by the dock."""
    region = widget.visibleRegion()
    return widget.isVisible() and not region.isEmpty() and region.boundingRect() == widget.rect()


@pytest.mark.parametrize("size", [(1400, 900), (1280, 800)])  # the app's default, a laptop
def test_the_verdict_and_the_choice_are_seen_without_scrolling(qtbot, training, size):
    ta = training
    ta.window.resize(*size)
    ta.training_dock.raise_()
    _worse_round(qtbot, ta)
    panel = ta.rounds.panel
    qtbot.waitUntil(lambda: _fully_visible(panel.accept_button), timeout=5000)
    for w in (panel.active_label, panel.verdict, panel.accept_button, panel.keep_button, panel.show_button):
        assert _fully_visible(w), w
    bar = ta.training_dock.widget().verticalScrollBar()
    assert bar.value() == 0 and bar.maximum() > 0  # the panel is taller than the dock: it scrolls
    bar.setValue(bar.maximum())  # scrolled to the curves, the choice is out of sight (as it was
    assert not _fully_visible(panel.accept_button)  # before: at the bottom of the panel)

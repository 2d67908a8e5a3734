"""The Training dock with the real engine: ``cocopath-engine finetune --events`` in its subprocess,
started by the Fine-tune button through ``engine.api.finetune_argv``. A whole round takes minutes
on a 2-core CPU, so the tests stop where the engine answers within seconds: a project without
correction ROIs (the engine's "nothing to learn" reaches the panel as a message), and a round
cancelled at its first progress event (the registry is left as it was).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from PySide6.QtCore import Qt
from PySide6.QtTest import QTest
from shapely.geometry import Point, box

from engine.annotations import Annotation
from engine.finetune.registry import ModelRegistry
from app_students import open_registry, save_student


@pytest.fixture(scope="module")
def student_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_student(tmp_path_factory.mktemp("student") / "student.safetensors", 0)


@pytest.fixture
def dock(qtbot, window, small_svs, student_file):
    reg = open_registry(qtbot, window, small_svs)
    ta = window.training
    reg.import_model(student_file)
    ta.versions.refresh_models()
    ta.reg = reg
    yield ta
    ta.rounds.process.shutdown()


def _state(reg: ModelRegistry) -> tuple[list[str], str | None, list[str]]:
    return ([v.version for v in reg.versions()], reg.active_name(),
            sorted(p.name for p in reg.root.iterdir()))


def test_the_engine_says_there_is_nothing_to_learn(qtbot, dock):
    ta = dock
    before = _state(ta.reg)
    ta.rounds.panel.budget.setValue(10)  # passed to the real engine as --budget 10
    with qtbot.waitSignal(ta.rounds.process.ended, timeout=120000):
        QTest.mouseClick(ta.rounds.panel.finetune_button, Qt.MouseButton.LeftButton)
    end = ta.rounds.last_end
    assert end.status == "failed" and end.exit_code == 0, end
    assert "no correction ROI" in ta.rounds.panel.error.text(), ta.rounds.panel.error.text()
    assert ta.window.last_error == ta.rounds.panel.error.text()
    assert _state(ta.reg) == before
    assert ta.rounds.panel.finetune_button.isEnabled()


def test_cancelling_a_real_round_leaves_the_registry_as_it_was(qtbot, dock):
    ta = dock
    store = ta.window.view.annotator.store
    items = []
    for x, y in ((300, 500), (1300, 500), (300, 1700), (1300, 1700)):
        items.append(Annotation(box(x, y, x + 700, y + 700), kind="roi"))
        items.append(Annotation(Point(x + 350, y + 350).buffer(175), class_name="Tumour"))
    store.add(items, label="corrections")
    ta.rounds.refresh_slides()
    assert ta.rounds.panel.slides.item(0).text().endswith("4 ROIs")
    before = _state(ta.reg)
    kinds: list[str] = []
    ta.rounds.process.event.connect(lambda ev: kinds.append(ev.kind))
    QTest.mouseClick(ta.rounds.panel.finetune_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: "progress" in kinds or not ta.rounds.process.running, timeout=120000)
    assert ta.rounds.process.running, (ta.rounds.last_end, kinds)
    assert ta.rounds.panel.status.text() and not ta.rounds.panel.status.text().startswith("Starting"), \
        ta.rounds.panel.status.text()  # the engine's first stage reached the panel
    with qtbot.waitSignal(ta.rounds.process.ended, timeout=60000):
        QTest.mouseClick(ta.rounds.panel.cancel_button, Qt.MouseButton.LeftButton)
    assert ta.rounds.last_end.status == "cancelled", ta.rounds.last_end
    assert kinds[-1] == "result"  # the engine's own last word on SIGTERM
    assert _state(ta.reg) == before
    assert ta.rounds.panel.finetune_button.isEnabled() and not ta.rounds.panel.error.isVisible()

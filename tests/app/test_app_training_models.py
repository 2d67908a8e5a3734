"""The Models and Review next docks on CMU-1-Small-Region, with a real model registry in the
window's project: two untrained students (different seeds: different weights, so different model
versions and prediction caches), activated, rolled back, imported and exported from the panel; the
Model panel's model and the overlay follow the active version. Review next ranks the slide's
regions from the overlay's prediction cache and a click takes the view there.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from PySide6.QtCore import Qt
from PySide6.QtTest import QTest

from app_students import open_registry, publish_student, save_student
from qt_probe import drag, grab_rgb, screen, wait_drawn

ROUND_METRICS = {"before": {"miou": 0.5, "dice": 0.6}, "after": {"miou": 0.625, "dice": 0.7}}


@pytest.fixture(scope="module")
def student_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("students")
    return [save_student(folder / f"student-{seed}.safetensors", seed) for seed in (1, 2)]


@pytest.fixture
def with_registry(qtbot, window, small_svs, student_files):
    """The window with the slide open and its project's registry holding v0001 (imported, active)
    and v0002 (a round's child of v0001, not active)."""
    reg = open_registry(qtbot, window, small_svs)
    ta = window.training
    v1 = reg.import_model(student_files[0])
    v2 = publish_student(reg, 2, parent=v1.version, metrics=ROUND_METRICS, note="round 1")
    assert (v1.version, v2.version) == ("v0001", "v0002")
    qtbot.waitUntil(lambda: len(ta.versions.panel.rows) == 2, timeout=5000)  # the registry poll saw them
    qtbot.waitUntil(lambda: window.predictions.spec is not None, timeout=5000)
    yield window, reg
    window.predictions.cancel()
    window.predictions.bridge.wait(30)


def _marked(panel) -> list[str]:
    return [panel.cell(r, 1) for r in range(panel.table.rowCount()) if panel.cell(r, 0) == "●"]


def _wait_run(qtbot, window, previous=None) -> None:
    """Until the run started since ``previous`` (the run end seen before the click) has ended."""
    pa = window.predictions
    qtbot.waitUntil(lambda: not pa.bridge.running and pa.last_finished is not None
                    and pa.last_finished is not previous, timeout=120000)
    assert pa.last_finished.status in ("done", "measured"), pa.last_finished


def test_table_shows_versions_and_the_model_panel_uses_the_active_one(qtbot, with_registry):
    window, reg = with_registry
    panel = window.training.versions.panel
    assert [panel.cell(r, 1) for r in range(2)] == ["v0002", "v0001"]  # newest first
    assert _marked(panel) == ["v0001"]
    assert panel.cell(0, 2) == "0.625" and panel.cell(0, 3) == "v0001" and panel.cell(0, 5) == "round 1"
    assert panel.cell(1, 3) == "—"
    spec = window.predictions.spec
    assert Path(spec.checkpoint) == reg.get("v0001").path.resolve()
    assert "v0001" in spec.version  # the registry's card names the version (the cache key)
    panel.select_version("v0002")
    assert "Parent: v0001" in panel.card.toPlainText() and "miou: 0.625" in panel.card.toPlainText()


def test_activate_and_rollback_switch_the_model_and_repredict(qtbot, with_registry):
    window, reg = with_registry
    ta, pa = window.training, window.predictions
    panel = ta.versions.panel
    assert panel.select_version("v0002")
    assert panel.activate_button.isEnabled() and panel.rollback_button.isEnabled() is False
    QTest.mouseClick(panel.activate_button, Qt.MouseButton.LeftButton)
    assert reg.active_name() == "v0002"
    assert _marked(panel) == ["v0002"]
    assert Path(pa.spec.checkpoint) == reg.get("v0002").path.resolve()
    _wait_run(qtbot, window)
    cache = window.view.predictions.cache
    assert cache is not None and cache.version == pa.spec.version and cache.complete
    v2_cache = Path(cache.root)
    assert panel.rollback_button.isEnabled()
    previous = pa.last_finished
    QTest.mouseClick(panel.rollback_button, Qt.MouseButton.LeftButton)
    assert reg.active_name() == "v0001"
    assert _marked(panel) == ["v0001"]
    assert Path(pa.spec.checkpoint) == reg.get("v0001").path.resolve()
    _wait_run(qtbot, window, previous)
    cache = window.view.predictions.cache
    assert cache.version == pa.spec.version and Path(cache.root) != v2_cache and cache.complete
    # back to v0002: its predictions of this slide are shown from its cache, no new network run
    panel.select_version("v0002")
    previous = pa.last_finished
    QTest.mouseClick(panel.activate_button, Qt.MouseButton.LeftButton)
    _wait_run(qtbot, window, previous)
    assert pa.last_finished.status == "measured"
    assert Path(window.view.predictions.cache.root) == v2_cache
    # v0002's parent has predicted this slide too: Review next can rank where the two disagree
    review = ta.reviewing.panel
    assert review.rank_by.count() == 2 and review.rank_by.itemText(1) == "Disagreement with v0001"
    ta.review_dock.show()
    ta.review_dock.raise_()
    review.rank_by.setCurrentIndex(1)  # re-ranks at once
    qtbot.waitUntil(lambda: review.list.count() > 0 and review.regions[0].kind == "disagreement",
                    timeout=20000)
    assert review.list.item(0).text().startswith("1. disagreement ")


def test_show_on_slide_shows_a_version_and_leaves_the_active_one(qtbot, with_registry):
    """A held-back version is looked at before it is chosen: its mask is shown, the registry's
    active version (which the next round starts from) stays, and the table and the sentence say so."""
    window, reg = with_registry
    ta, pa = window.training, window.predictions
    panel = ta.versions.panel
    assert panel.select_version("v0002") and panel.show_button.isEnabled()
    QTest.mouseClick(panel.show_button, Qt.MouseButton.LeftButton)
    assert reg.active_name() == "v0001" and _marked(panel) == ["v0001"]
    assert Path(pa.spec.checkpoint) == reg.get("v0002").path.resolve()
    assert window.statusBar().currentMessage() == ("Showing v0002's mask; v0001 stays active (Activate "
                                                   "makes v0002 the active model)")
    _wait_run(qtbot, window)
    cache = window.view.predictions.cache
    assert cache is not None and cache.version == pa.spec.version and "v0002" in cache.version
    row = [panel.cell(r, 1) for r in range(panel.table.rowCount())].index("v0002")
    assert panel.cell(row, 0) == "○" and panel.table.item(row, 0).toolTip() == "shown on the slide, not active"
    sentence = ("Active version: v0001; the next round starts from it. The Model panel shows another "
                "model (v0002).")
    assert sentence in panel.note.text() and ta.rounds.panel.active_label.text() == sentence
    assert pa.panel.status.text() == "Shown: v0002. Active version: v0001 (the next round starts from it)."
    # the active version again: its mask, no mark, the plain sentence
    assert panel.select_version("v0001")
    previous = pa.last_finished
    QTest.mouseClick(panel.show_button, Qt.MouseButton.LeftButton)
    assert Path(pa.spec.checkpoint) == reg.get("v0001").path.resolve()
    _wait_run(qtbot, window, previous)
    assert "v0001" in window.view.predictions.cache.version and "○" not in [panel.cell(r, 0) for r in range(2)]
    assert panel.note.text().endswith("Active version: v0001; it predicts, and the next round starts from it.")
    assert pa.panel.status.text().startswith("Active version: v0001;")


def test_import_refuses_pickles_and_export_writes_the_same_weights(qtbot, with_registry, tmp_path,
                                                                  student_files):
    window, reg = with_registry
    ta = window.training
    pickle = tmp_path / "model.pt"
    pickle.write_bytes(b"not a safetensors file")
    assert ta.versions.import_model(pickle) is None
    assert ".safetensors" in window.last_error and len(reg.versions()) == 2
    version = ta.versions.import_model(student_files[1])
    assert version == "v0003" and ta.versions.panel.cell(0, 1) == "v0003"
    assert ta.versions.panel.cell(0, 5) == f"imported from {student_files[1].name}"
    assert _marked(ta.versions.panel) == ["v0001"]  # importing never changes the active version
    out = tmp_path / "exported.safetensors"
    assert ta.versions.export_model("v0002", out)
    assert out.read_bytes() == reg.get("v0002").path.read_bytes()


def test_review_next_lists_regions_and_a_click_moves_the_view(qtbot, with_registry):
    window, reg = with_registry
    ta, view = window.training, window.view
    window.predictions.run()
    _wait_run(qtbot, window)
    ta.review_dock.show()
    ta.review_dock.raise_()
    ta.reviewing.refresh()
    review = ta.reviewing.panel
    qtbot.waitUntil(lambda: review.list.count() > 0, timeout=20000)
    regions = list(review.regions)
    assert len(regions) >= 2
    assert [r.score for r in regions] == sorted((r.score for r in regions), reverse=True)
    assert review.list.item(0).text().startswith("1. uncertainty ")
    first = regions[0]
    item = review.list.item(0)
    QTest.mouseClick(review.list.viewport(), Qt.MouseButton.LeftButton,
                     pos=review.list.visualItemRect(item).center())
    vp = view.viewport
    assert abs(vp.cx - (first.x + first.w / 2)) <= 1 and abs(vp.cy - (first.y + first.h / 2)) <= 1
    x0, y0, x1, y1 = vp.visible_rect()
    assert x0 <= first.x and y0 <= first.y and x1 >= first.x + first.w and y1 >= first.y + first.h
    assert vp.downsample < 2.5  # zoomed in from the fitted view (about 6) to the region
    # the region is outlined in the view until the next jump (or until it is no longer listed)
    assert view.review_box == (first.x, first.y, first.w, first.h)
    wait_drawn(qtbot, view)
    rgb = grab_rgb(view)
    left, top = screen(view, first.x, first.y).x(), screen(view, first.x, first.y).y()
    right = screen(view, first.x + first.w, first.y).x()
    edge = rgb[top - 1:top + 2, left + 10:right - 10]
    yellow = (edge[..., 0] > 200) & (edge[..., 1] > 170) & (edge[..., 2] < 80)
    assert yellow.any(axis=0).mean() > 0.9, "the box's top edge is not drawn"
    second = regions[1]
    QTest.mouseClick(review.list.viewport(), Qt.MouseButton.LeftButton,
                     pos=review.list.visualItemRect(review.list.item(1)).center())
    assert view.review_box == (second.x, second.y, second.w, second.h)  # one box: the last jump
    QTest.mouseClick(review.list.viewport(), Qt.MouseButton.LeftButton,  # back to the first
                     pos=review.list.visualItemRect(item).center())
    # the pathologist marks the first region reviewed (a correction ROI, drawn with O): it is
    # never proposed again
    wait_drawn(qtbot, view)
    view.annotator.set_tool("roi")
    drag(view, [(first.x + 2, first.y + 2), (first.x + first.w / 2, first.y + first.h / 2),
                (first.x + first.w - 2, first.y + first.h - 2)])
    assert len(view.annotator.store.rois()) == 1
    qtbot.waitUntil(lambda: review.regions and review.regions[0] != first, timeout=20000)
    assert view.review_box is None  # reviewed: no longer listed, no longer outlined
    for r in review.regions:
        overlap_w = min(r.x + r.w, first.x + first.w) - max(r.x, first.x)
        overlap_h = min(r.y + r.h, first.y + first.h) - max(r.y, first.y)
        assert overlap_w <= 0 or overlap_h <= 0, (r, first)

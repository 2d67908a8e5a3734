"""Predictions in the GUI: a hand-made model run from the model panel on CMU-1-Small-Region.

The model (``save_uniform`` in app_students.py, loaded by the app with ``load_model``) gives
every pixel the same logits, tumour 8 against background 0: every tile of tissue is predicted
tumour (probability 255/255) and tiles without tissue are never run, so they stay background. The
overlay must show the tumour colour at the set opacity over tissue tiles and leave the others alone.
"""

from __future__ import annotations

import csv
import io
import sys
from pathlib import Path

import numpy as np
import pytest
from PySide6.QtCore import Qt
from PySide6.QtTest import QTest

from app.state.viewport import Viewport
from app.viewer.layers.palette import PREDICTION_COLORS
from app_students import save_uniform
from engine.inference.vectorize import measure
from engine.slide import open_slide
from engine.slide.tissue import detect_tissue
from qt_probe import grab_rgb, wait_drawn

TUMOUR = PREDICTION_COLORS[0]  # predictions are drawn in their own colours, not the classes'


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_uniform(tmp_path_factory.mktemp("model") / "uniform.safetensors", tile=128)


@pytest.fixture
def predicted(qtbot, window, small_svs, model_file):
    """The window with the slide fitted, the model chosen, a complete run, the overlay drawn."""
    assert window.open_path(small_svs)
    wait_drawn(qtbot, window.view)
    pa = window.predictions
    assert pa.load_model(str(model_file))
    pa.panel.opacity.setValue(60)
    assert pa.panel.run_button.isEnabled()
    with qtbot.waitSignal(pa.bridge.finished, timeout=60000):
        QTest.mouseClick(pa.panel.run_button, Qt.MouseButton.LeftButton)
    assert pa.last_finished is not None and pa.last_finished.status == "done", pa.last_finished
    wait_drawn(qtbot, window.view)
    return window


def _tile_centres(cache, view, tissue: bool) -> list[tuple[int, int]]:
    """Screen points at the centres of (non-)tissue cache tiles, well inside the view; those of
    tissue tiles only where the slide's tissue mask holds tissue all around (the overlay draws
    nothing outside tissue, even inside a tile of tissue)."""
    mask = view.predictions.tissue
    t, ds = cache.tile, cache.grid.downsample
    rows, cols = cache.tissue.shape
    out = []
    for r in range(rows):
        for c in range(cols):
            if bool(cache.tissue[r, c]) != tissue or (tissue and not cache.is_done(c, r)):
                continue
            x = min((c + 0.5) * t * ds, cache.grid.slide_size[0] - 8)
            y = min((r + 0.5) * t * ds, cache.grid.slide_size[1] - 8)
            if tissue and mask is not None:
                mx, my = int(x // mask.downsample), int(y // mask.downsample)
                if not mask.mask[max(0, my - 2):my + 3, max(0, mx - 2):mx + 3].all():
                    continue
            sx, sy = view.viewport.to_screen(x, y)
            if 4 < sx < view.width() - 4 and 4 < sy < view.height() - 4:
                out.append((round(sx), round(sy)))
    return out


def test_overlay_has_the_class_colour_at_the_set_opacity(qtbot, predicted):
    window = predicted
    view, pa = window.view, window.predictions
    cache = view.predictions.cache
    assert cache is not None and cache.complete
    shown = grab_rgb(view).astype(int)
    pa.set_overlay_visible(False)
    wait_drawn(qtbot, view)
    bare = grab_rgb(view).astype(int)
    tumour, background = _tile_centres(cache, view, True), _tile_centres(cache, view, False)
    assert len(tumour) >= 3 and len(background) >= 1, (len(tumour), len(background))
    a = 0.6
    for sx, sy in tumour:
        expect = np.array(TUMOUR) * a + bare[sy, sx] * (1 - a)
        assert np.abs(shown[sy, sx] - expect).max() <= 3, (sx, sy, shown[sy, sx], expect)
    for sx, sy in background:
        assert (shown[sy, sx] == bare[sy, sx]).all(), (sx, sy)


def test_h_key_hides_and_shows_the_overlay(qtbot, predicted):
    window = predicted
    view = window.view
    before = grab_rgb(view)
    view.setFocus()
    QTest.keyClick(view, Qt.Key.Key_H)
    assert not view.predictions.visible and not window.predictions.act_toggle.isChecked()
    wait_drawn(qtbot, view)
    hidden = grab_rgb(view)
    assert (before != hidden).any()
    QTest.keyClick(view, Qt.Key.Key_H)
    assert view.predictions.visible
    wait_drawn(qtbot, view)
    assert (grab_rgb(view) == before).all()


def test_outline_and_heatmap_modes_draw_less_or_softer(qtbot, predicted):
    window = predicted
    view, panel = window.view, window.predictions.panel
    filled = grab_rgb(view).astype(int)
    panel.outline.setChecked(True)
    wait_drawn(qtbot, view)
    outlined = grab_rgb(view).astype(int)
    red = lambda img: ((img[..., 1] - img[..., 0]) > 60).sum()  # noqa: E731 (the prediction teal)
    assert 0 < red(outlined) < red(filled) / 2
    panel.outline.setChecked(False)
    panel.mode.setCurrentIndex(panel.mode.findData("heatmap"))
    wait_drawn(qtbot, view)
    heat = grab_rgb(view).astype(int)
    assert np.abs(heat - filled).max() <= 3  # probability 255: the heatmap is the mask here


def test_summary_matches_the_engine_and_exports_csv(qtbot, predicted, small_svs, tmp_path):
    window = predicted
    pa = window.predictions
    s = pa.summary.summary
    assert s is not None and s.complete and s.unit == "mm²"
    cache = window.view.predictions.cache
    with open_slide(small_svs) as slide:
        m = measure(cache, detect_tissue(slide), ["tumour"], slide.info.mpp)
    assert s.tissue_area == pytest.approx(m.tissue_area_um2 / 1e6)
    assert s.rows[0].area == pytest.approx(m.classes[0].area_um2 / 1e6)
    assert s.rows[0].fraction == pytest.approx(m.classes[0].fraction_of_tissue)
    assert 0.5 < s.rows[0].fraction <= 1.0 + 1e-9  # every tissue tile is tumour
    assert pa.summary.cell(0, 0) == "tumour" and pa.summary.cell(0, 1).endswith("mm²")
    out = tmp_path / "summary.csv"
    assert pa.export_csv(out)
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert [r["class"] for r in rows] == ["tumour", "tissue"]
    assert float(rows[0]["area_mm2"]) == pytest.approx(m.classes[0].area_um2 / 1e6, rel=1e-5)
    assert float(rows[0]["fraction_of_tissue"]) == pytest.approx(m.classes[0].fraction_of_tissue,
                                                                 abs=1e-6)
    assert rows[1]["area_mm2"] and rows[0]["slide"] == Path(small_svs).name


def test_cancel_stops_a_run_and_a_rerun_reuses_the_cache(qtbot, window, small_svs, tmp_path):
    assert window.open_path(small_svs)
    view, pa = window.view, window.predictions
    # at 1:1 in a corner, so the visible region is a few tiles and the rest is still to do; a
    # model at 1 µm/px: about 70 tiles in batches of 8 windows, so a cancel lands mid-run
    view.set_viewport(Viewport(300, 300, 1.0, view.width(), view.height()))
    assert pa.load_model(str(save_uniform(tmp_path / "fine.safetensors", mpp=1.0, tile=128)))
    seen: list[int] = []
    def stop_early(p) -> None:  # in the engine's writer thread (direct): no race with the run
        seen.append(p.step)
        if p.step >= 2:
            pa.bridge.cancel()

    pa.bridge.progress.connect(stop_early, Qt.ConnectionType.DirectConnection)
    with qtbot.waitSignal(pa.bridge.finished, timeout=60000):
        assert pa.run()
        assert pa.panel.cancel_button.isEnabled() and not pa.panel.run_button.isEnabled()
    pa.bridge.progress.disconnect(stop_early)
    end = pa.last_finished
    assert end is not None and end.status == "cancelled"
    cache = view.predictions.cache
    assert cache is not None and 0 < len(cache.done_tiles()) < cache.tissue_tiles
    assert not pa.panel.cancel_button.isEnabled() and pa.panel.run_button.isEnabled()
    assert end.summary is not None and not end.summary.complete
    starts: list = []
    pa.bridge.started.connect(starts.append)
    with qtbot.waitSignal(pa.bridge.finished, timeout=60000):
        assert pa.run()
    assert starts[0].tiles_done == len(cache.done_tiles())  # the second run went on from there
    assert pa.last_finished.status == "done"  # type: ignore[union-attr]
    assert view.predictions.cache.complete  # type: ignore[union-attr]


@pytest.fixture
def no_default_model(monkeypatch):
    """As if CoCoPath's default model were not installed (set up before the window is built)."""
    import engine.api

    monkeypatch.setattr(engine.api, "default_model_path", lambda: None, raising=False)


def test_no_model_says_so_and_a_non_safetensors_file_gets_a_message(qtbot, no_default_model,
                                                                     window, small_svs, tmp_path):
    panel = window.predictions.panel
    assert "No model" in panel.status.text() and panel.choose_button.isEnabled()
    assert window.open_path(small_svs)
    assert not panel.run_button.isEnabled()
    bad = tmp_path / "model.pt"
    bad.write_bytes(b"\x80\x04not a checkpoint")
    assert not window.predictions.load_model(str(bad))
    assert window.error_box is not None and "safetensors" in window.error_box.text()
    fake = tmp_path / "fake.safetensors"
    fake.write_bytes(b"garbage")
    assert not window.predictions.load_model(str(fake))
    assert "safetensors" in window.last_error and "Traceback" not in window.last_error
    assert window.predictions.spec is None and "No model" in panel.status.text()


def test_viewer_start_up_still_skips_torch_with_the_prediction_docks() -> None:
    import subprocess

    code = ("import os, sys; os.environ['QT_QPA_PLATFORM']='offscreen';"
            "from PySide6.QtWidgets import QApplication; a=QApplication([]);"
            "from app.main_window import MainWindow; w=MainWindow(remember=False);"
            "print('torch' in sys.modules, hasattr(w, 'predictions'))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.stdout.split()[-2:] == ["False", "True"], r.stderr


def test_cancel_button_stops_a_run_that_just_started(qtbot, window, small_svs, model_file):
    assert window.open_path(small_svs)
    pa = window.predictions
    assert pa.load_model(str(model_file))
    with qtbot.waitSignal(pa.bridge.finished, timeout=60000):
        QTest.mouseClick(pa.panel.run_button, Qt.MouseButton.LeftButton)
        QTest.mouseClick(pa.panel.cancel_button, Qt.MouseButton.LeftButton)
    assert pa.last_finished is not None and pa.last_finished.status == "cancelled"
    assert pa.panel.progress_label.text().startswith("Cancelled")
    cache = window.view.predictions.cache
    assert cache is None or not cache.complete


def test_reopening_the_slide_shows_the_earlier_run_and_its_summary(qtbot, predicted, small_svs):
    window = predicted
    pa = window.predictions
    first = pa.summary.summary
    window.close_slide()
    with qtbot.waitSignal(pa.bridge.finished, timeout=60000):
        assert window.open_path(small_svs)  # no run: the cache on disk is shown and measured
    assert pa.last_finished is not None and pa.last_finished.status == "measured"
    assert pa.summary.summary == first
    cache = window.view.predictions.cache
    assert cache is not None and cache.complete
    assert pa.panel.run_button.isEnabled() and not pa.panel.cancel_button.isEnabled()


def test_switching_slides_cancels_the_run_and_keeps_its_results_off_the_new_slide(
        qtbot, window, small_svs, no_mpp_svs, model_file):
    assert window.open_path(small_svs)
    pa = window.predictions
    assert pa.load_model(str(model_file))
    with qtbot.waitSignal(pa.bridge.finished, timeout=60000):
        assert pa.run()
        assert window.open_path(no_mpp_svs)
    assert pa.last_finished is not None and pa.last_finished.status in ("cancelled", "done")
    assert window.view.predictions.cache is None and pa.summary.summary is None
    window.close_slide()
    assert not pa.panel.run_button.isEnabled()

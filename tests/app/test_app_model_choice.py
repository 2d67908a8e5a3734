"""The Model panel's model and level: CoCoPath's default model when it is installed (found by the
engine's ``default_model_path``, here through ``$COCOPATH_DEFAULT_MODEL``), a truthful message when
it is not, and the slide-level picker on a slide without µm/px."""

from __future__ import annotations

from pathlib import Path

import pytest

from app_students import save_uniform


def tiny_model(path: Path, mpp: float | None = 2.0) -> Path:
    return save_uniform(path, mpp=mpp)


def test_the_default_model_is_active_when_installed(make_window, settings, tmp_path, monkeypatch):
    path = tiny_model(tmp_path / "cocopath-student-test.safetensors")
    monkeypatch.setenv("COCOPATH_DEFAULT_MODEL", str(path))
    w = make_window()
    pa = w.predictions
    assert pa.spec is not None and Path(pa.spec.checkpoint) == path.resolve()
    assert "default model" in pa.panel.status.text() and pa.panel.fields["name"].text() == "test-uniform"
    assert not settings.value("model/path")  # the default is found afresh next time, not pinned
    w.close()
    chosen = tiny_model(tmp_path / "mine.safetensors", mpp=1.0)
    settings.setValue("model/path", str(chosen))
    w2 = make_window()  # a model the user chose wins over the default
    assert Path(w2.predictions.spec.checkpoint) == chosen.resolve()
    assert "default" not in w2.predictions.panel.status.text()
    w2.close()


def test_without_a_default_model_the_panel_says_so(make_window, monkeypatch, tmp_path):
    import engine.api

    monkeypatch.setattr(engine.api, "default_model_path", lambda: None, raising=False)
    w = make_window()
    text = w.predictions.panel.status.text()
    assert w.predictions.spec is None and "No model loaded" in text and "not installed" in text
    w.close()
    broken = tmp_path / "cocopath-student-broken.safetensors"
    broken.write_bytes(b"not a checkpoint")
    monkeypatch.setattr(engine.api, "default_model_path", lambda: broken)
    w = make_window()
    assert w.predictions.spec is None and "could not be read" in w.predictions.panel.status.text()
    w.close()


def test_a_slide_without_mpp_asks_for_the_level_and_runs_there(qtbot, window, no_mpp_svs,
                                                                small_svs, tmp_path):
    pa = window.predictions
    panel = pa.panel
    assert pa.load_model(str(tiny_model(tmp_path / "m.safetensors")))
    assert window.open_path(small_svs)  # µm/px on both sides: the model's resolution decides
    assert not panel.level_group.isVisibleTo(panel) and panel.chosen_level() is None
    assert window.open_path(no_mpp_svs)
    assert panel.level_group.isVisibleTo(panel)
    assert panel.level_box.count() == 2 and panel.chosen_level() == 0
    assert panel.level_box.itemText(1).startswith("Level 1: 2,221 × 1,783 px (÷2)")
    assert "does not record its pixel size" in panel.level_note.text()
    assert "level 0, the full resolution" in panel.level_note.text()
    # the picker's long items do not widen the side dock past a laptop's (it was 342 px, the dock
    # about 310 at 1280 × 800, so the panel scrolled sideways and cut its lines)
    assert panel.minimumSizeHint().width() <= 260
    panel.level_box.setCurrentIndex(1)
    with qtbot.waitSignal(pa.bridge.finished, timeout=120000):
        assert pa.run()
        assert not panel.level_box.isEnabled()
    assert pa.last_finished is not None and pa.last_finished.status == "done", pa.last_finished
    grid = window.view.predictions.cache.grid
    assert grid.read_level == 1 and grid.downsample == pytest.approx(2.0005, abs=1e-3)
    assert pa.summary.summary is not None and pa.summary.summary.unit == "px²"
    window.close_slide()
    assert not panel.level_group.isVisibleTo(panel)
    with qtbot.waitSignal(pa.bridge.finished, timeout=60000):
        assert window.open_path(no_mpp_svs)  # the earlier run is shown and measured, not redone
    assert pa.last_finished.status == "measured"
    assert window.view.predictions.cache.grid.read_level == 1  # not emptied by the measuring
    assert panel.chosen_level() == 1 and "earlier run" in panel.level_note.text()


def test_the_model_panels_legend_shows_the_colour_predictions_are_drawn_in(window, tmp_path):
    from PySide6.QtWidgets import QLabel

    from app.viewer.layers.palette import prediction_color

    assert window.predictions.load_model(str(save_uniform(tmp_path / "m.safetensors")))
    legend = window.predictions.panel.legend
    icons = [w for i in range(legend.count()) for w in legend.itemAt(i).widget().findChildren(QLabel)
             if w.pixmap() is not None and not w.pixmap().isNull()]
    assert len(icons) == 1
    colour = icons[0].pixmap().toImage().pixelColor(7, 7)
    assert (colour.red(), colour.green(), colour.blue()) == prediction_color(0)

"""A mask on screen before the run's first tile: the coarse preview of the visible field.

The run is held before its first window (its SlideInference waits on an event), so the only thing
that can put a prediction on screen is the preview; a hand-made model calls every pixel tumour.
Then the pure part: pending pixels take the preview, final tiles keep their own values.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
from PySide6.QtCore import Qt
from PySide6.QtTest import QTest

from app.state import inference_run
from app.viewer.layers.predictions import fill_pending
from app_students import save_uniform
from engine.api import PredictionCache, Preview, make_grid
from qt_probe import grab_rgb, wait_drawn


def _teal(img: np.ndarray) -> np.ndarray:  # the first prediction colour over tissue
    return (img[..., 1].astype(int) - img[..., 0]) > 60


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory):
    return save_uniform(tmp_path_factory.mktemp("model") / "uniform.safetensors", mpp=1.0, tile=128)


def test_the_preview_is_on_screen_before_any_tile(qtbot, window, small_svs, model_file, monkeypatch):
    gate = threading.Event()
    windows_run: list[int] = []

    class Held(inference_run.SlideInference):
        def run(self, *args, **kwargs):
            gate.wait(60)
            windows_run.append(1)
            return super().run(*args, **kwargs)

    monkeypatch.setattr(inference_run, "SlideInference", Held)
    assert window.open_path(small_svs)
    wait_drawn(qtbot, window.view)
    before = grab_rgb(window.view)
    pa = window.predictions
    assert pa.load_model(str(model_file))
    pa.panel.opacity.setValue(60)
    try:
        with qtbot.waitSignal(pa.bridge.preview, timeout=60000):
            QTest.mouseClick(pa.panel.run_button, Qt.MouseButton.LeftButton)
        qtbot.waitUntil(lambda: window.view.predictions.tissue is not None, timeout=30000)
        wait_drawn(qtbot, window.view)
        assert not windows_run and not window.view.predictions.cache.done_tiles()
        shown = grab_rgb(window.view)
        teal = _teal(shown) & ~_teal(before)
        assert teal.mean() > 0.05, "no prediction on screen from the preview"
        overlay = window.view.predictions
        assert overlay.shown_preview is overlay.preview is not None  # what the benchmark waits for
    finally:
        gate.set()
    with qtbot.waitSignal(pa.bridge.finished, timeout=60000):
        pass
    assert pa.last_finished is not None and pa.last_finished.status == "done"


def test_pending_pixels_take_the_preview_and_final_tiles_keep_theirs(small_svs, tmp_path):
    from engine.slide import open_slide

    with open_slide(small_svs) as slide:
        grid = make_grid(slide.info, 2.0, tile=128, margin=16)
    cols, rows = grid.shape
    cache = PredictionCache.open(tmp_path / "c", grid, "v", 1, np.ones((rows, cols), bool))
    cache.write_tile(0, 0, np.zeros((grid.tile, grid.tile, 1), np.uint8))  # final: background
    ds = grid.downsample
    w, h = 2 * grid.tile, grid.tile  # tiles (0, 0) and (1, 0) at cache level 0
    region = cache.read_region(0, 0, 0, w, h)
    preview = Preview(np.full((1, h // 2, w // 2), 0.8, np.float32), (0.0, 0.0, w * ds, h * ds), 2 * ds)
    out = fill_pending(region, cache, preview, 0.0, 0.0, ds)
    assert (out[:, :grid.tile] == 0).all(), "a final tile keeps its own prediction"
    assert (out[:, grid.tile:] == round(0.8 * 255)).all(), "a pending tile shows the preview"
    # beyond the preview's rectangle, pending pixels stay empty
    small = Preview(np.full((1, 4, 4), 1.0, np.float32), (0.0, 0.0, 4 * 2 * ds, 4 * 2 * ds), 2 * ds)
    out = fill_pending(region, cache, small, 0.0, 0.0, ds)
    assert (out[:, grid.tile:] == 0).all()

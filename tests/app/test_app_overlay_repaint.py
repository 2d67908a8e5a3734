"""The prediction overlay draws only over tissue, and a style change is on screen at once.

A hand-made model (``save_uniform``: tumour at probability 255 everywhere it runs) is run on
CMU-1-Small-Region from the Model panel: every tissue tile is tumour, glass inside those tiles
included. The overlay must leave that glass alone in every mode (the slide's tissue mask clips it),
and a mode or opacity change must show in the very next grab of the view, with no pan or zoom.
"""

from __future__ import annotations

import numpy as np
import pytest
from PySide6.QtCore import Qt
from PySide6.QtTest import QTest

from app.viewer.layers.palette import PREDICTION_COLORS
from app.viewer.layers.predictions import tissue_clip
from app_students import save_uniform
from engine.slide.tissue import TissueMask
from qt_probe import grab_rgb, wait_drawn

TUMOUR = PREDICTION_COLORS[0]  # predictions are drawn in their own colours


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory):
    return save_uniform(tmp_path_factory.mktemp("model") / "uniform.safetensors", tile=128)


@pytest.fixture
def predicted(qtbot, window, small_svs, model_file):
    assert window.open_path(small_svs)
    wait_drawn(qtbot, window.view)
    pa = window.predictions
    assert pa.load_model(str(model_file))
    pa.panel.opacity.setValue(60)
    with qtbot.waitSignal(pa.bridge.finished, timeout=60000):
        QTest.mouseClick(pa.panel.run_button, Qt.MouseButton.LeftButton)
    assert pa.last_finished is not None and pa.last_finished.status == "done", pa.last_finished
    wait_drawn(qtbot, window.view)
    assert window.view.predictions.tissue is not None, "the run hands its tissue mask to the overlay"
    return window


def _red(img: np.ndarray) -> np.ndarray:  # the prediction colour (teal) over tissue
    return (img[..., 1] - img[..., 0]) > 60


def _screen_tissue(view) -> tuple[np.ndarray, np.ndarray]:
    """Per screen pixel: (certainly glass in a tissue tile, certainly tissue): the tissue mask's
    cell and its eight neighbours all agree, so interpolation at the mask's edge does not matter."""
    mask, cache = view.predictions.tissue, view.predictions.cache
    h, w = view.height(), view.width()
    xs, ys = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
    vp = view.viewport
    x0, y0, x1, y1 = vp.visible_rect()
    lx, ly = x0 + xs * (x1 - x0) / w, y0 + ys * (y1 - y0) / h
    inside = (lx >= 0) & (ly >= 0) & (lx < cache.grid.slide_size[0]) & (ly < cache.grid.slide_size[1])
    m = np.pad(mask.mask, 1, mode="edge")
    any_t = np.zeros_like(mask.mask, bool)
    all_t = np.ones_like(mask.mask, bool)
    for dy in range(3):
        for dx in range(3):
            part = m[dy:dy + mask.mask.shape[0], dx:dx + mask.mask.shape[1]]
            any_t |= part
            all_t &= part
    mx = np.clip((lx // mask.downsample).astype(int), 0, mask.mask.shape[1] - 1)
    my = np.clip((ly // mask.downsample).astype(int), 0, mask.mask.shape[0] - 1)
    ts = cache.tile * cache.grid.downsample
    tc = np.clip((lx // ts).astype(int), 0, cache.tissue.shape[1] - 1)
    tr = np.clip((ly // ts).astype(int), 0, cache.tissue.shape[0] - 1)
    glass_in_tile = inside & ~any_t[my, mx] & cache.tissue[tr, tc]
    return glass_in_tile, inside & all_t[my, mx]


@pytest.mark.parametrize("mode", ["mask", "outline", "heatmap"])
def test_nothing_is_painted_on_glass_inside_tissue_tiles(qtbot, predicted, mode):
    view, pa = predicted.view, predicted.predictions
    panel = pa.panel
    panel.mode.setCurrentIndex(panel.mode.findData("heatmap" if mode == "heatmap" else "mask"))
    panel.outline.setChecked(mode == "outline")
    wait_drawn(qtbot, view)
    shown = grab_rgb(view).astype(int)
    pa.set_overlay_visible(False)
    wait_drawn(qtbot, view)
    bare = grab_rgb(view).astype(int)
    glass, tissue = _screen_tissue(view)
    assert glass.sum() > 200, "the slide must show glass inside tissue tiles for this test to bite"
    changed = np.abs(shown - bare).max(axis=-1) > 0
    assert not changed[glass].any(), f"{int(changed[glass].sum())} px painted on glass ({mode})"
    if mode != "outline":
        assert changed[tissue].mean() > 0.95  # and the tissue is painted


def test_opacity_change_is_in_the_next_grab_without_a_pan(qtbot, predicted):
    view, panel = predicted.view, predicted.predictions.panel
    vp = view.viewport
    _, tissue = _screen_tissue(view)
    before = grab_rgb(view).astype(int)
    panel.opacity.setValue(100)  # no waiting, no event processing beyond the slider's signal
    after = grab_rgb(view).astype(int)
    assert view.viewport == vp
    ys, xs = np.nonzero(tissue)
    assert len(ys) > 1000
    got = after[ys, xs]
    assert (np.abs(got - np.array(TUMOUR)).max(axis=-1) <= 2).mean() > 0.99  # opaque tumour
    assert (np.abs(before[ys, xs] - np.array(TUMOUR)).max(axis=-1) > 10).mean() > 0.9  # was not


def test_mode_change_is_in_the_next_grab_without_a_pan(qtbot, predicted):
    view, panel = predicted.view, predicted.predictions.panel
    vp = view.viewport
    filled = grab_rgb(view).astype(int)
    panel.outline.setChecked(True)
    outlined = grab_rgb(view).astype(int)  # at once: no wait
    assert 0 < _red(outlined).sum() < _red(filled).sum() / 2
    panel.outline.setChecked(False)
    panel.mode.setCurrentIndex(panel.mode.findData("heatmap"))
    heat = grab_rgb(view).astype(int)
    assert view.viewport == vp
    assert np.abs(heat - filled).max() <= 3  # probability 255: the heatmap is the filled mask
    wait_drawn(qtbot, view)  # the worker's whole window, when it comes, is the same picture
    assert np.abs(grab_rgb(view).astype(int) - heat).max() <= 3


def test_tissue_clip_follows_the_mask_between_cells():
    mask = np.zeros((4, 4), bool)
    mask[1:3, 1:3] = True  # a 2×2 block of cells, 16 level-0 px each
    t = TissueMask(mask, 16.0)
    clip = tissue_clip(t, 0, 0, 1.0, 64, 64)
    assert clip[24:40, 24:40].all() and not clip[:12].any() and not clip[:, 52:].any()
    assert abs(int(clip.sum()) - 32 * 32) <= 4 * 32  # the edge sits near the cells' edge
    coarse = tissue_clip(t, 8, 8, 4.0, 10, 10)  # another origin and pixel size: the same place
    assert coarse[5, 5] and not coarse[0, 0]


def test_the_same_clip_is_not_made_twice(monkeypatch):
    from app.viewer.layers import predictions

    made = []
    real = predictions._tissue_clip
    monkeypatch.setattr(predictions, "_tissue_clip", lambda *a: made.append(a) or real(*a))
    mask = np.zeros((4, 4), bool)
    mask[1:3, 1:3] = True
    t = TissueMask(mask, 16.0)
    first = tissue_clip(t, 0, 0, 1.0, 64, 64)
    again = tissue_clip(t, 0, 0, 1.0, 64, 64)  # the next tile's render of the same window
    assert again is first and len(made) == 1 and not again.flags.writeable
    assert tissue_clip(t, 16, 0, 1.0, 64, 64)[24:40, 8:24].all() and len(made) == 2  # another region
    other = TissueMask(np.ones((4, 4), bool), 16.0)  # another mask (a new slide, the same window)
    assert tissue_clip(other, 16, 0, 1.0, 64, 64).all() and len(made) == 3

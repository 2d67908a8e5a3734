"""The coarse preview of the visible field: one forward pass, the right place, bounded size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from infer_fixtures import GLASS, RedIsTumour, pattern_rgb, plain_spec, write_slide

from engine.inference.preview import MAX_PIXELS, predict_preview, preview_downsample
from engine.inference.runner import TorchRunner
from engine.slide import open_slide


class Counting(TorchRunner):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.shapes: list[tuple[int, ...]] = []

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.shapes.append(batch.shape)
        return super().__call__(batch)


def test_the_preview_is_the_network_on_the_field_at_the_pixel_size_asked(tmp_path: Path) -> None:
    rgb = pattern_rgb(1600, 1200, glass_right=0.0, border=0)
    path = write_slide(tmp_path / "s.tif", rgb, mpp=0.5)
    runner = Counting(RedIsTumour(), plain_spec(tile=128, mpp=0.5))
    rect = (400.0, 300.0, 640.0, 480.0)
    with open_slide(path) as slide:
        p = predict_preview(slide, 1.0, runner, rect, factor=2.0, margin=16)
    assert len(runner.shapes) == 1, "one forward pass"
    n, h, w, c = runner.shapes[0]
    assert n == 1 and c == 3 and h % 32 == 0 and w % 32 == 0
    assert p.downsample == 2.0 and p.probs.shape == (1, 240, 320)
    assert p.rect == (400.0, 300.0, 640.0, 480.0)
    # tumour probability = red / 255 of the pixels under each preview pixel (2×2 average, bilinear)
    red = rgb[300:780, 400:1040, 0].astype(np.float64).reshape(240, 2, 320, 2).mean(axis=(1, 3)) / 255
    inner = np.s_[4:-4, 4:-4]
    smooth = np.abs(np.diff(red, axis=1, prepend=red[:, :1])) < 0.05  # away from the pattern's wraps
    diff = np.abs(p.probs[0] - red)[inner][smooth[inner]]
    assert diff.size > 0.5 * red[inner].size and np.median(diff) < 0.02


def test_beyond_the_slide_the_preview_sees_glass(tmp_path: Path) -> None:
    rgb = pattern_rgb(800, 600, glass_right=0.0, border=0)
    rgb[..., 0] = 0  # no red on the slide: tumour only where glass (255) is read
    path = write_slide(tmp_path / "s.tif", rgb, mpp=0.5)
    runner = TorchRunner(RedIsTumour(), plain_spec(tile=128, mpp=0.5))
    with open_slide(path) as slide:
        p = predict_preview(slide, 1.0, runner, (600.0, 400.0, 400.0, 400.0), factor=2.0, margin=16)
    probs = p.probs[0]
    assert probs.shape == (200, 200)
    assert probs[:80, :80].max() < 0.05  # on the slide
    assert probs[-50:, -50:].min() > GLASS / 255 - 0.05  # past its right and bottom edges


def test_a_zoomed_out_field_is_read_coarser_within_the_pixel_budget() -> None:
    assert preview_downsample(1.0, (0, 0, 1000, 1000)) == 1.0  # the run's pixel size by default
    assert preview_downsample(1.0, (0, 0, 1000, 1000), factor=2.0) == 2.0
    ds = preview_downsample(1.0, (0, 0, 40_000, 30_000))
    assert (40_000 / ds) * (30_000 / ds) <= MAX_PIXELS * 1.0001
    assert preview_downsample(4.0, (0, 0, 10, 10), factor=0.5) == 4.0  # never finer than the run

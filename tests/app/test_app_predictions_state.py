"""Prediction colouring and summaries (Qt-free): exact pixels, units, CSV."""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest

from app.state.predictions import PredictionStyle, _colorize, colorize, summarize, summary_csv
from engine.inference.vectorize import ClassArea, Measurements

RED, BLUE = (220, 30, 30), (30, 120, 220)


def test_mask_pixels_take_the_class_colour_at_the_opacity_premultiplied() -> None:
    probs = np.array([[[255], [128], [127], [0]]], np.uint8)
    out = colorize(probs, PredictionStyle((RED,), 0.6))
    a = 0.6
    assert out[0, 0].tolist() == [round(220 * a), round(30 * a), round(30 * a), round(255 * a)]
    assert out[0, 1].tolist() == out[0, 0].tolist()  # 128 beats the background's 127
    assert out[0, 2].tolist() == [0, 0, 0, 0] and out[0, 3].tolist() == [0, 0, 0, 0]


def test_two_classes_take_the_most_likely_ones_colour() -> None:
    probs = np.array([[[200, 40], [40, 200], [60, 60]]], np.uint8)  # last: background 135 wins
    out = colorize(probs, PredictionStyle((RED, BLUE), 1.0))
    assert out[0, 0].tolist() == [*RED, 255] and out[0, 1].tolist() == [*BLUE, 255]
    assert out[0, 2].tolist() == [0, 0, 0, 0]


def test_heatmap_alpha_follows_the_probability() -> None:
    probs = np.array([[[255], [51], [0]]], np.uint8)
    out = colorize(probs, PredictionStyle((RED,), 0.5, "heatmap"))
    assert out[0, 0, 3] == round(255 * 0.5) and out[0, 1, 3] == round(51 * 0.5)
    assert out[0, 2].tolist() == [0, 0, 0, 0]


def test_outline_keeps_a_two_pixel_band_inside_the_border() -> None:
    probs = np.zeros((10, 10, 1), np.uint8)
    probs[2:8, 2:8] = 255
    alpha = colorize(probs, PredictionStyle((RED,), 1.0, outline=True))[..., 3] > 0
    expect = np.zeros((10, 10), bool)
    expect[2:8, 2:8] = True
    expect[4:6, 4:6] = False
    assert (alpha == expect).all()


@pytest.mark.parametrize("mode", ["mask", "heatmap"])
def test_the_lookup_table_agrees_with_the_general_path(mode: str) -> None:
    probs = np.random.default_rng(1).integers(0, 256, (37, 53, 1), dtype=np.uint8)
    style = PredictionStyle((RED,), 0.37, mode)
    assert np.array_equal(colorize(probs, style), _colorize(probs, style))


def test_unknown_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="mode"):
        PredictionStyle((RED,), 0.5, "contours")


def _measurements(um2: bool) -> Measurements:
    k = 0.25 if um2 else None
    tumour = ClassArea("tumour", 100, 4e6, 4e6 * k if k else None, 0.4)
    return Measurements(1e7, 1e7 * k if k else None, (tumour,))


def test_summary_in_mm2_with_a_pixel_size_and_px2_without() -> None:
    s = summarize(_measurements(True), "a.svs", "m v1", True)
    assert s.unit == "mm²" and s.tissue_area == pytest.approx(2.5) and s.rows[0].area == pytest.approx(1.0)
    p = summarize(_measurements(False), "a.svs", "m v1", False)
    assert p.unit == "px²" and p.tissue_area == 1e7 and p.rows[0].area == 4e6


def test_summary_csv_rows() -> None:
    rows = list(csv.DictReader(io.StringIO(summary_csv(summarize(_measurements(False), "a.svs",
                                                                 "m v1", False)))))
    assert rows == [
        {"slide": "a.svs", "model": "m v1", "class": "tumour", "area_px2": "4e+06",
         "fraction_of_tissue": "0.400000", "complete": "False"},
        {"slide": "a.svs", "model": "m v1", "class": "tissue", "area_px2": "1e+07",
         "fraction_of_tissue": "1.000000", "complete": "False"}]

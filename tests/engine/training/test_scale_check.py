from __future__ import annotations

import json

import numpy as np
import pytest

from engine.training.scale_check import estimate_mpp, markdown, nuclear_diameters, shared_data_report


def _field(n: int, diameter_px: float, seed: int) -> np.ndarray:
    """Pink stroma with hematoxylin-blue round nuclei of one diameter, scattered without touching."""
    rng = np.random.default_rng(seed)
    img = np.empty((n, n, 3), np.uint8)
    img[:] = (235, 180, 200)
    yy, xx = np.mgrid[:n, :n]
    r = diameter_px / 2
    step = int(diameter_px * 2.2)
    for cy in range(step // 2, n - step // 2, step):
        for cx in range(step // 2, n - step // 2, step):
            jy, jx = rng.uniform(-0.2, 0.2, 2) * diameter_px
            img[(yy - cy - jy) ** 2 + (xx - cx - jx) ** 2 <= r * r] = (70, 50, 140)
    return img


def test_nuclear_diameters_reads_the_size_of_drawn_nuclei() -> None:
    for d in (6.0, 12.0, 24.0):
        got = np.median(nuclear_diameters(_field(240, d, 0)))
        assert got == pytest.approx(d, rel=0.15)
    assert nuclear_diameters(np.full((64, 64, 3), 245, np.uint8)).size == 0  # glass: nothing


def test_the_estimate_finds_the_tiles_pixel_size_from_a_ruler() -> None:
    # nuclei of 6 µm: the ruler at 0.25 µm/px draws them 24 px wide; tiles at 1.2 µm/px 5 px wide
    ruler = [_field(960, 24.0, s) for s in range(2)]
    tiles = {"tiles": [_field(200, 6.0 / 1.2, s) for s in range(4)],
             "finer": [_field(400, 6.0 / 0.6, s) for s in range(2)]}
    report = estimate_mpp(tiles, {"ruler": (ruler, 0.25)})
    curve = report["rulers"]["ruler"]
    assert [c["mpp"] for c in curve][0] == 0.5 and curve[0]["median_px"] > curve[-1]["median_px"]
    assert report["tile_sets"]["tiles"]["mpp_by_ruler"]["ruler"] == pytest.approx(1.2, rel=0.15)
    assert report["tile_sets"]["finer"]["mpp_range"][0] == pytest.approx(0.6, rel=0.15)
    md = markdown(report, 1.0)
    assert "| ruler |" in md and "| tiles |" in md and "The model card's µm/px: 1." in md
    json.dumps(report)


def test_on_the_shared_data_the_tiles_agree_with_the_cards_scale() -> None:
    """The real check: the 224-px EBHI tiles are within the card's ±30 % of 1 µm/px by both rulers,
    and the 512-px polyp images are at about half their pixel size."""
    report = shared_data_report(per_set=12)
    assert len(report["rulers"]) == 2
    sets = report["tile_sets"]
    for name in ("ebhi-adenocarcinoma", "ebhi-normal", "camelyon-tumour"):
        lo, hi = sets[name]["mpp_range"]
        assert 0.7 <= lo <= hi <= 1.6, (name, lo, hi)
    assert sets["ebhi-polyp"]["median_px"] > 1.5 * sets["ebhi-adenocarcinoma"]["median_px"]
    assert any("no µm/px" in name for name in sets)  # the frozen section states none

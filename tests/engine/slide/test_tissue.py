"""Tissue detection agrees with histolab's reference masks of the real slides."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.shared_data import data_path
from engine.slide import RegionRequest, open_slide
from engine.slide.tissue import TissueMask, detect_tissue, detect_tissue_rgb, otsu_threshold


@pytest.mark.parametrize(("slide", "ref"), [
    ("cmu-1-small-region.svs", "tissue-mask-cmu-1-small-region.npy"),
    ("tcga-cr-7395-01a-01-ts1.svs", "tissue-mask-tcga-cr-7395.npy"),
])
def test_matches_reference_masks(slide: str, ref: str) -> None:
    reference = np.load(data_path("tissue-masks", ref))
    with open_slide(data_path("slides", slide)) as s:
        lvl = s.info.level_count - 1
        rgb = s.read_rgb(RegionRequest(s.info.path, lvl, 0, 0, *s.info.level_dimensions[lvl]))
    small = np.asarray(Image.fromarray(rgb).resize(reference.shape[::-1], Image.Resampling.BOX))
    ours = detect_tissue_rgb(small)
    iou = (ours & reference).sum() / (ours | reference).sum()
    assert iou >= 0.8, iou
    assert (ours & ~reference).sum() / ours.sum() < 0.05  # what we call tissue, the reference does too


def test_slide_level_mask_and_coverage(small_svs: Path) -> None:
    with open_slide(small_svs) as s:
        tm = detect_tissue(s, target_downsample=16)
    assert tm.downsample == pytest.approx(16, rel=0.01)
    assert tm.mask.shape == (2967 // 16, 2220 // 16)
    assert 0.25 < tm.fraction < 0.6
    ys, xs = np.nonzero(tm.mask)
    assert tm.covers(xs[0] * 16, ys[0] * 16, 16, 16)
    assert not tm.covers(0, 0, 64, 64)  # the top-left corner is glass on this slide


def test_glass_and_specks_are_not_tissue() -> None:
    img = np.full((100, 100, 3), 240, np.uint8)
    img[5, 5] = (120, 40, 120)  # one stained pixel: a speck
    img[40:80, 30:70] = (180, 90, 160)  # a block of pink tissue with a pale lumen
    img[55:65, 45:55] = (235, 235, 235)
    mask = detect_tissue_rgb(img)
    assert not mask[5, 5] and not mask[:20, 80:].any()
    assert mask[40:80, 30:70].all()  # the lumen is filled


def test_otsu_splits_two_populations() -> None:
    values = np.concatenate([np.full(500, 60), np.full(500, 200)]).astype(np.uint8)
    assert 60 <= otsu_threshold(values) < 200
    assert TissueMask(np.zeros((2, 2), bool), 4.0).covers(0, 0, 8, 8) is False


def test_tissue_touching_the_border_is_kept() -> None:
    img = np.full((60, 60, 3), 240, np.uint8)
    img[:, :25] = (170, 80, 150)  # tissue running off the left and top/bottom edges
    mask = detect_tissue_rgb(img)
    assert mask[:, :25].all()
    assert not mask[:, 30:].any()

"""Review next: regions ranked by entropy or teacher–student disagreement, from prediction caches
filled with known patterns (so the expected ranking is exact)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from engine.errors import CocoPathError
from engine.finetune.review import (ReviewRegion, disagreement_map, entropy_map, rank_regions)
from engine.inference.cache import PredictionCache
from engine.inference.geometry import PredictionGrid

TILE = 64


def make_cache(root: Path, prob: np.ndarray, tissue: np.ndarray | None = None,
               done: set[tuple[int, int]] | None = None, version: str = "v1") -> PredictionCache:
    """A cache of a slide whose level-0 foreground probability map is ``prob`` ((h, w) uint8 or
    (h, w, C-1)); ``tissue`` is per cache tile (rows, cols); only ``done`` tiles are written."""
    if prob.ndim == 2:
        prob = prob[..., None]
    h, w, ch = prob.shape
    grid = PredictionGrid("slide.tif", (w, h), 1.0, 0, 1.0, TILE, 0)
    cols, rows = grid.shape
    tissue = np.ones((rows, cols), bool) if tissue is None else tissue
    cache = PredictionCache.open(root, grid, version, ch, tissue)
    for c, r in grid.tiles():
        if done is not None and (c, r) not in done:
            continue
        tile = np.zeros((TILE, TILE, ch), np.uint8)
        part = prob[r * TILE:(r + 1) * TILE, c * TILE:(c + 1) * TILE]
        tile[:part.shape[0], :part.shape[1]] = part
        cache.write_tile(c, r, tile, flush=False)
    cache.flush()
    return cache


def overlaps(a: ReviewRegion, b: tuple[int, int, int, int]) -> bool:
    x, y, w, h = b
    return a.x < x + w and x < a.x + a.w and a.y < y + h and y < a.y + a.h


def confident(h: int, w: int) -> np.ndarray:
    """Certain everywhere: tumour on the left half, background on the right."""
    p = np.zeros((h, w), np.uint8)
    p[:, : w // 2] = 255
    return p


def test_entropy_and_disagreement_maps_are_normalised() -> None:
    p = np.array([[[0], [255], [128]]], np.uint8)
    e = entropy_map(p)[0]
    assert e[0] == pytest.approx(0.0, abs=1e-6) and e[1] == pytest.approx(0.0, abs=1e-6)
    assert e[2] == pytest.approx(1.0, abs=1e-3)  # a coin toss
    three = np.array([[[85, 85]]], np.uint8)  # background, class 1, class 2 each a third
    assert entropy_map(three)[0, 0] == pytest.approx(1.0, abs=1e-2)
    a = np.array([[[0], [255], [128]]], np.uint8)
    b = np.array([[[255], [255], [128]]], np.uint8)
    assert disagreement_map(a, b)[0].tolist() == pytest.approx([1.0, 0.0, 0.0])


def test_the_uncertain_spot_comes_first_and_results_never_overlap(tmp_path: Path) -> None:
    p = confident(512, 640)
    p[300:364, 400:464] = 128  # a 64² coin-toss spot
    p[40:72, 100:132] = 100  # a smaller, less uncertain one
    cache = make_cache(tmp_path / "c", p)
    regions = rank_regions(cache, 128, n=6)
    assert len(regions) == 6
    top = regions[0]
    assert top.kind == "entropy"
    assert top.x <= 400 and top.x + top.w >= 464 and top.y <= 300 and top.y + top.h >= 364
    assert top.score == pytest.approx(64 * 64 / 128 ** 2, abs=0.01)  # the spot fills a quarter
    second = regions[1]
    assert overlaps(second, (100, 40, 32, 32))
    assert [r.score for r in regions] == sorted((r.score for r in regions), reverse=True)
    for i, a in enumerate(regions):
        assert (a.w, a.h) == (128, 128)
        assert 0 <= a.x and a.x + a.w <= 640 and 0 <= a.y and a.y + a.h <= 512
        for b in regions[i + 1:]:
            assert not overlaps(a, b.rect), (a, b)


def test_reviewed_regions_are_skipped(tmp_path: Path) -> None:
    p = confident(512, 640)
    p[300:364, 400:464] = 128
    cache = make_cache(tmp_path / "c", p)
    first = rank_regions(cache, 128, n=1)[0]
    again = rank_regions(cache, 128, n=20, exclude=[first.rect])
    assert again and all(not overlaps(r, first.rect) for r in again)
    # touching the reviewed ROI edge to edge is not overlapping it
    roi = (first.x, first.y, first.w, first.h)
    assert any(r.x == first.x + first.w or r.y == first.y + first.h or r.x + r.w == first.x
               or r.y + r.h == first.y for r in rank_regions(cache, 128, n=50, exclude=[roi],
                                                             min_tissue=0.0))
    # an ROI covering the spot's middle only still rules out everything that touches it
    partial = rank_regions(cache, 128, n=1, exclude=[(420, 320, 10, 10)])[0]
    assert not overlaps(partial, (420, 320, 10, 10))
    assert partial.score < first.score


def test_background_and_unfinished_tiles_are_not_tissue(tmp_path: Path) -> None:
    h, w = 512, 512
    p = confident(h, w)
    p[0:128, 384:512] = 128  # uncertain, but on a tile the tissue detector called glass
    p[384:512, 0:128] = 128  # uncertain, but its tiles are not predicted yet
    p[200:264, 200:264] = 128  # the one that counts
    cols = rows = w // TILE
    tissue = np.ones((rows, cols), bool)
    tissue[0:2, 6:8] = False
    done = {(c, r) for r in range(rows) for c in range(cols) if not (r >= 6 and c < 2)}
    cache = make_cache(tmp_path / "c", p, tissue, done)
    regions = rank_regions(cache, 128, n=30, min_tissue=0.5)
    assert overlaps(regions[0], (200, 200, 64, 64))
    for r in regions:
        assert not (r.x >= 384 and r.y + r.h <= 128), r  # wholly on glass
        assert not (r.x + r.w <= 128 and r.y >= 384), r  # wholly unfinished
    # a stricter tissue share drops every region that is half glass or half unfinished
    strict = rank_regions(cache, 128, n=100, min_tissue=1.0)
    for r in strict:
        assert not overlaps(r, (384, 0, 128, 128)) and not overlaps(r, (0, 384, 128, 128)), r


def test_teacher_student_disagreement(tmp_path: Path) -> None:
    student = np.full((512, 512), 128, np.uint8)  # a coin toss everywhere: entropy can't choose
    teacher = student.copy()
    teacher[64:192, 320:448] = 255  # the teacher is sure there is tumour here
    s = make_cache(tmp_path / "s", student)
    t = make_cache(tmp_path / "t", teacher, version="teacher")
    regions = rank_regions(s, 128, n=3, other=t)
    top = regions[0]
    assert top.kind == "disagreement"
    assert (top.x, top.y) == (320, 64)
    assert top.score == pytest.approx(127 / 255, abs=0.01)
    assert all(r.score <= top.score for r in regions[1:])
    assert regions[1].score < top.score
    with pytest.raises(CocoPathError, match="different slides"):
        rank_regions(s, 128, other=make_cache(tmp_path / "o", student[:256]))


def test_large_slides_are_read_at_a_coarse_level(tmp_path: Path) -> None:
    p = confident(1024, 1536)
    p[640:768, 1024:1152] = 128
    cache = make_cache(tmp_path / "c", p)
    assert cache.level_count >= 4
    levels: list[int] = []
    read = cache.read_tile

    def spy(level: int, col: int, row: int):
        levels.append(level)
        return read(level, col, row)

    cache.read_tile = spy  # type: ignore[method-assign]
    top = rank_regions(cache, 512, n=1)[0]
    assert levels and min(levels) >= 2  # 512 px regions: 32 pixels across at 1/16
    assert overlaps(top, (1024, 640, 128, 128))
    assert top.score == pytest.approx(128 * 128 / 512 ** 2, abs=0.01)


def test_small_slides_and_bad_arguments(tmp_path: Path) -> None:
    cache = make_cache(tmp_path / "c", confident(100, 100))
    assert rank_regions(cache, 128) == []  # no region fits inside the slide
    assert rank_regions(cache, 64, n=0) == []
    with pytest.raises(CocoPathError, match="at least"):
        rank_regions(cache, 2)
    with pytest.raises(CocoPathError, match="fraction"):
        rank_regions(cache, 64, min_tissue=1.5)
    with pytest.raises(ValueError, match="valid: entropy, disagreement"):
        ReviewRegion(0, 0, 1, 1, 0.0, "variance")
    # confident everywhere: every region scores zero, and there are as many as fit without overlap
    regions = rank_regions(cache, 32, n=100, min_tissue=0.0)
    assert len(regions) == 9 and all(math.isclose(r.score, 0.0, abs_tol=1e-6) for r in regions)

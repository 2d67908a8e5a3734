"""Review next: regions chosen by uncertainty (entropy, or teacher–student disagreement) and
diversity (coverage of places and kinds of prediction), tissue only, from prediction caches filled
with known patterns (so the expected choice is exact)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

import engine.finetune.review as review
from engine.errors import CocoPathError
from engine.finetune.review import (ReviewRegion, disagreement_map, entropy_map, rank_regions,
                                    rank_slides)
from engine.inference.cache import PredictionCache
from engine.inference.geometry import PredictionGrid
from engine.slide.tissue import TissueMask

TILE = 64


def make_cache(root: Path, prob: np.ndarray, tissue: np.ndarray | None = None,
               done: set[tuple[int, int]] | None = None, version: str = "v1",
               slide: str = "slide.tif") -> PredictionCache:
    """A cache of a slide whose level-0 foreground probability map is ``prob`` ((h, w) uint8 or
    (h, w, C-1)); ``tissue`` is per cache tile (rows, cols); only ``done`` tiles are written."""
    if prob.ndim == 2:
        prob = prob[..., None]
    h, w, ch = prob.shape
    grid = PredictionGrid(slide, (w, h), 1.0, 0, 1.0, TILE, 0)
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


def contains(a: ReviewRegion, b: tuple[int, int, int, int]) -> bool:
    x, y, w, h = b
    return a.x <= x and a.y <= y and a.x + a.w >= x + w and a.y + a.h >= y + h


def confident(h: int, w: int) -> np.ndarray:
    """Certain everywhere: tumour on the left half, background on the right."""
    p = np.zeros((h, w), np.uint8)
    p[:, : w // 2] = 255
    return p


def apart(regions: list[ReviewRegion]) -> None:
    for i, a in enumerate(regions):
        for b in regions[i + 1:]:
            assert not overlaps(a, b.rect), (a, b)


def by_uncertainty_alone(prob: np.ndarray, side: int, n: int) -> list[ReviewRegion]:
    """The old ranking, computed here from the map: the most uncertain region (mean entropy over
    the lattice of quarter-side steps), then the most uncertain not overlapping it, and so on."""
    e = entropy_map(prob[..., None]).astype(np.float64)
    s = np.zeros((e.shape[0] + 1, e.shape[1] + 1))
    s[1:, 1:] = e.cumsum(0).cumsum(1)
    step = side // 4
    cands = [(s[y + side, x + side] - s[y, x + side] - s[y + side, x] + s[y, x]) / side ** 2
             for y in range(0, e.shape[0] - side + 1, step) for x in range(0, e.shape[1] - side + 1, step)]
    xy = [(x, y) for y in range(0, e.shape[0] - side + 1, step)
          for x in range(0, e.shape[1] - side + 1, step)]
    out: list[ReviewRegion] = []
    for k in np.argsort(-np.array(cands), kind="stable"):
        r = ReviewRegion(xy[k][0], xy[k][1], side, side, float(cands[k]), "entropy")
        if all(not overlaps(r, o.rect) for o in out):
            out.append(r)
        if len(out) == n:
            break
    return out


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
    d = review.descriptor_map(np.array([[[0], [200], [100]]], np.uint8))[0]
    assert d[:, 0] == pytest.approx([0.0, 200 / 255, 100 / 255]) and d[:, 1].tolist() == [0, 1, 0]


def test_the_uncertain_spot_comes_first_and_results_never_overlap(tmp_path: Path) -> None:
    p = confident(512, 640)
    p[300:364, 400:464] = 128  # a 64² coin-toss spot
    p[40:72, 100:132] = 100  # a smaller, less uncertain one
    cache = make_cache(tmp_path / "c", p)
    regions = rank_regions(cache, 128, n=6)
    assert len(regions) == 6
    top = regions[0]
    assert top.kind == "entropy" and contains(top, (400, 300, 64, 64))
    assert top.uncertainty == pytest.approx(64 * 64 / 128 ** 2, abs=0.01)  # the spot fills a quarter
    assert top.tissue == pytest.approx(1.0)
    assert contains(regions[1], (100, 40, 32, 32))
    # worth, not uncertainty, orders the list: it never grows, and a region sure of itself is
    # worth nothing (the last four cover the rest of the tissue)
    scores = [r.score for r in regions]
    assert scores == sorted(scores, reverse=True) and all(0.0 <= s <= 1.0 for s in scores)
    assert scores[0] > scores[1] > 0.0 and scores[2:] == [0.0] * 4
    for a in regions:
        assert (a.w, a.h) == (128, 128)
        assert 0 <= a.x and a.x + a.w <= 640 and 0 <= a.y and a.y + a.h <= 512
    apart(regions)
    # the sure regions cover both halves, tumour and background (both sides of the boundary)
    assert {r.descriptor[1] > 0.5 for r in regions[2:]} == {True, False}


def test_picks_cover_places_and_kinds_not_one_big_ambiguous_blob(tmp_path: Path) -> None:
    """A big coin-toss blob holds eight separate regions, each more uncertain than any of six
    smaller spots elsewhere (three leaning to tumour, three to background). Ranking by uncertainty
    alone puts all five first picks in the blob; Review next goes to the blob first, then to the
    spots: at most half the picks in the blob, and the picks fall on both sides of the decision
    boundary (regions called tumour and regions called background)."""
    p = np.zeros((768, 1024), np.uint8)
    blob = (64, 64, 256, 512)  # x, y, w, h
    p[64:576, 64:320] = 128
    lean_tumour = [(448, 64), (640, 320), (832, 576)]
    lean_background = [(832, 64), (448, 320), (640, 576)]
    for (x, y), v in [(s, 200) for s in lean_tumour] + [(s, 60) for s in lean_background]:
        p[y:y + 128, x:x + 128] = v
    cache = make_cache(tmp_path / "c", p)
    in_blob = lambda r: contains(ReviewRegion(*blob, 0.0, "entropy"), r.rect)  # noqa: E731
    # what uncertainty alone would choose: the blob's regions (mean entropy 1) beat any spot
    assert max(float(entropy_map(np.array([[[v]]], np.uint8))[0, 0]) for v in (200, 60)) < 0.85
    greedy = by_uncertainty_alone(p, 128, 5)
    assert len(greedy) == 5 and all(in_blob(r) for r in greedy), greedy
    regions = rank_regions(cache, 128, n=5)
    assert len(regions) == 5
    apart(regions)
    assert in_blob(regions[0])  # the most uncertain tissue still comes first
    assert 1 <= sum(1 for r in regions if in_blob(r)) <= 2, regions
    spots = {(x, y, 128, 128) for x, y in lean_tumour + lean_background}
    hit = {s for s in spots for r in regions if overlaps(r, s) and r.uncertainty > 0.5}
    assert len(hit) >= 2, regions
    sides = {r.descriptor[1] > 0.5 for r in regions}  # where the tumour class wins most pixels
    assert sides == {True, False}, regions


def test_reviewed_regions_are_skipped_and_count_as_covered(tmp_path: Path) -> None:
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
    assert partial.uncertainty < first.uncertainty


def test_a_region_like_a_reviewed_one_is_worth_less(tmp_path: Path) -> None:
    """Two equal coin-toss spots far apart: reviewing one makes the other's region worth less than
    it was (what the reviewed region stands for is covered), though it still comes first."""
    p = np.zeros((512, 1024), np.uint8)
    p[64:128, 64:128] = 128
    p[64:128, 832:896] = 128
    cache = make_cache(tmp_path / "c", p)
    before = rank_regions(cache, 128, n=2)
    assert {contains(before[0], (64, 64, 64, 64)), contains(before[1], (64, 64, 64, 64))} == {True, False}
    other = before[1] if contains(before[0], (64, 64, 64, 64)) else before[0]
    after = rank_regions(cache, 128, n=1, exclude=[(32, 32, 128, 128)])[0]
    assert after.rect == other.rect
    lone = rank_regions(cache, 128, n=1, exclude=[(0, 0, 1, 1)])[0]  # a reviewed corner of glass-like nothing
    assert after.score < lone.score


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
        assert r.tissue is not None and r.tissue >= 0.5
    # a stricter tissue share drops every region that is half glass or half unfinished
    strict = rank_regions(cache, 128, n=100, min_tissue=1.0)
    for r in strict:
        assert not overlaps(r, (384, 0, 128, 128)) and not overlaps(r, (0, 384, 128, 128)), r


def test_glass_inside_tissue_tiles_is_never_proposed(tmp_path: Path) -> None:
    """Every cache tile is a tissue tile, but the slide's tissue mask says the right third is glass,
    where the model is at its most uncertain: no region there, nor one more than half glass."""
    p = np.zeros((512, 768), np.uint8)
    p[:, 512:] = 128  # a coin toss on the glass
    p[200:264, 100:164] = 110  # a little doubt on tissue
    cache = make_cache(tmp_path / "c", p)
    mask = np.zeros((32, 48), bool)  # 1/16 of the slide
    mask[:, :32] = True
    glass = TissueMask(mask, 16.0)
    regions = rank_regions(cache, 128, n=100, tissue=glass)
    assert regions and contains(regions[0], (100, 200, 64, 64))
    for r in regions:
        assert r.x + r.w / 2 <= 512, r  # more than half on tissue
        assert r.tissue is not None and r.tissue >= 0.5 - 1e-6
    assert not any(r.x >= 512 for r in regions)
    # the same with nothing but the cache's tiles: the glass wins, uncertain as it is
    blind = rank_regions(cache, 128, n=1, find_tissue=False)[0]
    assert blind.x + blind.w > 512


def test_the_slides_own_tissue_mask_is_found_from_the_cache(tmp_path: Path) -> None:
    """The cache names its slide; Review next reads the slide's tissue itself (bright glass and a
    blank white band are not tissue), and remembers it."""
    from tiff_fixtures import write_slide

    rgb = np.full((512, 768, 3), 244, np.uint8)  # glass
    rng = np.random.default_rng(0)
    rgb[:, :448] = np.clip(rng.normal((200, 120, 180), 12, (512, 448, 3)), 0, 255).astype(np.uint8)
    rgb[:, 576:] = 255  # blank
    slide = write_slide(tmp_path / "s.tif", rgb, mpp=1.0)
    p = np.full((512, 768), 128, np.uint8)  # a coin toss everywhere, glass included
    cache = make_cache(tmp_path / "c", p, slide=str(slide))
    review._tissue_memory.clear()
    found = review.slide_tissue(cache)
    assert found is not None and found.mask[:, : int(400 / found.downsample)].all()
    assert not found.mask[:, int(600 / found.downsample):].any()
    assert review.slide_tissue(cache) is found  # remembered
    regions = rank_regions(cache, 128, n=50)
    assert regions and all(r.x + r.w / 2 <= 448 + 1 for r in regions), regions
    # a cache whose slide is gone: the tiles decide
    gone = make_cache(tmp_path / "g", p, slide=str(tmp_path / "gone.tif"))
    assert review.slide_tissue(gone) is None
    assert any(r.x >= 512 for r in rank_regions(gone, 128, n=50))


def test_the_choice_is_deterministic(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    p = (rng.random((24, 32)) * 255).astype(np.uint8).repeat(16, 0).repeat(16, 1)
    a = rank_regions(make_cache(tmp_path / "a", p), 128, n=8)
    b = rank_regions(make_cache(tmp_path / "b", p), 128, n=8)
    assert a == b and len(a) == 8
    two = rank_slides([make_cache(tmp_path / "c", p), make_cache(tmp_path / "d", p[::-1].copy())],
                      128, n=8)
    assert two == rank_slides([PredictionCache(tmp_path / "c"), PredictionCache(tmp_path / "d")],
                              128, n=8)


def test_many_slides_take_turns_then_go_where_picks_are_worth_most(tmp_path: Path) -> None:
    big = np.zeros((512, 1024), np.uint8)
    for x in range(0, 1024, 256):
        big[64:448, x + 32:x + 224] = 100 + x // 8  # four different doubtful patches
    small = np.zeros((256, 256), np.uint8)
    small[64:192, 64:192] = 40  # a little doubt
    caches = [make_cache(tmp_path / "big", big), make_cache(tmp_path / "small", small)]
    picks = rank_slides(caches, 128, n=6)
    assert len(picks) == 6
    assert {s for s, _ in picks[:2]} == {0, 1}  # each slide's first before any second
    assert [s for s, _ in picks[2:]].count(0) >= 3  # then where the doubt is
    for s in (0, 1):
        apart([r for t, r in picks if t == s])
    assert rank_slides(caches, 128, n=0) == [] and rank_slides([], 128) == []
    with pytest.raises(CocoPathError, match="entries"):
        rank_slides(caches, 128, exclude=[()])
    # the single-slide ranking is rank_slides of one
    assert rank_regions(caches[0], 128, n=4) == [r for _, r in rank_slides(caches[:1], 128, n=4)]


def test_the_work_stays_bounded_on_a_big_lattice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                 ) -> None:
    """Fewer candidates and ground regions than the lattice holds (the most uncertain of each block
    compete): the spot still comes first and the picks stay apart."""
    p = confident(512, 768)
    p[300:364, 400:464] = 128
    cache = make_cache(tmp_path / "c", p)
    seen: dict[str, int] = {}
    similarity = review._similarity

    def spy(a, b, sides):
        seen["cand"], seen["ground"] = max(seen.get("cand", 0), len(a[0])), len(b[0])
        return similarity(a, b, sides)

    monkeypatch.setattr(review, "CANDIDATES_MAX", 40)
    monkeypatch.setattr(review, "GROUND_MAX", 30)
    monkeypatch.setattr(review, "_similarity", spy)
    regions = rank_regions(cache, 128, n=5)
    assert seen["cand"] <= 40 and seen["ground"] <= 30
    assert contains(regions[0], (400, 300, 64, 64)) and len(regions) == 5
    apart(regions)


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
    assert top.uncertainty == pytest.approx(127 / 255, abs=0.01)
    assert all(r.uncertainty <= top.uncertainty for r in regions[1:])
    assert regions[1].uncertainty < top.uncertainty
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
    assert top.uncertainty == pytest.approx(128 * 128 / 512 ** 2, abs=0.01)


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
    # confident everywhere: every region is worth zero; they cover the slide without overlap
    regions = rank_regions(cache, 32, n=100, min_tissue=0.0)
    assert 4 <= len(regions) <= 9 and all(math.isclose(r.score, 0.0, abs_tol=1e-6) for r in regions)
    apart(regions)
    assert all(math.isclose(r.uncertainty or 0.0, 0.0, abs_tol=1e-6) for r in regions)

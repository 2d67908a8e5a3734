"""Whole-slide inference: exact maps at every level, background never run, order, cancel, resume."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from engine.inference.cache import PredictionCache
from engine.inference.pipeline import SlideInference
from engine.inference.runner import TorchRunner
from engine.jobs import CancelToken

from infer_fixtures import (Constant, CountingSlide, RedIsTumour, halve_rgb, pattern_rgb, plain_spec,
                       prepare, reference_levels)


def expected_level0(cache: PredictionCache, red: np.ndarray, done=None) -> np.ndarray:
    """The red channel inside (done) tissue tiles, 0 elsewhere, on the cache's level-0 grid."""
    w, h = cache.levels[0]
    t = cache.tile
    out = np.zeros((h, w), np.uint8)
    tiles = cache.done_tiles() if done is None else done
    for r, c in zip(*np.nonzero(cache.tissue)):
        if (c, r) in tiles:
            out[r * t:(r + 1) * t, c * t:(c + 1) * t] = red[r * t:(r + 1) * t, c * t:(c + 1) * t]
    return out


def assert_cache_is(cache: PredictionCache, level0: np.ndarray) -> None:
    for k, ref in enumerate(reference_levels(level0, cache.levels)):
        w, h = cache.levels[k]
        got = cache.read_region(k, 0, 0, w, h)[..., 0]
        np.testing.assert_array_equal(got, ref, err_msg=f"cache level {k}")


@pytest.mark.parametrize("model_mpp, slide_level", [(0.5, 0), (1.0, 1)])
def test_known_pattern_is_reproduced_exactly_at_every_level(pattern_slide, tmp_path, model_mpp,
                                                             slide_level):
    spec = plain_spec(mpp=model_mpp)
    slide, grid, cache = prepare(pattern_slide, spec, tmp_path / "c")
    assert grid.read_level == slide_level and not grid.resampled
    assert cache.level_count >= 3
    red = pattern_rgb(700, 520)
    for _ in range(slide_level):
        red = halve_rgb(red)
    res = SlideInference(slide, grid, cache, TorchRunner(RedIsTumour(), spec), batch_size=3).run()
    assert res.status == "done" and cache.complete
    assert 0 < cache.tissue_tiles < cache.tissue.size  # the glass part really is left out
    assert_cache_is(cache, expected_level0(cache, red[..., 0]))


def test_background_tiles_are_never_read_nor_run(pattern_slide, tmp_path):
    spec = plain_spec()
    slide, grid, cache = prepare(pattern_slide, spec, tmp_path / "c")
    counting = CountingSlide(slide)
    model = RedIsTumour()
    SlideInference(counting, grid, cache, TorchRunner(model, spec), batch_size=2).run()
    tissue = {(int(c), int(r)) for r, c in zip(*np.nonzero(cache.tissue))}
    allowed = {grid.window_request(c, r) for c, r in tissue}
    assert set(counting.requests) <= allowed
    assert model.windows == len(tissue) == len(counting.requests)  # each window exactly once


def test_constant_model_gives_a_constant_map_without_seams(pattern_slide, tmp_path):
    spec = plain_spec()
    slide, grid, cache = prepare(pattern_slide, spec, tmp_path / "c")
    SlideInference(slide, grid, cache, TorchRunner(Constant(0.4), spec)).run()
    w, h = cache.levels[0]
    got = cache.read_region(0, 0, 0, w, h)[..., 0]
    t = cache.tile
    for r, c in zip(*np.nonzero(cache.tissue)):
        block = got[r * t:(r + 1) * t, c * t:(c + 1) * t]
        assert (block == 102).all(), f"tile {c},{r} has {np.unique(block)}"


def test_visible_tiles_come_first_and_a_new_viewport_reprioritises(pattern_slide, tmp_path):
    spec = plain_spec(tile=64)
    slide, grid, cache = prepare(pattern_slide, spec, tmp_path / "c")
    assert grid.shape[0] >= 8
    job = SlideInference(slide, grid, cache, TorchRunner(RedIsTumour(), spec), batch_size=1,
                         prefetch=0)
    d = grid.tile * grid.downsample
    job.set_viewport(8 * d, 9 * d, 2 * d, 1.5 * d)  # tiles (8..9, 9..10)
    visible = {(8, 9), (9, 9), (8, 10), (9, 10)}
    order: list[tuple[int, int]] = []
    corner = {(2, 2), (3, 2), (2, 3), (3, 3)}  # the top-left of the tissue, far from the first view
    assert all(cache.tissue[r, c] for c, r in visible | corner)

    def on_tile(c: int, r: int) -> None:
        order.append((c, r))
        if len(order) == len(visible):
            job.set_viewport(2 * d, 2 * d, 2 * d, 2 * d)

    job.run(on_tile=on_tile)

    def needs(t):  # the windows tile t is blended from
        return {(c, r) for c, r in grid.neighbours(*t) if cache.tissue[r, c]}

    windows = set().union(*(needs(t) for t in visible))
    free = {t for t in order if t not in visible and needs(t) <= windows}  # done at no extra cost
    assert visible <= set(order[:len(visible) + len(free)])
    # windows already committed when the viewport moved (one batch running, two queued for the
    # writer, up to 8 planned for the last tile taken) may each finish one more tile first
    slack = 1 + 2 + 8
    idx = [order.index(t) for t in corner]
    assert max(idx) < 4 + len(corner) + slack < len(order) // 2


def test_cancel_stops_promptly_leaves_a_consistent_cache_and_resumes(pattern_slide, tmp_path):
    spec = plain_spec(tile=64)
    slide, grid, cache = prepare(pattern_slide, spec, tmp_path / "c")
    token = CancelToken()
    model = RedIsTumour()
    windows_at_cancel = []

    def on_tile(c: int, r: int) -> None:
        if len(cache.done_tiles()) == 5 and not token.cancelled:
            windows_at_cancel.append(model.windows)
            token.cancel()

    job = SlideInference(slide, grid, cache, TorchRunner(model, spec), batch_size=2, prefetch=1)
    res = job.run(cancel=token, on_tile=on_tile)
    assert res.status == "cancelled"
    assert model.windows - windows_at_cancel[0] <= 2 * job.batch_size  # the batch in flight at most
    done = cache.done_tiles()
    assert 5 <= len(done) < cache.tissue_tiles
    red = pattern_rgb(700, 520)[..., 0]
    fresh = PredictionCache(cache.root)  # what another process sees now
    assert_cache_is(fresh, expected_level0(fresh, red, done))
    # resume: only what is missing runs, and the result is the full map
    _, grid2, cache2 = prepare(pattern_slide, spec, tmp_path / "c")
    assert cache2.done_tiles() == done
    model2 = RedIsTumour()
    job2 = SlideInference(slide, grid2, cache2, TorchRunner(model2, spec))
    job2.run()
    assert cache2.complete and job2.stats.tiles_written == cache2.tissue_tiles - len(done)
    assert model2.windows <= cache2.tissue_tiles  # done tiles' windows rerun only for neighbours
    assert_cache_is(cache2, expected_level0(cache2, red))


def test_viewport_can_move_from_another_thread_while_running(pattern_slide, tmp_path):
    spec = plain_spec(tile=64)
    slide, grid, cache = prepare(pattern_slide, spec, tmp_path / "c")
    job = SlideInference(slide, grid, cache, TorchRunner(RedIsTumour(), spec), batch_size=1)
    mover = threading.Thread(target=lambda: [job.set_viewport(i * 40, i * 30, 200, 100)
                                             for i in range(50)])
    mover.start()
    res = job.run()
    mover.join()
    assert res.status == "done" and cache.complete


@pytest.mark.parametrize("flush_s", [None, 0.0])
def test_a_headless_run_builds_the_coarser_levels_once_at_the_end(pattern_slide, tmp_path, monkeypatch,
                                                                  flush_s):
    """flush_s=None (the CLI): no rebuild of the coarser levels while the network runs, one at the
    end, and every level exact; a viewer's run (flush_s set) rebuilds them as it goes."""
    import engine.inference.pipeline as pipeline_mod

    spec = plain_spec()
    slide, grid, cache = prepare(pattern_slide, spec, tmp_path / "c")
    flushes: list[int] = []  # tiles written at each flush
    real = cache.flush

    def counted() -> int:
        flushes.append(len(cache.done_tiles()))
        return real()

    monkeypatch.setattr(cache, "flush", counted)
    monkeypatch.setattr(pipeline_mod.time, "perf_counter", _ticking())  # every check is "late"
    res = SlideInference(slide, grid, cache, TorchRunner(RedIsTumour(), spec), batch_size=1,
                         flush_s=flush_s).run()
    assert res.status == "done" and cache.complete
    if flush_s is None:
        assert flushes == [cache.tissue_tiles]
    else:
        assert len(flushes) > 2 and flushes[0] < cache.tissue_tiles
    assert_cache_is(cache, expected_level0(cache, pattern_rgb(700, 520)[..., 0]))


def _ticking():
    """A clock that advances 10 s per call."""
    t = [0.0]

    def now() -> float:
        t[0] += 10.0
        return t[0]

    return now

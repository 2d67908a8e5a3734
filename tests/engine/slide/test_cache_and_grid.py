"""The tile cache keeps to its byte budget under concurrent load; tile grids tile levels exactly."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from engine.slide import ByteBoundedCache, RegionRequest, TileId, best_level_for_downsample, open_slide
from engine.slide.cache import default_cache_bytes


def test_lru_eviction_and_oversized_values() -> None:
    c: ByteBoundedCache[str] = ByteBoundedCache(100)
    assert c.put("a", "A", 40) and c.put("b", "B", 40)
    assert c.get("a") == "A"  # a is now the most recent
    c.put("c", "C", 40)  # evicts b, the least recently used
    assert "b" not in c and c.get("a") == "A" and c.get("c") == "C"
    assert c.current_bytes == 80
    assert not c.put("huge", "H", 101) and "huge" not in c
    c.put("a", "A2", 10)  # replacing re-weighs
    assert c.current_bytes == 50 and c.peek("a") == "A2"
    c.resize(20)
    assert c.current_bytes <= 20 and "a" in c
    c.clear()
    assert len(c) == 0 and c.current_bytes == 0
    with pytest.raises(ValueError):
        ByteBoundedCache(0)


def test_default_budget_is_a_share_of_ram(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COCOPATH_CACHE_MB", raising=False)
    assert 256 * 2**20 <= default_cache_bytes() <= 4 * 2**30
    monkeypatch.setenv("COCOPATH_CACHE_MB", "64")
    assert default_cache_bytes() == 64 * 2**20


def test_budget_holds_under_a_random_access_storm(small_svs: Path) -> None:
    budget = 3 * 256 * 256 * 4 + 1000  # room for three 256² tiles only
    cache: ByteBoundedCache[np.ndarray] = ByteBoundedCache(budget)
    errors: list[str] = []
    with open_slide(small_svs) as s:
        grid = s.info.tile_grid(256)
        cols, rows = grid.grid_shape(0)

        def storm(seed: int) -> None:
            rng = np.random.default_rng(seed)
            for _ in range(60):
                req = grid.request(TileId(0, int(rng.integers(cols)), int(rng.integers(rows))))
                tile = cache.get(req)
                if tile is None:
                    tile = s.read_argb(req)
                    cache.put(req, tile, tile.nbytes)
                elif tile.shape != (req.height, req.width):
                    errors.append(f"wrong tile for {req}")
                if cache.current_bytes > budget:
                    errors.append(f"over budget: {cache.current_bytes}")

        threads = [threading.Thread(target=storm, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors
    assert 0 < cache.current_bytes <= budget
    assert cache.hits + cache.misses == 6 * 60


def test_grid_tiles_cover_each_level_exactly(no_mpp_svs: Path) -> None:
    with open_slide(no_mpp_svs) as s:
        grid = s.info.tile_grid(512)
        for level, (w, h) in enumerate(s.info.level_dimensions):
            covered = np.zeros((h, w), dtype=np.uint8)
            cols, rows = grid.grid_shape(level)
            for r in range(rows):
                for c in range(cols):
                    x, y, tw, th = grid.tile_bounds(TileId(level, c, r))
                    covered[y:y + th, x:x + tw] += 1
            assert (covered == 1).all()
        tiles = list(grid.tiles_in(0, 600, 100, 1100, 513))
        assert [(t.col, t.row) for t in tiles] == [(1, 0), (2, 0), (1, 1), (2, 1)]
        req = grid.request(TileId(1, 1, 1))
        ds = s.info.level_downsamples[1]
        assert (req.level, req.x, req.y) == (1, round(512 * ds), round(512 * ds))


def test_requests_are_hashable_values() -> None:
    a = RegionRequest("s", 0, 1, 2, 3, 4)
    assert a == RegionRequest("s", 0, 1, 2, 3, 4) and len({a, RegionRequest("s", 0, 1, 2, 3, 4)}) == 1
    with pytest.raises(Exception):
        a.x = 5  # type: ignore[misc]
    with pytest.raises(ValueError):
        RegionRequest("s", 0, 0, 0, 0, 4)


def test_best_level_never_picks_a_coarser_level() -> None:
    ds = (1.0, 4.0, 16.0)
    assert best_level_for_downsample(ds, 0.5) == 0
    assert best_level_for_downsample(ds, 3.9) == 0
    assert best_level_for_downsample(ds, 4.0) == 1
    assert best_level_for_downsample(ds, 100) == 2

"""The tile loader: visible tiles first, prefetch only after them, stale work dropped, slides closed."""

from __future__ import annotations

import threading
import time

import numpy as np

from app.viewer.tile_loader import FINER, RING, TileLoader
from engine.slide.cache import ByteBoundedCache
from engine.slide.request import RegionRequest


class FakeSource:
    """Reads take ``delay`` seconds and are logged; close() while reading is an error."""

    def __init__(self, delay: float = 0.02) -> None:
        self.delay = delay
        self.reads: list[RegionRequest] = []
        self.reading = 0
        self.closed = False
        self.closed_while_reading = False
        self._lock = threading.Lock()

    def read_argb(self, key: RegionRequest) -> np.ndarray:
        with self._lock:
            self.reading += 1
            self.reads.append(key)
        time.sleep(self.delay)
        with self._lock:
            self.reading -= 1
        return np.full((key.height, key.width), 0xFF808080, np.uint32)

    def close(self) -> None:
        self.closed_while_reading |= self.reading > 0
        self.closed = True


def keys(n: int, level: int = 0) -> list[RegionRequest]:
    return [RegionRequest("fake", level, i * 64, 0, 64, 64) for i in range(n)]


def test_visible_first_then_prefetch_and_arrivals_carry_the_request_id(qtbot) -> None:
    loader = TileLoader(ByteBoundedCache(64 * 2**20), workers=2)
    src = FakeSource()
    loader.set_source(src)
    got: list[tuple[int, RegionRequest]] = []
    loader.tile_ready.connect(lambda rid, k: got.append((rid, k)))
    visible, ring, finer = keys(6), keys(4, 1), keys(3, 2)
    loader.request(7, visible, [(k, RING) for k in ring] + [(k, FINER) for k in finer])
    qtbot.waitUntil(lambda: len(got) == 13, timeout=5000)
    assert set(src.reads[:6]) == set(visible)  # nothing else starts before the visible tiles
    assert set(src.reads[6:10]) == set(ring) and set(src.reads[10:]) == set(finer)
    assert {rid for rid, _ in got} == {7}
    assert all(k in loader.cache for k in visible + ring + finer)
    loader.shutdown()
    assert src.closed


def test_a_new_request_drops_queued_work_and_relabels_running_reads(qtbot) -> None:
    loader = TileLoader(ByteBoundedCache(64 * 2**20), workers=1)
    src = FakeSource(delay=0.1)
    loader.set_source(src)
    got: list[tuple[int, RegionRequest]] = []
    loader.tile_ready.connect(lambda rid, k: got.append((rid, k)))
    old = keys(5)
    loader.request(1, old)
    qtbot.waitUntil(lambda: src.reading == 1, timeout=2000)  # old[0] is being read
    new = [old[0]] + keys(2, 3)
    loader.request(2, new)  # old[1:] are dropped; old[0] is still wanted, now by request 2
    qtbot.waitUntil(lambda: len(got) == 3, timeout=5000)
    assert set(src.reads) == set(new)
    assert {rid for rid, _ in got} == {2}
    assert loader.stats.cancelled >= 4
    loader.shutdown()


def test_a_replaced_slide_is_closed_only_after_its_reads_finish(qtbot) -> None:
    loader = TileLoader(ByteBoundedCache(64 * 2**20), workers=2)
    first, second = FakeSource(delay=0.2), FakeSource()
    loader.set_source(first)
    loader.request(1, keys(2))
    qtbot.waitUntil(lambda: first.reading > 0, timeout=2000)
    loader.set_source(second)
    assert not first.closed
    qtbot.waitUntil(lambda: first.closed, timeout=5000)
    assert not first.closed_while_reading
    loader.shutdown()
    assert second.closed

"""The order tiles are predicted in: the visible region first, then outward from it, then the rest.

Without a viewport, tiles go row by row (slide reads stay sequential). Setting a viewport
re-prioritises every tile not yet taken, from any thread, at once.
"""

from __future__ import annotations

import heapq
import threading
from collections.abc import Iterable

import numpy as np

from engine.inference.geometry import PredictionGrid


class TileScheduler:
    """Hands out pending tissue tiles, best first; thread-safe."""

    def __init__(self, grid: PredictionGrid, tissue: np.ndarray, done: Iterable[tuple[int, int]] = ()
                 ) -> None:
        self.grid = grid
        self._tissue = tissue
        self._lock = threading.Lock()
        self._visible: tuple[int, int, int, int] | None = None
        self._heap: list[tuple[int, int, int, int]] = []
        self.reset(done)

    def reset(self, done: Iterable[tuple[int, int]] = ()) -> None:
        """Every tissue tile not in ``done`` is pending again (the viewport is kept)."""
        rows, cols = np.nonzero(self._tissue)
        with self._lock:
            self._pending = {(int(c), int(r)) for r, c in zip(rows, cols)} - set(done)
            self._rebuild()

    def _key(self, col: int, row: int) -> tuple[int, int]:
        if self._visible is None:
            return 0, row * self.grid.shape[0] + col
        c0, r0, c1, r1 = self._visible
        dx = max(c0 - col, 0, col - c1)
        dy = max(r0 - row, 0, row - r1)
        ring = max(dx, dy)  # 0 inside the visible tiles, then one ring of tiles after another
        return ring, dx * dx + dy * dy

    def _rebuild(self) -> None:
        self._heap = [(*self._key(c, r), r, c) for c, r in self._pending]
        heapq.heapify(self._heap)

    def set_viewport(self, x: float, y: float, w: float, h: float) -> None:
        """The visible level-0 rectangle: its tiles come next, then rings around them."""
        tiles = self.grid.tiles_in(x, y, max(w, 1.0), max(h, 1.0))
        with self._lock:
            if tiles:
                cs = [c for c, _ in tiles]
                rs = [r for _, r in tiles]
                self._visible = (min(cs), min(rs), max(cs), max(rs))
            else:
                self._visible = None
            self._rebuild()

    def visible_tiles(self) -> set[tuple[int, int]]:
        with self._lock:
            if self._visible is None:
                return set()
            c0, r0, c1, r1 = self._visible
            return {(c, r) for r in range(r0, r1 + 1) for c in range(c0, c1 + 1)}

    def take(self) -> tuple[int, int] | None:
        """The best pending tile (removed from the pending set), or None when none is left."""
        with self._lock:
            while self._heap:
                *_, r, c = heapq.heappop(self._heap)
                if (c, r) in self._pending:
                    self._pending.discard((c, r))
                    return c, r
            return None

    def __len__(self) -> int:
        with self._lock:
            return len(self._pending)

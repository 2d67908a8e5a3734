"""Seam-free blending: each tile is the weighted mean of every window that covers it.

A window's probabilities are multiplied by its smooth weight (:func:`blend_weights`) and added to
the accumulators of the (up to nine) tiles it touches. A tile is final once every tissue window
around it has been added; it is then divided by the sum of those windows' weights, so where a
neighbour is missing (background, slide edge) the others still make a correctly normalised mean.
Accumulators exist only for tiles on the frontier of the work. Used from one thread (the writer).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from engine.inference.geometry import PredictionGrid, blend_weights


class Blender:
    """Accumulates window outputs into tiles; :meth:`add` returns the tiles it made final."""

    def __init__(self, grid: PredictionGrid, tissue: np.ndarray, channels: int,
                 skip: set[tuple[int, int]] | None = None) -> None:
        self.grid = grid
        self.tissue = tissue
        self.channels = channels
        self.weights = blend_weights(grid.window, grid.margin)
        self.skip = skip if skip is not None else set()  # tiles already final (from a cache)
        self._acc: dict[tuple[int, int], np.ndarray] = {}
        self._count: dict[tuple[int, int], int] = {}

    def tissue_neighbours(self, col: int, row: int) -> list[tuple[int, int]]:
        return [(c, r) for c, r in self.grid.neighbours(col, row) if self.tissue[r, c]]

    def _overlap(self, wc: int, wr: int, tc: int, tr: int) -> tuple[slice, slice, slice, slice]:
        """(window rows, window cols, tile rows, tile cols) where window (wc, wr) covers tile (tc, tr)."""
        s, m, n = self.grid.tile, self.grid.margin, self.grid.window

        def axis(w: int, t: int) -> tuple[slice, slice]:
            a = (t - w) * s + m  # the tile's first pixel in window coordinates
            lo, hi = max(a, 0), min(a + s, n)
            return slice(lo, hi), slice(lo - a, hi - a)

        wy, ty = axis(wr, tr)
        wx, tx = axis(wc, tc)
        return wy, wx, ty, tx

    def add(self, col: int, row: int, probs: np.ndarray) -> Iterator[tuple[int, int, np.ndarray]]:
        """Add window (col, row)'s (channels, N, N) probabilities; yield (c, r, uint8 tile) made final."""
        weighted = probs.transpose(1, 2, 0) * self.weights[..., None]
        for tc, tr in self.tissue_neighbours(col, row):
            if (tc, tr) in self.skip:
                continue
            wy, wx, ty, tx = self._overlap(col, row, tc, tr)
            if wy.stop <= wy.start or wx.stop <= wx.start:
                continue
            acc = self._acc.get((tc, tr))
            if acc is None:
                acc = self._acc[(tc, tr)] = np.zeros((self.grid.tile, self.grid.tile, self.channels),
                                                     np.float32)
            acc[ty, tx] += weighted[wy, wx]
            self._count[(tc, tr)] = self._count.get((tc, tr), 0) + 1
            if self._count[(tc, tr)] == len(self.tissue_neighbours(tc, tr)):
                yield tc, tr, self._finish(tc, tr)

    def _finish(self, tc: int, tr: int) -> np.ndarray:
        acc = self._acc.pop((tc, tr))
        del self._count[(tc, tr)]
        self.skip.add((tc, tr))
        wsum = np.zeros((self.grid.tile, self.grid.tile), np.float32)
        for wc, wr in self.tissue_neighbours(tc, tr):
            wy, wx, ty, tx = self._overlap(wc, wr, tc, tr)
            wsum[ty, tx] += self.weights[wy, wx]
        p = acc / wsum[..., None]
        return np.rint(np.clip(p, 0.0, 1.0) * 255.0).astype(np.uint8)

    @property
    def open_tiles(self) -> int:
        """Tiles with partial sums (the frontier): what the blender holds in memory."""
        return len(self._acc)

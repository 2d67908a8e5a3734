"""Whole-slide inference: windows read ahead in threads, the network on batches, a writer that blends
and fills the prediction cache tile by tile.

Three stages overlap: reader threads decode and resample the next batches' windows while the network
runs the current one (in the calling thread), and a writer thread blends its output into tiles and
writes the tiles that became final (with the levels above them). Only tissue tiles are run; tiles
already in the cache are skipped (a stopped run resumes); the visible region goes first
(:meth:`SlideInference.set_viewport`, any thread, any time); a :class:`CancelToken` stops between
batches and leaves every written tile whole. Progress is tiles done / tiles of tissue. A batch that
runs out of memory is run in halves (:mod:`engine.oom`); a full disk or read-only cache stops the
run with one line naming the cache (:class:`~engine.oserrors.WriteError`), its written tiles whole.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from engine.inference.blend import Blender
from engine.inference.cache import PredictionCache
from engine.inference.geometry import PredictionGrid
from engine.inference.order import TileScheduler
from engine.jobs import CancelToken, Progress, Result
from engine.oom import Backoff
from engine.oserrors import write_error
from engine.slide.reduced import MAX_READ_PIXELS, read_reduced
from engine.slide.source import SlideSource
from engine.slide.tissue import TissueMask

log = logging.getLogger(__name__)

ProgressFn = Callable[[Progress], None]
TileFn = Callable[[int, int], None]
_STOP = object()
#: How often the writer rebuilds the coarser levels of the cache while a viewer watches the run; a
#: flush that took t seconds waits at least 9·t for the next (rebuilding stays ≤ 10 % of the writer's
#: time on a large slide, whose top levels every flush rebuilds again).
FLUSH_S = 0.5


def tissue_tiles(grid: PredictionGrid, tissue: TissueMask | None) -> np.ndarray:
    """(rows, cols) bool: tiles that hold tissue (every tile when there is no mask)."""
    cols, rows = grid.shape
    out = np.ones((rows, cols), bool)
    if tissue is not None:
        for c, r in grid.tiles():
            out[r, c] = tissue.covers(*grid.tile_rect_level0(c, r))
    return out


def read_window(slide: SlideSource, grid: PredictionGrid, col: int, row: int) -> np.ndarray:
    """The network input for tile (col, row): (window, window, 3) uint8, resampled if needed.

    A window far coarser than the level it is read from (a single-level slide, a model at low
    resolution) is first averaged down by a whole factor in bounded pieces, never read whole."""
    req = grid.window_request(col, row)
    n, step = grid.window, 1
    if grid.resampled and req.width * req.height > MAX_READ_PIXELS and req.width >= 2 * n:
        step = req.width // n
        rgb = read_reduced(slide, req.level, req.x, req.y, req.width, req.height, step,
                           exact_pixels=math.inf)
    else:
        rgb = slide.read_rgb(req)
    if grid.resampled:
        from PIL import Image

        box = tuple(v / step for v in grid.window_box(col, row))  # exact, sub-pixel
        rgb = np.asarray(Image.fromarray(rgb).resize((n, n), Image.Resampling.BILINEAR, box=box))
    return rgb


@dataclass(frozen=True)
class _Batch:
    ids: tuple[tuple[int, int], ...]
    probs: np.ndarray


@dataclass(frozen=True)
class RunStats:
    """What a run did and where its time went (seconds)."""

    windows: int
    tiles_written: int
    wall_s: float
    forward_s: float
    read_wait_s: float


class SlideInference:
    """Fill one slide's prediction cache with one model (a runner from ``make_runner``)."""

    def __init__(self, slide: SlideSource, grid: PredictionGrid, cache: PredictionCache,
                 runner: Callable[[np.ndarray], np.ndarray], *, batch_size: int = 4,
                 readers: int = 2, prefetch: int = 2, flush_s: float | None = FLUSH_S) -> None:
        """``flush_s``: rebuild the coarser cache levels during the run at most that often (for a
        viewer showing the run); None: only once, at the end (a headless run: nobody looks at them
        before it ends, and each rebuild competes with the network for the CPU)."""
        self.slide, self.grid, self.cache, self.runner = slide, grid, cache, runner
        self.flush_s = flush_s
        self.batch_size, self.readers, self.prefetch = max(1, batch_size), max(1, readers), prefetch
        self.scheduler = TileScheduler(grid, cache.tissue, cache.done_tiles())
        self.stats: RunStats | None = None
        n = grid.window
        on_gpu = getattr(getattr(runner, "device", None), "type", "cpu") != "cpu"
        self.backoff = Backoff(  # the network's batch, halved while it runs out of memory
            self.batch_size, f"{slide.info.path}: out of memory running the model even on one {n}×{n} px "
            f"window at a time; close other programs or "
            + ("run on the CPU (--device cpu)" if on_gpu else "use a model with a smaller input tile"),
            label="inference")

    def forward(self, batch: np.ndarray) -> np.ndarray:
        """The runner on ``batch``, in chunks of :attr:`backoff`'s size (halved on out-of-memory)."""
        parts = [probs for _, probs in self.backoff.chunks(self.runner, batch)]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def set_viewport(self, x: float, y: float, w: float, h: float) -> None:
        """Predict the level-0 rectangle (x, y, w, h) next, then outward from it."""
        self.scheduler.set_viewport(x, y, w, h)

    def run(self, cancel: CancelToken | None = None, progress: ProgressFn | None = None,
            on_tile: TileFn | None = None) -> Result:
        t0 = time.perf_counter()
        cancel = cancel or CancelToken()
        total = self.cache.tissue_tiles
        done = len(self.cache.done_tiles())
        self.scheduler.reset(self.cache.done_tiles())
        blender = Blender(self.grid, self.cache.tissue, self.cache.channels, self.cache.done_tiles())
        results: queue.Queue = queue.Queue(maxsize=2)
        errors: list[BaseException] = []
        written = [0]

        def writer() -> None:
            nonlocal done
            every = self.flush_s
            flushed, pause = time.perf_counter(), every or 0.0
            while (item := results.get()) is not _STOP:
                if errors:
                    continue
                try:
                    if every is not None and time.perf_counter() - flushed > pause:  # coarser levels catch up
                        t = time.perf_counter()
                        self.cache.flush()
                        flushed = time.perf_counter()
                        pause = max(every, 9 * (flushed - t))
                    for (c, r), probs in zip(item.ids, item.probs):
                        for tc, tr, tile in blender.add(c, r, probs):
                            self.cache.write_tile(tc, tr, tile, flush=False)
                            done += 1
                            written[0] += 1
                            if on_tile:
                                on_tile(tc, tr)
                            if progress:
                                progress(Progress("infer", done, total, message=f"tile {tc},{tr}"))
                except BaseException as exc:  # handed to the calling thread
                    errors.append(exc)

        wt = threading.Thread(target=writer, name="infer-writer", daemon=True)
        wt.start()
        planned: set[tuple[int, int]] = set()
        todo: deque[tuple[int, int]] = deque()
        windows = 0
        fwd = wait = 0.0
        if progress:
            progress(Progress("infer", done, total, message="started"))
        with ThreadPoolExecutor(self.readers, thread_name_prefix="infer-read") as pool:
            ahead: deque[tuple[tuple[tuple[int, int], ...], list[Future]]] = deque()
            try:
                while not cancel.cancelled and not errors:
                    while len(ahead) <= self.prefetch:
                        ids = self._plan(planned, todo)
                        if not ids:
                            break
                        ahead.append((ids, [pool.submit(read_window, self.slide, self.grid, c, r)
                                            for c, r in ids]))
                    if not ahead:
                        break
                    ids, futures = ahead.popleft()
                    t = time.perf_counter()
                    batch = np.stack([f.result() for f in futures])
                    t1 = time.perf_counter()
                    probs = self.forward(batch)
                    fwd += time.perf_counter() - t1
                    wait += t1 - t
                    windows += len(ids)
                    results.put(_Batch(ids, probs))
            finally:
                for _, futures in ahead:
                    for f in futures:
                        f.cancel()
                results.put(_STOP)
                wt.join()
                try:
                    self.cache.flush()
                except OSError as exc:
                    errors.append(exc)
        if errors:  # a full disk or read-only cache: every tile written is whole, the rest resumes
            if isinstance(errors[0], OSError):
                raise write_error(errors[0], self.cache.root)
            raise errors[0]
        self.stats = RunStats(windows, written[0], time.perf_counter() - t0, fwd, wait)
        metrics = {"tiles_done": float(done), "tiles_total": float(total), "windows": float(windows),
                   "wall_s": self.stats.wall_s, "forward_s": fwd}
        status = "cancelled" if cancel.cancelled and not self.cache.complete else "done"
        log.info("%s: %s, %d/%d tiles, %d windows in %.1f s (network %.1f s)", self.slide.info.path,
                 status, done, total, windows, self.stats.wall_s, fwd)
        return Result(status, metrics, (str(self.cache.root),))

    def _plan(self, planned: set[tuple[int, int]], todo: deque[tuple[int, int]]
              ) -> tuple[tuple[int, int], ...]:
        """The next batch of windows: those the next best tiles still need."""
        ids: list[tuple[int, int]] = []
        while len(ids) < self.batch_size:
            if todo:
                ids.append(todo.popleft())
                continue
            tile = self.scheduler.take()
            if tile is None:
                break
            for c, r in self.grid.neighbours(*tile):
                if self.cache.tissue[r, c] and (c, r) not in planned:
                    planned.add((c, r))
                    todo.append((c, r))
        return tuple(ids)

"""One model run on one slide, Qt-free; :mod:`app.engine_bridge` runs it in a worker thread.

The run opens its own handle on the slide (the viewer's stays the viewer's), detects tissue,
opens the prediction cache under the user data folder (per slide and model version: a finished
cache is reused, one of another version emptied), loads the network (this is where torch is first
imported), and fills the cache visible region first. ``set_viewport`` and ``cancel`` may be called
from any thread at any time. At the end it measures the areas over the cache.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.state.predictions import Summary, prediction_folder, summarize
from engine.api import (CancelToken, ModelSpec, PredictionCache, Progress, SlideInference,
                        detect_tissue, make_grid, measure, open_slide, sample, tissue_tiles)

log = logging.getLogger(__name__)

Rect = tuple[float, float, float, float]
MARGIN = 32  # overlap on each side of a tile (network input = tile + 2 margins = the card's tile)


@dataclass(frozen=True)
class RunStarted:
    """Sent once the cache is open and the network loaded (crosses to the GUI thread)."""

    cache_root: str
    backend: str
    device: str
    tiles_done: int
    tiles_total: int
    note: str


@dataclass(frozen=True)
class RunFinished:
    """How the run ended: ``status`` done / cancelled / failed, or measured (an earlier run's cache,
    no network run); the summary when measured."""

    status: str
    summary: Summary | None
    message: str = ""


def device_label(runner: Any) -> str:
    """"GPU (cuda)" or "CPU", from the runner the engine picked."""
    dev = getattr(runner, "device", None)
    kind = getattr(dev, "type", "cpu")
    return "CPU" if kind == "cpu" else f"GPU ({kind})"


class InferenceRun:
    """Fill the prediction cache of ``spec`` on ``slide_path``; ``run`` blocks (call it in a thread)."""

    def __init__(self, slide_path: str, spec: ModelSpec, viewport: Rect | None = None,
                 batch_size: int = 4, measure_only: bool = False, level: int | None = None) -> None:
        self.slide_path, self.spec, self.batch_size = slide_path, spec, batch_size
        self.level = level  # the slide level to run at when the slide or the card lacks µm/px
        self.measure_only = measure_only  # an earlier run's cache: measure it, run no network
        self.cancel_token = CancelToken()
        self._lock = threading.Lock()
        self._viewport = viewport
        self._job: SlideInference | None = None

    def set_viewport(self, rect: Rect) -> None:
        """Predict the level-0 rectangle (x, y, w, h) next (the user panned or zoomed)."""
        with self._lock:
            self._viewport = rect
            if self._job is not None:
                self._job.set_viewport(*rect)

    def cancel(self) -> None:
        self.cancel_token.cancel()

    def run(self, started: Callable[[RunStarted], None], progress: Callable[[Progress], None],
            tile: Callable[[int, int], None]) -> RunFinished:
        spec = self.spec
        with open_slide(self.slide_path) as slide:
            info = slide.info
            tissue = detect_tissue(slide)
            root = prediction_folder(info.path, spec.version)
            if self.measure_only:  # the earlier run's cache as it is, whatever level it ran at
                cache = PredictionCache(root)
                if self.cancel_token.cancelled:
                    return RunFinished("cancelled", None)
                return RunFinished("measured", self._summary(cache, tissue, info))
            grid = make_grid(info, spec.mpp, level=self.level, tile=spec.tile, margin=MARGIN)
            from engine.api import open_cache  # a full disk: one line, and no half-made cache left

            cache = open_cache(root, grid, spec.version, len(spec.foreground), tissue_tiles(grid, tissue),
                               spec.card())
            if self.cancel_token.cancelled:
                return RunFinished("cancelled", None)
            from engine.api import load_model, pick_runner  # torch: only once a model is run

            model, _ = load_model(spec.checkpoint)
            # the fastest back-end; eager torch when measuring them runs out of memory
            runner = pick_runner(model, spec, spec.tile, batch_size=self.batch_size,
                                 cache_dir=sample.user_data_dir() / "predictions" / "backends")
            job = SlideInference(slide, grid, cache, runner, batch_size=self.batch_size)
            with self._lock:
                self._job = job
                if self._viewport is not None:
                    job.set_viewport(*self._viewport)
            started(RunStarted(str(root), getattr(runner, "name", type(runner).__name__),
                               device_label(runner), len(cache.done_tiles()), cache.tissue_tiles,
                               grid.note))
            result = job.run(self.cancel_token, progress, tile)
            summary = self._summary(cache, tissue, info)
        log.info("%s on %s: %s", spec.version, self.slide_path, result.status)
        return RunFinished(result.status, summary)

    def _summary(self, cache: PredictionCache, tissue: Any, info: Any) -> Summary:
        spec = self.spec
        return summarize(measure(cache, tissue, spec.foreground, info.mpp), Path(info.path).name,
                         f"{spec.name} {spec.version}", cache.complete)


def open_existing(slide_path: str, spec: ModelSpec) -> PredictionCache | None:
    """The prediction cache of ``spec`` on this slide from an earlier run, if there is one."""
    root = prediction_folder(slide_path, spec.version)
    if not (root / "cache.json").is_file():
        return None
    try:
        cache = PredictionCache(root)
    except Exception as exc:  # noqa: BLE001 - a damaged cache is simply not shown (a run rebuilds it)
        log.warning("%s: prediction cache not usable (%s)", root, exc)
        return None
    return cache if cache.version == spec.version else None

"""One model run on one slide, Qt-free; :mod:`app.engine_bridge` runs it in a worker thread.

The run opens its own handle on the slide (the viewer's stays the viewer's), loads the network in a
thread of its own (this is where torch is first imported) while it detects tissue (handed to the
overlay at once: nothing is drawn outside it), opens the prediction cache under the user data folder
(per slide and model version: a finished cache is reused, one of another version emptied) and fills
it visible region first. ``set_viewport`` and ``cancel`` may be called from any thread at any time.
At the end it measures the areas over the cache.

The first field never waits for a back-end trial: the run starts with the back-end remembered for
this model file on this machine (ONNX Runtime remembered on a machine without a GPU: its cached
graph alone, no torch import and no weights), else the engine's unmeasured runner, ONNX Runtime or
else eager torch (``pick_runner(..., measure=False)``). Only once the visible field is predicted does a
background thread measure the back-ends (the engine remembers the fastest in the user cache); the
run then goes on with the winner. One trial at a time per process, and none when the choice is
already remembered; the trial is not a daemon thread and closing the window waits for it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.state.predictions import Summary, prediction_folder, summarize
from app.state.threads import Task, every_core
from engine.api import (CancelToken, ModelSpec, PredictionCache, Progress, SlideInference,
                        detect_tissue, make_grid, measure, open_slide, run_batch, run_window, sample,
                        tissue_tiles)

log = logging.getLogger(__name__)

Rect = tuple[float, float, float, float]


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


def backends_dir() -> Path:
    """Where the engine keeps exported graphs and the remembered back-end choices."""
    return sample.user_data_dir() / "predictions" / "backends"


_trial_lock = threading.Lock()  # one back-end trial at a time in this process
_trial: Task | None = None


def trial_running() -> bool:
    """Whether a background back-end trial is measuring (benchmarks wait for it)."""
    t = _trial
    return t is not None and t.is_alive()


def wait_for_trial(timeout: float | None = None) -> bool:
    """Wait for a background back-end trial to end (the window closes, the app quits): a trial
    cut off at exit would abort the process inside ONNX Runtime; True when none runs any more."""
    t = _trial
    if t is not None:
        t.wait(timeout)
    return not trial_running()


_preload_lock = threading.Lock()
#: ((checkpoint, version, window, batch), Task): the one network loaded ahead of Run, if any
_preloaded: tuple[tuple[str, str, int, int], Task] | None = None


def _preload_key(spec: ModelSpec, window: int, batch: int) -> tuple[str, str, int, int]:
    return str(spec.checkpoint), spec.version, window, batch


def preload(spec: ModelSpec, setup: Callable[[], None] | None = None) -> Task:
    """Load ``spec``'s network and its runner in the background before Run (the pathologist looks
    at the slide meanwhile): torch's import, the weights, the ONNX graph and its session, about 2 s
    of a first run. The run takes the result instead of loading again. One model is kept; a new
    one replaces it. ``setup`` runs first on the thread (the run's priority and core: the runner's
    threads inherit them). Not a daemon: exit waits for it rather than cut ONNX Runtime off."""
    global _preloaded
    window = run_window(spec.tile)[0]
    key = _preload_key(spec, window, run_batch(window))
    with _preload_lock:
        if _preloaded is not None and _preloaded[0] == key and _preloaded[1].error is None:
            return _preloaded[1]
        task = Task(_load, spec, key[3], False, window, name="infer-preload", daemon=False,
                    setup=setup).start()
        _preloaded = (key, task)
        return task


def preloaded(spec: ModelSpec, window: int, batch: int) -> Task | None:
    """The preload of ``spec`` for these windows and batch, if one was started and has not failed."""
    with _preload_lock:
        if _preloaded is None or _preloaded[0] != _preload_key(spec, window, batch):
            return None
        task = _preloaded[1]
    return task if task.error is None else None


def forget_preload() -> None:
    """Drop the preloaded network (a back-end was measured since: the next run loads the
    remembered one)."""
    global _preloaded
    with _preload_lock:
        _preloaded = None


def quick_runner(model: Any, spec: ModelSpec, batch_size: int, window: int | None = None
                 ) -> tuple[Any, bool]:
    """A runner at once, no back-end trial: the remembered choice for this model on this machine,
    else the unmeasured one (ONNX Runtime, else eager torch); and whether a trial is still due (no
    choice remembered yet)."""
    from engine.api import pick_runner

    runner = pick_runner(model, spec, window or run_window(spec.tile)[0], batch_size=batch_size,
                         cache_dir=backends_dir(), measure=False)
    return runner, not bool(getattr(runner, "remembered", False))


def measured_runner(model: Any, spec: ModelSpec, batch_size: int, window: int | None = None) -> Any:
    """Measure the back-ends (or take the remembered choice) and remember the fastest: slow."""
    from engine.api import pick_runner

    return pick_runner(model, spec, window or run_window(spec.tile)[0], batch_size=batch_size,
                       cache_dir=backends_dir())


def _load(spec: ModelSpec, batch_size: int, trial_first: bool, window: int
          ) -> tuple[Any, Any, bool, Any]:
    """(model, runner, trial due, the preview's runner): the model is None when the runner needs
    no torch."""
    if not trial_first:
        from engine.api import no_gpu_visible, remembered_session

        if no_gpu_visible():  # ONNX Runtime remembered for this file here: no torch, no weights
            session = remembered_session(spec.checkpoint, window, batch_size, backends_dir())
            if session is not None:
                return None, session, False, field_runner(session)
    from engine.api import load_model  # torch: only once a model is run

    model, _ = load_model(spec.checkpoint)
    if trial_first:  # the behaviour before issue 14, kept for the benchmark's baseline
        runner = measured_runner(model, spec, batch_size, window)
        return model, runner, False, runner
    runner, trial_due = quick_runner(model, spec, batch_size, window)
    if not trial_due:
        remember_file(spec, model)
    return model, runner, trial_due, field_runner(runner)


def field_runner(runner: Any) -> Any:
    """The runner of the preview of the field: for ONNX Runtime, a session of the same graph on
    every core of the process, its threads asleep between calls. The run's own thread keeps off the
    GUI's core (the tiles take long), but the preview is one pass that the pathologist waits for,
    and the GUI has little to draw meanwhile: about 1.1 s on two cores instead of 2.3 s on one (a
    1920 × 1080 field). Made while the network loads, so Run does not wait for it; the run's
    runner where there is no such session or making one fails."""
    make = getattr(runner, "with_threads", None)
    if make is None:
        return runner
    with every_core() as cores:
        if cores < 2:
            return runner
        try:
            return make(cores)
        except Exception as exc:  # noqa: BLE001 - the run's runner does the preview as before
            log.warning("no separate preview session (%s): the preview runs on the run's threads", exc)
            return runner


def remember_file(spec: ModelSpec, model: Any) -> None:
    """Note which weights the model file holds, so that the next start finds its remembered
    ONNX Runtime back-end without torch (a failure is logged: only a shortcut)."""
    from engine.api import note_file

    note_file(spec.checkpoint, model, backends_dir())


class InferenceRun:
    """Fill the prediction cache of ``spec`` on ``slide_path``; ``run`` blocks (call it in a thread).

    ``trial_first``: measure the back-ends before the first window, as before (benchmarks only).
    """

    def __init__(self, slide_path: str, spec: ModelSpec, viewport: Rect | None = None,
                 batch_size: int | None = None, measure_only: bool = False, level: int | None = None,
                 trial_first: bool = False) -> None:
        # the command line's windows (larger than the card's tile, a wider margin: no seams)
        self.window, self.margin = run_window(spec.tile)
        self.batch_size = batch_size or run_batch(self.window)
        self.slide_path, self.spec = slide_path, spec
        self.level = level  # the slide level to run at when the slide or the card lacks µm/px
        self.measure_only = measure_only  # an earlier run's cache: measure it, run no network
        self.trial_first = trial_first
        self.cancel_token = CancelToken()
        self._lock = threading.Lock()
        self._viewport = viewport
        self._job: SlideInference | None = None
        self.on_tissue: Callable[[Any], None] | None = None  # the TissueMask, once detected
        self.on_backend: Callable[[str], None] | None = None  # the back-end a trial switched to
        self.on_preview: Callable[[Any], None] | None = None  # the visible field, coarse, at once
        self.preloaded = False  # whether the network was loaded before Run (benchmarks)
        self.timeline: dict[str, float] = {}  # seconds from the start of run() (benchmarks)

    def set_viewport(self, rect: Rect) -> None:
        """Predict the level-0 rectangle (x, y, w, h) next (the user panned or zoomed)."""
        with self._lock:
            self._viewport = rect
            if self._job is not None:
                self._job.set_viewport(*rect)

    def cancel(self) -> None:
        self.cancel_token.cancel()

    def _mark(self, what: str, t0: float) -> None:
        self.timeline.setdefault(what, round(time.perf_counter() - t0, 3))

    def run(self, started: Callable[[RunStarted], None], progress: Callable[[Progress], None],
            tile: Callable[[int, int], None]) -> RunFinished:
        spec, t0 = self.spec, time.perf_counter()
        loading: Task | None = None
        if not self.measure_only and not self.trial_first and self.batch_size == run_batch(self.window):
            # the network loaded ahead of Run (preload), else loaded now, and kept for the next run
            ahead = preloaded(spec, self.window, self.batch_size)
            self.preloaded = ahead is not None and ahead.done
            loading = preload(spec)
        elif not self.measure_only:
            loading = Task(_load, spec, self.batch_size, self.trial_first, self.window,
                           name="infer-load")
        try:
            with open_slide(self.slide_path) as slide:
                if loading is not None and not loading.started:
                    loading.start()  # beside tissue detection
                return self._run(slide, loading, t0, started, progress, tile)
        finally:
            if loading is not None:
                loading.wait()  # a cancelled run still waits for its loader (torch's import)

    def _run(self, slide: Any, loading: Task | None, t0: float,
             started: Callable[[RunStarted], None], progress: Callable[[Progress], None],
             tile: Callable[[int, int], None]) -> RunFinished:
        spec = self.spec
        info = slide.info
        tissue = detect_tissue(slide)
        self._mark("tissue", t0)
        if self.on_tissue is not None:
            self.on_tissue(tissue)
        root = prediction_folder(info.path, spec.version)
        if loading is None:  # the earlier run's cache as it is, whatever level it ran at
            cache = PredictionCache(root)
            if self.cancel_token.cancelled:
                return RunFinished("cancelled", None)
            return RunFinished("measured", self._summary(cache, tissue, info))
        grid = make_grid(info, spec.mpp, level=self.level, tile=self.window, margin=self.margin)
        from engine.api import open_cache  # a full disk: one line, and no half-made cache left

        cache = open_cache(root, grid, spec.version, len(spec.foreground), tissue_tiles(grid, tissue),
                           spec.card())
        if self.cancel_token.cancelled:
            return RunFinished("cancelled", None)
        model, runner, trial_due, field = loading.result()
        self._mark("model", t0)
        job = SlideInference(slide, grid, cache, runner, batch_size=self.batch_size)
        with self._lock:
            self._job = job
            if self._viewport is not None:
                job.set_viewport(*self._viewport)
        started(RunStarted(str(root), getattr(runner, "name", type(runner).__name__),
                           device_label(runner), len(cache.done_tiles()), cache.tissue_tiles,
                           grid.note))
        self._preview(slide, grid, job, field, t0)
        on_tile = tile
        if trial_due:
            on_tile = self._trial_after_visible(job, model, tile, t0)
        result = job.run(self.cancel_token, progress, on_tile)
        summary = self._summary(cache, tissue, info)
        log.info("%s on %s: %s", spec.version, self.slide_path, result.status)
        return RunFinished(result.status, summary)

    def _preview(self, slide: Any, grid: Any, job: SlideInference, runner: Any, t0: float) -> None:
        """A coarse prediction of the visible field in one forward pass (``on_preview``), before
        the run's final tiles, when some of the field's tissue is not predicted yet. Optional:
        a failure is logged and the run goes on."""
        with self._lock:
            rect = self._viewport
        if self.on_preview is None or rect is None or self.cancel_token.cancelled or \
                self._visible_done(job):
            return
        from engine.api import predict_preview

        w, h = slide.info.dimensions
        x0, y0 = max(0.0, rect[0]), max(0.0, rect[1])
        x1, y1 = min(float(w), rect[0] + rect[2]), min(float(h), rect[1] + rect[3])
        if x1 <= x0 or y1 <= y0:
            return
        try:
            preview = predict_preview(slide, grid.downsample, runner, (x0, y0, x1 - x0, y1 - y0))
        except Exception:  # noqa: BLE001 - the final tiles come anyway
            log.exception("the preview of the visible field failed")
            return
        self._mark("preview", t0)
        if not self.cancel_token.cancelled:
            self.on_preview(preview)

    def _trial_after_visible(self, job: SlideInference, model: Any, tile: Callable[[int, int], None],
                             t0: float) -> Callable[[int, int], None]:
        """``tile``, which also starts the back-end trial once the visible field is predicted."""
        due = [True]

        def on_tile(col: int, row: int) -> None:
            tile(col, row)
            if due[0] and self._visible_done(job):
                due[0] = False
                self._mark("visible", t0)
                self._start_trial(job, model)

        if self._visible_done(job):  # nothing to wait for (no viewport, or the field was done)
            due[0] = False
            self._start_trial(job, model)
        return on_tile

    @staticmethod
    def _visible_done(job: SlideInference) -> bool:
        want = job.scheduler.visible_tiles()
        if not want:
            return True
        done = job.cache.done_tiles()
        return all(not job.cache.tissue[r, c] or (c, r) in done for c, r in want)

    def _start_trial(self, job: SlideInference, model: Any) -> None:
        """Measure the back-ends in a background thread (the engine remembers the fastest) and go
        on with the winner; skipped while another trial runs."""
        global _trial
        with _trial_lock:
            if trial_running():
                return
            spec, batch, window = self.spec, self.batch_size, self.window

            def measure() -> None:
                try:
                    runner = measured_runner(model, spec, batch, window)
                except Exception:  # noqa: BLE001 - the run goes on with what it has
                    log.exception("measuring the inference back-ends failed")
                    return
                forget_preload()  # the next run loads the measured back-end
                remember_file(spec, model)
                name = getattr(runner, "name", type(runner).__name__)
                if name != getattr(job.runner, "name", None) and not self.cancel_token.cancelled:
                    job.runner = runner  # taken at the next batch
                    log.info("inference goes on with %s (measured, remembered)", name)
                    if self.on_backend is not None:
                        self.on_backend(name)

            # not a daemon: the interpreter waits for it at exit (a few seconds) instead of
            # tearing ONNX Runtime down under it (std::terminate, the process aborts)
            _trial = Task(measure, name="infer-backend-trial", daemon=False).start()

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

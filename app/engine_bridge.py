"""The one place where engine events become Qt signals (queued to the GUI thread).

:class:`InferenceBridge` runs an :class:`~app.state.inference_run.InferenceRun` on the app's
:class:`~app.workers.Worker` (at a lower CPU priority and kept off one core; the threads the engine
starts, tile readers, writer and the network's, inherit both, so the GUI thread always has a core
and the forward passes release the GIL: measured with ``cocopath --bench-predictions``). Its
callbacks fire in worker threads; they only emit signals of this QObject, which lives in the GUI
thread, so Qt queues them: slots always run in the GUI thread. One run at a time; once the window
closed (:meth:`InferenceBridge.shut_down`) nothing is emitted any more.
"""

from __future__ import annotations

import logging

from PySide6.QtCore import QObject, Signal

from app.state.inference_run import InferenceRun, Rect, RunFinished, RunStarted
from app.workers import Job, Worker, lower_priority, spare_a_core
from engine.api import CocoPathError, ModelSpec, Progress

log = logging.getLogger(__name__)


def _run_thread_setup() -> None:
    lower_priority()  # before the engine starts its threads: they inherit both (Linux)
    spare_a_core()


class InferenceBridge(QObject):
    """Starts, re-prioritises and cancels inference; reports it through queued signals."""

    started = Signal(object)  # RunStarted
    progress = Signal(object)  # Progress (tiles done / tiles of tissue)
    tile_done = Signal(int, int)  # (col, row) of a final level-0 cache tile
    finished = Signal(object)  # RunFinished
    tissue = Signal(object)  # the slide's TissueMask, as soon as the run has found it
    backend = Signal(str)  # the back-end a background trial switched the run to
    preview = Signal(object)  # a coarse prediction of the visible field (engine Preview), at once

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._run: InferenceRun | None = None
        self.worker = Worker("infer-job", self, setup=_run_thread_setup)
        self.worker.finished.connect(self.finished)  # the job returns its RunFinished

    @property
    def running(self) -> bool:
        return self.worker.running

    def start(self, slide_path: str, spec: ModelSpec, viewport: Rect | None = None,
              measure_only: bool = False, level: int | None = None, trial_first: bool = False
              ) -> bool:
        """Run ``spec`` on the slide in a worker thread (or only measure an earlier run's cache);
        ``level``: the slide level to run at when the slide or the card lacks µm/px;
        ``trial_first``: the back-end trial before the first window (benchmark baseline). False
        when a run is still going."""
        if self.running:
            return False
        run = InferenceRun(slide_path, spec, viewport, measure_only=measure_only, level=level,
                           trial_first=trial_first)
        run.on_tissue = self.worker.emitter(self.tissue)
        run.on_backend = self.worker.emitter(self.backend)
        run.on_preview = self.worker.emitter(self.preview)
        if not self.worker.start(lambda job: self._work(run, job)):
            return False
        self._run = run
        return True

    def preload(self, spec: ModelSpec) -> None:
        """Load ``spec``'s network in the background at the run's priority and core, so that Run
        starts with it (see :func:`app.state.inference_run.preload`)."""
        from app.state.inference_run import preload

        preload(spec, setup=_run_thread_setup)

    def set_viewport(self, rect: Rect) -> None:
        run = self._run
        if run is not None and self.running:
            run.set_viewport(rect)

    @property
    def run_preloaded(self) -> bool:
        """Whether the current (or last) run found its network loaded before Run."""
        return bool(self._run is not None and self._run.preloaded)

    @property
    def run_timeline(self) -> dict[str, float]:
        """Seconds from the start of the current (or last) run to its tissue, model, visible field."""
        return dict(self._run.timeline) if self._run is not None else {}

    def cancel(self) -> None:
        if self._run is not None:
            self._run.cancel()
        self.worker.cancel()

    def shut_down(self, timeout: float = 30) -> bool:
        """The window closes: cancel the run, wait up to ``timeout`` s for it, and from then on let
        no worker emit (a run stuck in a slide read may end later, silently); True when it ended."""
        if self._run is not None:
            self._run.cancel()
        return self.worker.shutdown(timeout)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the worker ends (closing the window); True when it did."""
        return self.worker.wait(timeout)

    def _work(self, run: InferenceRun, job: Job) -> RunFinished:
        emit = self.worker.emitter
        try:
            return run.run(emit(self.started), emit(self.progress), emit(self.tile_done))
        except CocoPathError as exc:
            return RunFinished("failed", None, str(exc))
        except Exception as exc:  # noqa: BLE001 - shown as one sentence, logged in full
            log.exception("inference failed")
            return RunFinished("failed", None, failure_message(exc))


def failure_message(exc: BaseException) -> str:
    """One line for an error a run did not name itself: a full disk or read-only folder ("FILE: no
    space left on device"), running out of memory, else the error's type and text."""
    from engine.api import one_line

    message = one_line(exc)
    if message is not None:
        return f"inference failed: {message}"
    text = " ".join(str(exc).split())  # one line, whatever the error's text holds
    return f"inference failed ({type(exc).__name__}: {text})" if text else f"inference failed ({type(exc).__name__})"


__all__ = ["InferenceBridge", "Progress", "RunFinished", "RunStarted"]

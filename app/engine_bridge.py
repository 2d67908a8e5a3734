"""The one place where engine events become Qt signals (queued to the GUI thread).

:class:`InferenceBridge` runs an :class:`~app.state.inference_run.InferenceRun` in a worker thread
(a plain Python thread, at a lower CPU priority and kept off one core; the threads the engine
starts, tile readers, writer and the network's, inherit both, so the GUI thread always has a core
and the forward passes release the GIL: measured with ``cocopath --bench-predictions``). Its
callbacks fire in worker threads; they only emit signals of this QObject, which lives in the GUI
thread, so Qt queues them: slots always run in the GUI thread. One run at a time.
"""

from __future__ import annotations

import logging
import os
import threading

from PySide6.QtCore import QObject, Signal

from app.state.inference_run import InferenceRun, Rect, RunFinished, RunStarted
from engine.api import CocoPathError, ModelSpec, Progress

log = logging.getLogger(__name__)


class InferenceBridge(QObject):
    """Starts, re-prioritises and cancels inference; reports it through queued signals."""

    started = Signal(object)  # RunStarted
    progress = Signal(object)  # Progress (tiles done / tiles of tissue)
    tile_done = Signal(int, int)  # (col, row) of a final level-0 cache tile
    finished = Signal(object)  # RunFinished
    tissue = Signal(object)  # the slide's TissueMask, as soon as the run has found it
    backend = Signal(str)  # the back-end a background trial switched the run to

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._run: InferenceRun | None = None
        self._thread: threading.Thread | None = None
        self._alive = True  # False once the window closed: worker threads emit nothing any more
        self._emit_lock = threading.Lock()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

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
        run.on_tissue = self._safe(self.tissue)
        run.on_backend = self._safe(self.backend)
        self._run = run
        self._thread = threading.Thread(target=self._work, args=(run,), name="infer-job",
                                        daemon=True)
        self._thread.start()
        return True

    def set_viewport(self, rect: Rect) -> None:
        run = self._run
        if run is not None and self.running:
            run.set_viewport(rect)

    @property
    def run_timeline(self) -> dict[str, float]:
        """Seconds from the start of the current (or last) run to its tissue, model, visible field."""
        return dict(self._run.timeline) if self._run is not None else {}

    def cancel(self) -> None:
        if self._run is not None:
            self._run.cancel()

    def _safe(self, signal):
        """``signal.emit`` for worker threads, a no-op once :meth:`shut_down` ran: a run (or a
        back-end trial) that outlives the window must not emit on a deleted QObject (a crash)."""
        def emit(*args) -> None:
            with self._emit_lock:
                if self._alive:
                    signal.emit(*args)
        return emit

    def shut_down(self, timeout: float = 30) -> bool:
        """The window closes: cancel the run, wait up to ``timeout`` s for it, and from then on let
        no worker emit (a run stuck in a slide read may end later, silently); True when it ended."""
        self.cancel()
        ended = self.wait(timeout)
        with self._emit_lock:
            self._alive = False
        return ended

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the worker ends (closing the window); True when it did."""
        t = self._thread
        if t is not None:
            t.join(timeout)
            return not t.is_alive()
        return True

    def _work(self, run: InferenceRun) -> None:
        _lower_priority()  # before the engine starts its threads: they inherit both (Linux)
        _spare_a_core()
        try:
            end = run.run(self._safe(self.started), self._safe(self.progress), self._safe(self.tile_done))
        except CocoPathError as exc:
            end = RunFinished("failed", None, str(exc))
        except Exception as exc:  # noqa: BLE001 - shown as one sentence, logged in full
            log.exception("inference failed")
            end = RunFinished("failed", None, failure_message(exc))
        self._safe(self.finished)(end)


def failure_message(exc: BaseException) -> str:
    """One line for an error a run did not name itself: a full disk or read-only folder ("FILE: no
    space left on device"), running out of memory, else the error's type and text."""
    from engine.api import one_line

    message = one_line(exc)
    if message is not None:
        return f"inference failed: {message}"
    text = " ".join(str(exc).split())  # one line, whatever the error's text holds
    return f"inference failed ({type(exc).__name__}: {text})" if text else f"inference failed ({type(exc).__name__})"


def _spare_a_core() -> None:
    """Keep the run (and the threads it starts, which inherit this) off one core, so the GUI thread
    always has a core of its own; the engine sizes its thread pools from this affinity."""
    try:
        cores = sorted(os.sched_getaffinity(0))
        if len(cores) > 1:
            os.sched_setaffinity(threading.get_native_id(), cores[1:])
    except (AttributeError, OSError):  # not Linux, or not allowed
        pass


def _lower_priority(nice: int = 10) -> None:
    """The run (and the reader, writer and ONNX Runtime threads it starts) yields the CPU to the GUI
    thread when both want it: on two cores, pan frames kept within budget while a model runs."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
    except (AttributeError, OSError):  # not Linux, or not allowed: the default priority will do
        pass


__all__ = ["InferenceBridge", "Progress", "RunFinished", "RunStarted"]

"""The app's one way to run work off the GUI thread: a :class:`Worker` with typed signals.

After labelme's download worker: a job is a function of a :class:`Job` (cooperative cancel, a
progress callback) run on a :class:`~app.state.threads.Task` thread; the worker, a QObject of the
GUI thread, reports through its signals, so connected slots run in the GUI thread (queued):

* ``started()`` when the job begins, ``progress(done, total)`` as often as the job says;
* then exactly one of ``finished(result)`` (the job returned, also after a cancel: the job says
  what a cancelled result is), ``failed(message)`` (it raised: one sentence, never a traceback),
  ``cancelled()`` (it raised after :meth:`Worker.cancel`), followed by ``ended()``. These are
  emitted in the GUI thread, and :attr:`Worker.running` is False from then on.

One job at a time: :meth:`Worker.start` refuses while one runs; :meth:`Worker.submit` keeps the
newest request instead, cancels the running job and drops its result (stale), then starts the
newest. :meth:`Worker.shutdown` (the window closes) cancels, waits, and from then on lets nothing be
emitted: a job that outlives the window must not emit on a deleted QObject (a crash). Other
signals a job sends (an inference run's tiles) go through :meth:`Worker.emitter`, under the same
rule. The priority hints for long runs (:func:`lower_priority`, :func:`spare_a_core`) are passed
as ``setup``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QObject, Signal

from app.state.threads import Task, lower_priority, spare_a_core
from engine.api import CocoPathError

log = logging.getLogger(__name__)

__all__ = ["Job", "Worker", "lower_priority", "spare_a_core"]


class Job:
    """What a job function is given: ``cancelled`` (also as the callable :meth:`is_cancelled`, for
    engine functions that poll one) and :meth:`progress`."""

    def __init__(self, progress: Callable[[int, int], None]) -> None:
        self._cancel = threading.Event()
        self._progress = progress

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def is_cancelled(self) -> bool:
        return self._cancel.is_set()

    def cancel(self) -> None:
        self._cancel.set()

    def progress(self, done: int, total: int) -> None:
        self._progress(int(done), int(total))


class _Gate:
    """Open while the worker may emit; shared with the job threads (it outlives the QObject)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.open = True

    def close(self) -> None:
        with self.lock:
            self.open = False


def failure_sentence(exc: BaseException) -> str:
    """One line for an error a job raised: the engine's own sentence, else its type and text."""
    if isinstance(exc, CocoPathError):
        return str(exc)
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class Worker(QObject):
    """Runs jobs one at a time on threads named ``name``; see the module docstring."""

    started = Signal()
    progress = Signal('qint64', 'qint64')  # done, total (bytes may pass 2**31)
    finished = Signal(object)  # what the job returned
    failed = Signal(str)  # one sentence
    cancelled = Signal()
    ended = Signal()  # after any of the three above
    _end = Signal(int, str, object)  # (job number, "finished" / "failed" / "cancelled", payload)

    def __init__(self, name: str, parent: QObject | None = None, *, daemon: bool = True,
                 setup: Callable[[], None] | None = None,
                 describe: Callable[[BaseException], str] = failure_sentence) -> None:
        super().__init__(parent)
        self.name = name
        self.daemon, self.setup, self.describe = daemon, setup, describe
        self._gate = _Gate()
        gate = self._gate
        self.destroyed.connect(lambda *_: gate.close())  # a closure: no call into a dying object
        self._task: Task | None = None
        self._job: Job | None = None
        self._number = 0  # of the current job; an end of an older one is stale
        self._busy = False
        self._next: Callable[[Job], Any] | None = None
        self._end.connect(self._deliver)

    # -- asking ----------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """A job was started and its end has not been delivered yet."""
        return self._busy

    def start(self, fn: Callable[[Job], Any]) -> bool:
        """Run ``fn(job)`` on a new thread; False (nothing started) while a job runs or after
        :meth:`shutdown`."""
        if self._busy or not self._gate.open:
            return False
        self._number += 1
        number = self._number
        job = Job(self.emitter(self.progress))
        self._job, self._busy = job, True
        self._task = Task(self._main, fn, job, number, name=self.name, daemon=self.daemon,
                          setup=self.setup).start()
        return True

    def submit(self, fn: Callable[[Job], Any]) -> None:
        """Run ``fn(job)`` as soon as possible: now when idle, else once the running job (cancelled
        now, its result dropped) has ended. Only the newest waiting request is kept."""
        if not self.start(fn) and self._gate.open:
            self._next = fn
            self.cancel()

    def cancel(self) -> None:
        """Ask the running job to stop (it polls ``job.cancelled``)."""
        if self._job is not None:
            self._job.cancel()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the current job's thread ended; True when it did (or there is none)."""
        task = self._task
        return task.wait(timeout) if task is not None else True

    def shutdown(self, timeout: float = 30) -> bool:
        """Cancel, wait up to ``timeout`` s, and emit nothing from then on (a job stuck in a read
        may end later, silently); True when the job ended."""
        self._next = None
        self.cancel()
        ended = self.wait(timeout)
        self._gate.close()
        if ended:
            self._busy = False
        return ended

    def emitter(self, signal: Any) -> Callable[..., None]:
        """``signal.emit`` for job threads: a no-op once :meth:`shutdown` ran or the worker is
        gone. ``signal`` belongs to this worker or to an object that lives as long as it."""
        gate = self._gate

        def emit(*args: Any) -> None:
            with gate.lock:
                if gate.open:
                    signal.emit(*args)
        return emit

    # -- the job thread --------------------------------------------------------------------------

    def _main(self, fn: Callable[[Job], Any], job: Job, number: int) -> None:
        end = self.emitter(self._end)
        self.emitter(self.started)()
        try:
            value = fn(job)
        except BaseException as exc:  # noqa: BLE001 - said as one sentence, logged in full
            if job.cancelled:
                end(number, "cancelled", None)
            else:
                log.warning("%s failed", self.name, exc_info=not isinstance(exc, CocoPathError))
                end(number, "failed", self.describe(exc))
            return
        end(number, "finished", value)

    # -- back in the GUI thread ------------------------------------------------------------------

    def _deliver(self, number: int, how: str, payload: object) -> None:
        if number != self._number or not self._gate.open:
            return  # queued before shutdown() (the window is closing): not reported
        self._busy = False
        follow, self._next = self._next, None
        if follow is None:  # a superseded job's end is stale: not reported
            if how == "finished":
                self.finished.emit(payload)
            elif how == "failed":
                self.failed.emit(str(payload))
            else:
                self.cancelled.emit()
            self.ended.emit()
        else:
            self.start(follow)

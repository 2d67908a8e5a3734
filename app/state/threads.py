"""Background work without Qt: :class:`Task`, one function on a thread of its own, and the
scheduling hints a long run gives its thread (:func:`lower_priority`, :func:`spare_a_core`, and
:func:`every_core` for threads made for a short burst).

Every thread the app starts outside the viewer is a :class:`Task`: the Qt side wraps it in
:class:`app.workers.Worker` (typed signals, cancel, a shutdown after which nothing is emitted);
Qt-free code (:mod:`app.state.inference_run`, the benchmarks' probes) uses it as it is. A task
keeps what its function returned or raised, can be waited for, and is a daemon thread unless told
otherwise (a thread that must finish before the interpreter tears libraries down under it, such
as ONNX Runtime's back-end trial, is not).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

_PENDING = object()


class Task(Generic[T]):
    """``fn(*args)`` on its own thread named ``name``, started by :meth:`start`.

    ``daemon``: the interpreter does not wait for it at exit; ``setup``: called first on the new
    thread (e.g. :func:`lower_priority`: threads the function starts inherit it).
    """

    def __init__(self, fn: Callable[..., T], *args: Any, name: str, daemon: bool = True,
                 setup: Callable[[], None] | None = None) -> None:
        self.name = name
        self._fn, self._args, self._setup = fn, args, setup
        self._value: Any = _PENDING
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name=name, daemon=daemon)

    def start(self) -> Task[T]:
        self._thread.start()
        return self

    def _main(self) -> None:
        try:
            if self._setup is not None:
                self._setup()
            self._value = self._fn(*self._args)
        except BaseException as exc:  # noqa: BLE001 - kept for result(), said by the caller
            self._error = exc

    @property
    def started(self) -> bool:
        return self._thread.ident is not None

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def done(self) -> bool:
        """The function returned or raised."""
        return self.started and not self._thread.is_alive()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the function ended (at most ``timeout`` s); True when it did."""
        if not self.started:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def result(self, timeout: float | None = None) -> T:
        """What the function returned (waiting for it); what it raised is raised here."""
        if not self.wait(timeout):
            raise TimeoutError(f"{self.name} still runs after {timeout} s")
        if self._error is not None:
            raise self._error
        if self._value is _PENDING:
            raise RuntimeError(f"{self.name} was never started")
        return self._value

    @property
    def error(self) -> BaseException | None:
        """What the function raised, once it ended (None while it runs or when it returned)."""
        return self._error


def spare_a_core() -> None:
    """Keep the calling thread (and the threads it starts, which inherit this) off one core, so the
    GUI thread always has a core of its own; the engine sizes its thread pools from this affinity."""
    try:
        cores = sorted(os.sched_getaffinity(0))
        if len(cores) > 1:
            os.sched_setaffinity(threading.get_native_id(), cores[1:])
    except (AttributeError, OSError):  # not Linux, or not allowed
        pass


def process_cores() -> set[int]:
    """The cores the process may use (its main thread's affinity, which :func:`spare_a_core` leaves
    alone); empty where affinity is not known (not Linux)."""
    try:
        return set(os.sched_getaffinity(os.getpid()))
    except (AttributeError, OSError):
        return set()


@contextlib.contextmanager
def every_core() -> Iterator[int]:
    """Within the block, the calling thread may run on every core of the process; threads it starts
    there keep that (a pool for a short burst that the person is waiting for, such as the preview
    of the field). Yields the number of cores; the thread's own affinity is restored after."""
    tid = threading.get_native_id()
    cores = process_cores()
    try:
        before = os.sched_getaffinity(tid)
    except (AttributeError, OSError):
        yield os.cpu_count() or 1
        return
    try:
        if cores and cores != before:
            os.sched_setaffinity(tid, cores)
        yield len(cores) or len(before)
    finally:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(tid, before)


def lower_priority(nice: int = 10) -> None:
    """The calling thread (and the threads it starts) yields the CPU to the GUI thread when both
    want it: on two cores, pan frames kept within budget while a model runs. ``nice`` is added to
    the thread's own niceness (the app's, when the app was started with ``nice``), up to 19: never
    a higher priority than the GUI's."""
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + nice))
    except (AttributeError, OSError):  # not Linux, or not allowed: the default priority will do
        pass

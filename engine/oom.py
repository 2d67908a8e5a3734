"""Running out of memory: what counts, and batched work that halves its batch until it fits.

GPU (``torch.OutOfMemoryError``) and CPU (``MemoryError``, torch's "DefaultCPUAllocator: can't
allocate memory", "not enough memory", ONNX Runtime's "Failed to allocate memory") alike:
:func:`is_oom` decides. A :class:`Backoff` keeps the batch size that fits: :meth:`Backoff.call`
retries ``fn(size)`` with half the size, :meth:`Backoff.chunks` runs ``fn`` over a sequence in
chunks of that size; below one it raises :class:`OutOfMemory` with the caller's one-line message.
The size stays halved for the next calls (the next batch would not fit either). No torch import.
"""

from __future__ import annotations

import gc
import logging
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from engine.errors import CocoPathError

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

#: What an out-of-memory error says (lower case), whichever library raised it.
#: ("could not create a primitive": oneDNN's convolution when its scratch memory cannot be had,
#: measured under an address-space limit on the CPU.)
OOM_MARKERS = ("out of memory", "can't allocate memory", "cannot allocate memory", "not enough memory",
               "failed to allocate memory", "bad_alloc", "bad allocation", "could not create a primitive")


class OutOfMemory(CocoPathError):
    """Out of memory even with a batch of one: the message says what ran and what to do."""


def is_oom(exc: BaseException) -> bool:
    """Whether ``exc`` is running out of (GPU or CPU) memory, the one error a smaller batch can fix."""
    if isinstance(exc, MemoryError):
        return True
    torch = sys.modules.get("torch")
    oom_type = getattr(torch, "OutOfMemoryError", None) if torch is not None else None
    if oom_type is not None and isinstance(exc, oom_type):
        return True
    if isinstance(exc, RuntimeError) or type(exc).__module__.startswith("onnxruntime"):
        text = str(exc).lower()
        return any(m in text for m in OOM_MARKERS)
    return False


def free_memory() -> None:
    """Give back what a failed attempt held: garbage, and torch's cached GPU blocks.

    The cycle collector runs only in the main thread: in a GUI host a collection in a worker thread
    destroys the host's unreachable widgets there (a PySide QMenu deadlocked the test suite)."""
    if threading.current_thread() is threading.main_thread():
        gc.collect()
    _malloc_trim()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def _malloc_trim() -> None:
    """Hand the C heap's free memory back to the system (glibc): after a failed large allocation
    the heap keeps what the attempt had reserved, and the next, smaller attempt would not fit."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (musl, …): nothing to trim
        pass


class Backoff:
    """A batch size that halves on out-of-memory, down to one (see the module docstring).

    ``message``: the one line of the ``error`` (an :class:`OutOfMemory`) raised when a batch of one
    does not fit; ``on_backoff(size)``: told each new size; ``label``: names the work in the log.
    """

    def __init__(self, batch: int, message: str, on_backoff: Callable[[int], None] | None = None,
                 label: str = "batch", error: type[OutOfMemory] = OutOfMemory) -> None:
        self.size = max(1, int(batch))
        self.message, self.on_backoff, self.label, self.error = message, on_backoff, label, error
        self.backoffs: list[int] = []  # each size halved to

    def call(self, fn: Callable[[int], R]) -> R:
        """``fn(size)``, retried with half the size while it runs out of memory."""
        while True:
            try:
                return fn(self.size)
            except Exception as exc:  # noqa: BLE001 - only out-of-memory is handled, the rest re-raised
                if not is_oom(exc):
                    raise
            # outside the handler: the failed attempt's frames (and their tensors) are released
            self._halve()

    def chunks(self, fn: Callable[[Sequence[T]], R], items: Sequence[T],
               before: Callable[[], None] | None = None) -> Iterator[tuple[Sequence[T], R]]:
        """(chunk, ``fn(chunk)``) over ``items`` in order, chunks of the size that fits;
        ``before()`` runs before each chunk (a cancel check)."""
        i = 0
        while i < len(items):
            if before is not None:
                before()
            out = self.call(lambda size: fn(items[i:i + size]))
            chunk = items[i:i + self.size]
            yield chunk, out
            i += len(chunk)

    def _halve(self) -> None:
        free_memory()
        if self.size <= 1:
            raise self.error(self.message)
        self.size //= 2
        self.backoffs.append(self.size)
        log.warning("%s: out of memory: batch halved to %d", self.label, self.size)
        if self.on_backoff is not None:
            self.on_backoff(self.size)


def run_halving(fn: Callable[[Sequence[T]], R], items: Sequence[T], batch: int, message: str,
                **kw: Any) -> list[R]:
    """``fn`` over ``items`` in chunks of ``batch``, halved on out-of-memory: the results in order."""
    return [out for _, out in Backoff(batch, message, **kw).chunks(fn, items)]


__all__ = ["Backoff", "OOM_MARKERS", "OutOfMemory", "free_memory", "is_oom", "run_halving"]

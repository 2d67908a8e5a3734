"""An advisory lock on a file, for long work that several processes share through one folder.

The kernel holds it for the process and drops it when the process ends, however it ends (killed,
out of memory, the machine rebooted), so a lock is never left stale and needs no clean-up. The lock
file itself stays (removing it would let two processes lock two different files of one name).
No torch and no Qt.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]
    import msvcrt


def _lock(fd: int, wait: bool) -> bool:
    while True:
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            else:  # LK_LOCK gives up after 10 s: try again while waiting
                msvcrt.locking(fd, msvcrt.LK_LOCK if wait else msvcrt.LK_NBLCK, 1)
        except OSError:
            if wait and fcntl is None:
                continue
            return False
        return True


@contextmanager
def try_lock(path: Path, wait: bool = False) -> Iterator[bool]:
    """Hold an exclusive lock on ``path`` (made if missing) for the block.

    Yields True while held. When another process (or another open of the file in this one) holds
    it, yields False at once, holding nothing, or with ``wait`` blocks until it is free.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        held = _lock(fd, wait)
        if held:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        yield held
    finally:
        os.close(fd)  # closing drops the lock

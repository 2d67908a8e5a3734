"""Disk full, read-only folders, no permission: the operating system's errors as one line.

Where the engine writes, :func:`writing` turns an ``OSError`` into a :class:`WriteError` naming the
file or folder it was writing ("cannot write out/a.mask.tif: no space left on device"); the command
line and the app fall back on :func:`one_line` for an error that escapes anyway (an ``OSError`` of
the kinds a user can meet, and running out of memory). No torch and no Qt.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from engine.errors import CocoPathError

#: The operating-system errors a user can meet (and fix): shown as one line, never a traceback.
USER_ERRNOS = frozenset(getattr(errno, n) for n in (
    "ENOSPC", "EDQUOT", "EROFS", "EACCES", "EPERM", "EISDIR", "ENOTDIR", "EFBIG", "EIO", "ENOENT",
    "EEXIST", "ENAMETOOLONG", "EMFILE", "ENFILE", "ETXTBSY") if hasattr(errno, n))


class WriteError(CocoPathError):
    """A file or folder cannot be written: the disk is full, the folder read-only, no permission,
    or a folder (or a file) in the way."""


def reason(exc: OSError) -> str:
    """What went wrong, in lower case: "no space left on device", "read-only file system", …"""
    text = exc.strerror or (errno.errorcode.get(exc.errno, "") if exc.errno else "") or str(exc) \
        or type(exc).__name__
    return text[:1].lower() + text[1:]


def write_error(exc: OSError, path: str | Path) -> WriteError:
    """``exc`` met while writing ``path`` as one line: "cannot write PATH: no space left on device"."""
    return WriteError(f"cannot write {path}: {reason(exc)}")


@contextmanager
def writing(path: str | Path) -> Iterator[None]:
    """Turn an ``OSError`` raised inside into a :class:`WriteError` naming ``path`` (one that is
    already a :class:`~engine.errors.CocoPathError` keeps its own message)."""
    try:
        yield
    except OSError as exc:
        if isinstance(exc, CocoPathError):
            raise
        raise write_error(exc, path) from None


def one_line(exc: BaseException) -> str | None:
    """A user's one-line message for an ``OSError`` of the kinds in :data:`USER_ERRNOS`
    ("FILE: no space left on device") or for running out of memory (a
    :class:`~engine.errors.CocoPathError`: its own message); None for anything else."""
    from engine.oom import is_oom

    if isinstance(exc, CocoPathError):
        return str(exc)
    if isinstance(exc, OSError) and exc.errno in USER_ERRNOS:
        name = exc.filename if exc.filename is not None else exc.filename2
        return f"{name}: {reason(exc)}" if name is not None else reason(exc)
    if is_oom(exc):
        return "out of memory: close other programs, or use a smaller batch or tile"
    if isinstance(exc, RuntimeError) and "can't start new thread" in str(exc):
        return "cannot start a thread: the system is out of memory or threads; close other programs"
    return None


__all__ = ["USER_ERRNOS", "WriteError", "one_line", "reason", "write_error", "writing"]

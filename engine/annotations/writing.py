"""What every writer shares: files appear whole or not at all, and failures are one sentence."""

from __future__ import annotations

import errno
from collections.abc import Callable
from pathlib import Path

from engine.annotations.errors import AnnotationError
from engine.atomic import atomic_replace


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``path`` then move it over ``path``. A
    failure (disk full, read-only folder, ``path`` a folder) leaves ``path`` untouched, removes
    the temporary file and raises one :class:`AnnotationError` naming ``path``."""
    path = Path(path)
    if path.is_dir():
        raise AnnotationError(f"{path}: is a folder; give the name of the file to write")
    try:
        atomic_replace(path, write)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            why = "the disk is full"
        elif exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            why = "the folder is read-only or not yours"
        else:
            why = exc.strerror or str(exc)
        raise AnnotationError(f"{path}: cannot be written ({why}); nothing was written") from None


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda tmp: tmp.write_bytes(data))

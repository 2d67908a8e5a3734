"""Checks on an input file before it is opened: a FIFO would block ``open`` forever, a device or a
socket is never a slide or an annotation file, and a file far larger than its kind ever is would be
read whole into memory. No torch and no Qt."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from engine.errors import FileProblem

GIB = 1024**3

_KINDS = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def human_size(n: int) -> str:
    """``n`` bytes as a short size: 512 bytes, 3.4 MiB, 8.0 GiB."""
    if n < 1024:
        return f"{n} bytes"
    for unit, scale in (("KiB", 1024), ("MiB", 1024**2), ("GiB", GIB), ("TiB", 1024**4)):
        if n < scale * 1024 or unit == "TiB":
            value = n / scale
            return f"{value:.0f} {unit}" if value == int(value) else f"{value:.1f} {unit}"
    raise AssertionError("unreachable")


def regular_file(path: Path, what: str, max_bytes: int | None = None) -> Path:
    """``path`` if it names a regular file (symlinks followed) no larger than ``max_bytes``; else
    :class:`FileProblem` with one sentence naming the path, e.g. "x.geojson: is a FIFO (named pipe),
    not a file" or "x.geojson: is 8.0 GiB; the limit for annotation files is 1 GiB". Only ``stat``
    is called, so a FIFO is refused without blocking. ``what`` names the kind of file, plural
    ("annotation files", "slides")."""
    path = Path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise FileProblem(f"{path}: does not exist.") from None
    except NotADirectoryError:
        raise FileProblem(f"{path}: does not exist (a part of the path is not a folder).") from None
    except PermissionError:
        raise FileProblem(f"{path}: cannot be read (permission denied).") from None
    except OSError as e:
        raise FileProblem(f"{path}: cannot be read ({e.strerror or e}).") from None
    for test, name in _KINDS:
        if test(st.st_mode):
            raise FileProblem(f"{path}: is {name}, not a file.")
    if not stat.S_ISREG(st.st_mode):
        raise FileProblem(f"{path}: is not a regular file.")
    if max_bytes is not None and st.st_size > max_bytes:
        raise FileProblem(
            f"{path}: is {human_size(st.st_size)}; the limit for {what} is {human_size(max_bytes)}."
        )
    return path

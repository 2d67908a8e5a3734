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
    """``n`` bytes as a short size: 512 bytes, 3.4 MiB, 8 GiB."""
    if n < 1024:
        return f"{n} bytes"
    for unit, scale in (("KiB", 1024), ("MiB", 1024**2), ("GiB", GIB), ("TiB", 1024**4)):
        if n < scale * 1024 or unit == "TiB":
            value = n / scale
            return f"{value:.0f} {unit}" if value == int(value) else f"{value:.1f} {unit}"
    raise AssertionError("unreachable")


def _check_mode(path: Path, st: os.stat_result, what: str, max_bytes: int | None) -> None:
    for test, name in _KINDS:
        if test(st.st_mode):
            raise FileProblem(f"{path}: is {name}, not a file")
    if not stat.S_ISREG(st.st_mode):
        raise FileProblem(f"{path}: is not a regular file")
    if max_bytes is not None and st.st_size > max_bytes:
        raise FileProblem(f"{path}: is {human_size(st.st_size)}; the limit for {what} is "
                          f"{human_size(max_bytes)}")


def _os_problem(path: Path, exc: OSError) -> FileProblem:
    if isinstance(exc, FileNotFoundError):
        return FileProblem(f"{path}: does not exist")
    if isinstance(exc, NotADirectoryError):
        return FileProblem(f"{path}: does not exist (a part of the path is not a folder)")
    if isinstance(exc, PermissionError):
        return FileProblem(f"{path}: cannot be read (permission denied)")
    return FileProblem(f"{path}: cannot be read ({exc.strerror or exc})")


def regular_file(path: Path, what: str, max_bytes: int | None = None) -> Path:
    """``path`` if it names a regular file (symlinks followed) no larger than ``max_bytes``; else
    :class:`FileProblem` with one sentence naming the path, e.g. "x.geojson: is a FIFO (named pipe),
    not a file" or "x.geojson: is 8 GiB; the limit for annotation files is 1 GiB". Only ``stat``
    is called, so a FIFO is refused without blocking. ``what`` names the kind of file, plural
    ("annotation files", "slides")."""
    path = Path(path)
    try:
        st = os.stat(path)
    except OSError as exc:
        raise _os_problem(path, exc) from None
    _check_mode(path, st, what, max_bytes)
    return path


def read_regular(path: Path, what: str, max_bytes: int) -> bytes:
    """The whole content of ``path``, checked as :func:`regular_file` does. The file is opened
    without blocking and checked again on the open descriptor, so a FIFO swapped in after the
    check cannot hang the read, and it never returns more than ``max_bytes``."""
    path = regular_file(path, what, max_bytes)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except OSError as exc:
        raise _os_problem(path, exc) from None
    with os.fdopen(fd, "rb") as fh:
        _check_mode(path, os.fstat(fh.fileno()), what, max_bytes)
        try:
            data = fh.read(max_bytes + 1)
        except OSError as exc:
            raise _os_problem(path, exc) from None
    if len(data) > max_bytes:  # grew since the check
        raise FileProblem(f"{path}: is larger than the limit for {what} ({human_size(max_bytes)})")
    return data

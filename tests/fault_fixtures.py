"""Faults for tests of hostile environments: a disk that fills up, a read-only folder, memory that
runs out. Each patches the lowest write or call a writer uses, so the code under test meets the
error where the operating system would raise it (half the bytes written first, as a real full disk
does)."""

from __future__ import annotations

import builtins
import errno
import io
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

MESSAGES = {errno.ENOSPC: "No space left on device", errno.EDQUOT: "Disk quota exceeded",
            errno.EROFS: "Read-only file system", errno.EACCES: "Permission denied"}


def os_error(code: int, path: object) -> OSError:
    return OSError(code, MESSAGES.get(code, os.strerror(code)), str(path))


class DiskFull:
    """Writes of ``Path.write_bytes`` / ``np.save`` / tifffile whose path ``matches`` fail with
    ``code`` (ENOSPC by default) from the ``after``-th such write on (0: the first), having written
    half their bytes; ``hits`` counts the failures."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, matches: Callable[[Path], bool], after: int = 0,
                 code: int = errno.ENOSPC) -> None:
        self.matches, self.after, self.code = matches, after, code
        self.seen = self.hits = 0
        real_write_bytes = Path.write_bytes

        def write_bytes(path: Path, data: bytes) -> int:
            if self._fails(path):
                real_write_bytes(path, bytes(data)[:len(data) // 2])
                raise os_error(self.code, path)
            return real_write_bytes(path, data)

        monkeypatch.setattr(Path, "write_bytes", write_bytes)

        import numpy as np

        real_save = np.save

        def save(file, arr, *a, **kw):  # noqa: ANN001 - numpy's signature
            if isinstance(file, (str, Path)) and self._fails(Path(file)):
                Path(file).write_bytes(b"\x93NUMPY")  # a cut header
                raise os_error(self.code, file)
            return real_save(file, arr, *a, **kw)

        monkeypatch.setattr(np, "save", save)

        import tifffile

        real_tiff_write = tifffile.FileHandle.write

        def tiff_write(fh, data):  # noqa: ANN001 - tifffile's signature
            if self._fails(Path(fh.path)):
                real_tiff_write(fh, bytes(data)[:len(data) // 2])
                raise os_error(self.code, None)  # a write on an open file names no file
            return real_tiff_write(fh, data)

        monkeypatch.setattr(tifffile.FileHandle, "write", tiff_write)

    def _fails(self, path: Path) -> bool:
        if not self.matches(path):
            return False
        self.seen += 1
        if self.seen > self.after:
            self.hits += 1
            return True
        return False


def read_only(monkeypatch: pytest.MonkeyPatch, folder: Path) -> int:
    """Make ``folder`` (and everything under it) read-only; returns the errno writers will meet.

    Not root: ``chmod 0o500`` (EACCES; restored by the caller's ``tmp_path`` clean-up as root can).
    Root ignores modes, so there a read-only file system is simulated instead (EROFS): creating,
    opening for writing, renaming into, removing or making a folder under ``folder`` fails."""
    folder = Path(folder)
    if os.geteuid() != 0:
        folder.mkdir(parents=True, exist_ok=True)
        folder.chmod(0o500)
        return errno.EACCES

    def inside(p: object) -> bool:
        try:
            return Path(os.fsdecode(p)).absolute().is_relative_to(folder.absolute())
        except (TypeError, ValueError):
            return False

    real_open, real_os_open = builtins.open, os.open
    real_mkdir, real_replace, real_rename = Path.mkdir, os.replace, os.rename
    real_unlink, real_rmtree = os.unlink, shutil.rmtree
    writing = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

    def opener(file, mode="r", *a, **kw):  # noqa: ANN001
        if isinstance(file, (str, bytes, os.PathLike)) and inside(file) and set(mode) & set("wax+"):
            raise os_error(errno.EROFS, file)
        return real_open(file, mode, *a, **kw)

    def os_open(path, flags, *a, **kw):  # noqa: ANN001
        if inside(path) and flags & writing:
            raise os_error(errno.EROFS, path)
        return real_os_open(path, flags, *a, **kw)

    def mkdir(self, *a, **kw):  # noqa: ANN001
        if inside(self) and not self.is_dir():
            raise os_error(errno.EROFS, self)
        return real_mkdir(self, *a, **kw)

    def guarded(real):  # noqa: ANN001
        def call(src, dst=None, *a, **kw):  # noqa: ANN001
            if inside(src) or (dst is not None and inside(dst)):
                raise os_error(errno.EROFS, src)
            return real(src, *((dst,) if dst is not None else ()), *a, **kw)
        return call

    monkeypatch.setattr(builtins, "open", opener)
    monkeypatch.setattr(io, "open", opener)
    monkeypatch.setattr(os, "open", os_open)
    monkeypatch.setattr(Path, "mkdir", mkdir)
    monkeypatch.setattr(os, "replace", guarded(real_replace))
    monkeypatch.setattr(os, "rename", guarded(real_rename))
    monkeypatch.setattr(os, "unlink", guarded(real_unlink))
    def rmtree(path, ignore_errors=False, *a, **kw):  # noqa: ANN001
        if inside(path):
            if ignore_errors:
                return None
            raise os_error(errno.EROFS, path)
        return real_rmtree(path, ignore_errors, *a, **kw)

    monkeypatch.setattr(shutil, "rmtree", rmtree)
    return errno.EROFS


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` and its bytes (to prove a failure changed nothing)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(Path(root).rglob("*")) if p.is_file()}


def leftovers(root: Path) -> list[str]:
    """Temporary files (``*.tmp``, ``*.part``) and registry temp folders under ``root``."""
    return sorted(str(p.relative_to(root)) for p in Path(root).rglob("*")
                  if p.name.endswith((".tmp", ".part")) or p.name.startswith((".tmp-", ".cocopath-write-check")))

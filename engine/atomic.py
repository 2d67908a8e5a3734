"""Files that readers see whole or not at all: temp file in the same folder, fsync, rename, fsync of
the folder. No torch and no Qt: the registry (switching versions) and checkpoints share it."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable (best effort)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # Windows cannot open folders; rename there is atomic enough
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_replace(path: Path, write: Callable[[Path], None]) -> None:
    """``write(tmp)`` into a temporary file beside ``path`` (a name unique to this process and
    call), fsync it and rename it over ``path``: readers see the old file or the new one, never half
    of it. The temporary file never stays behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    fsync_dir(path.parent)


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never half of it."""
    atomic_replace(path, lambda tmp: tmp.write_bytes(data))


def write_report(out: Path, report: dict, markdown: str) -> None:
    """A benchmark's report: JSON at ``out`` and its Markdown beside it (``.md``), each atomically.
    Values JSON cannot hold (paths, dates) are written as text."""
    import json

    out = Path(out)
    atomic_write(out, json.dumps(report, indent=1, default=str).encode())
    atomic_write(out.with_suffix(".md"), markdown.encode())

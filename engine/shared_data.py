"""The one place that finds the real test data shared beside the project (``../shared/data``).

The data is licensed for use, not redistribution: it is never copied into the repository. Tests and
benchmarks reach it only through :func:`data_root`; the environment variable ``COCO_DATA`` wins.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "COCO_DATA"
_PROJECT_ROOT = Path(__file__).resolve().parents[1]


class SharedDataMissing(FileNotFoundError):
    """The shared data folder (or a file in it) is not on this machine."""


def data_root() -> Path:
    """Return the shared data folder: ``$COCO_DATA``, else ``<project>/../shared/data``."""
    env = os.environ.get(ENV_VAR)
    candidates = [Path(env)] if env else []
    candidates += [_PROJECT_ROOT.parent / "shared" / "data", Path.cwd().parent / "shared" / "data"]
    for c in candidates:
        if c.is_dir():
            return c.resolve()
    raise SharedDataMissing(
        f"shared test data not found (looked in {', '.join(map(str, candidates))}); "
        f"set {ENV_VAR} to the folder that holds slides/, seg/ and annotations/"
    )


def data_path(*parts: str) -> Path:
    """Return a path inside the shared data folder, raising :class:`SharedDataMissing` if absent."""
    p = data_root().joinpath(*parts)
    if not p.exists():
        raise SharedDataMissing(f"{p} is not there: the shared data on this machine lacks it")
    return p

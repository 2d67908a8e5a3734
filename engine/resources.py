"""Where the files CoCoPath ships are: ``resources/`` (distillation configs, the default student and
teacher with their cards).

The folder sits beside the ``engine`` package in every layout it runs from: a source checkout and
an editable install (``<repo>/resources``), and an installed wheel, whose package data puts it at
``site-packages/resources`` (``[tool.setuptools]`` in pyproject.toml lists what goes in;
tests/test_packaging.py builds a wheel and checks). It is found from the installed ``engine``
package's location (``importlib.resources.files("engine")``), never from the working directory.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def resources_dir() -> Path:
    """The ``resources`` folder beside the ``engine`` package (it may lack parts in a trimmed
    install: callers check the files they need)."""
    return Path(str(files("engine"))).resolve().parent / "resources"


def resource_path(*parts: str) -> Path:
    """A path under :func:`resources_dir`, e.g. ``resource_path("configs", "distill")``."""
    return resources_dir().joinpath(*parts)

"""Fixtures for the annotation engine: a project with the small real slide, random shapes."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from shapely.geometry import Polygon

from engine.annotations import Project, SlideRecord


@pytest.fixture
def project(tmp_path: Path) -> Iterator[Project]:
    with Project.create(tmp_path / "proj", author="dr-test") as p:
        yield p


@pytest.fixture
def slide(project: Project, small_svs: Path) -> SlideRecord:
    return project.add_slide(small_svs)


def random_star(rng: np.random.Generator, cx: float, cy: float, radius: float,
                n: int = 12) -> Polygon:
    """A random star-shaped (so simple and valid) polygon around (cx, cy)."""
    angles = np.sort(rng.uniform(0, 2 * math.pi, n))
    radii = rng.uniform(0.3, 1.0, n) * radius
    return Polygon(np.c_[cx + radii * np.cos(angles), cy + radii * np.sin(angles)])


@pytest.fixture
def star() -> Callable[..., Polygon]:
    """:func:`random_star`, for tests (test modules do not import each other)."""
    return random_star


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)

"""Fixtures for inference tests (building blocks in ``infer_fixtures``)."""

from __future__ import annotations

from pathlib import Path

import pytest
from infer_fixtures import pattern_rgb, write_slide


@pytest.fixture
def pattern_slide(tmp_path: Path) -> Path:
    return write_slide(tmp_path / "pattern.tif", pattern_rgb(700, 520))



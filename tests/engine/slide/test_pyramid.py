"""The pyramid builder writes real-H&E pyramids that OpenSlide reads as generic TIFF with mpp."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from engine.slide import RegionRequest, open_slide
from engine.slide.pyramid import build_pyramid_tiff, load_patches


def test_pyramid_geometry_mpp_and_consistent_levels(tmp_path: Path) -> None:
    patches = load_patches(limit=8)
    out = build_pyramid_tiff(tmp_path / "p.tif", 3000, 2100, tile=256, mpp=0.5, patches=patches)
    assert not (tmp_path / "p.tif.part").exists()
    with open_slide(out) as s:
        i = s.info
        assert i.vendor == "generic-tiff"
        assert i.level_dimensions == ((3000, 2100), (1500, 1050), (750, 525), (375, 263))
        assert i.level_downsamples[1] == 2.0
        assert i.mpp == (0.5, 0.5)
        # level 1 looks like level 0 shrunk by two (JPEG losses aside)
        full = s.read_rgb(RegionRequest(i.path, 0, 1024, 1024, 512, 512)).astype(float)
        half = s.read_rgb(RegionRequest(i.path, 1, 1024, 1024, 256, 256)).astype(float)
        shrunk = full.reshape(256, 2, 256, 2, 3).mean(axis=(1, 3))
        assert np.abs(shrunk - half).mean() < 12
        # it is tissue in the middle and glass in the corner
        centre = s.read_rgb(RegionRequest(i.path, 0, 1400, 1000, 64, 64))
        corner = s.read_rgb(RegionRequest(i.path, 0, 0, 0, 64, 64))
        assert centre.std() > 10 and corner.std() < 5 and corner.mean() > 230

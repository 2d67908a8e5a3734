"""Predicted regions from the cache: polygons in a region (cut at its outline) and the connected
region under a point, on a cache holding a known pattern: areas are pixel counts × pixel area,
holes are kept, every geometry is valid."""

from __future__ import annotations

import numpy as np
import pytest
import shapely
from shapely.geometry import Polygon, box

from engine.inference.cache import PredictionCache
from engine.inference.geometry import PredictionGrid
from engine.inference.regions import (pending_tiles, prediction_component_at, prediction_in_region,
                                      vector_tolerances)
from engine.inference.vectorize import labels_from_probs

DS = 2.0  # slide level-0 pixels per cache pixel
GRID = PredictionGrid("slide.tif", (1024, 768), DS, 1, DS, 64, 16)
W, H = GRID.size  # 512 × 384 cache pixels, 8 × 6 tiles


def pattern() -> np.ndarray:
    """(H, W, 2) probabilities: class 1 a ring (with a hole holding a class-1 island) and a blob
    spanning four tiles; class 2 a bar; two class-1 pixels touching only at a corner."""
    p = np.zeros((H, W, 2), np.uint8)
    p[40:200, 30:230, 0] = 230  # the ring …
    p[80:160, 70:190, 0] = 0  # … its hole
    p[110:120, 120:130, 0] = 200  # an island inside the hole (its own region)
    p[100:300, 300:460, 0] = 180  # a blob across tile borders (x 256, y 128/192/256)
    p[100:300, 300:460, 1] = 40  # (class 1 still wins there)
    p[250:270, 20:250, 1] = 250  # class 2: a bar
    p[350, 20, 0] = p[351, 21, 0] = 255  # corner-touching pixels: two regions
    return p


@pytest.fixture
def cache(tmp_path) -> PredictionCache:
    cols, rows = GRID.shape
    c = PredictionCache.open(tmp_path / "c", GRID, "v1", 2, np.ones((rows, cols), bool),
                             {"classes": ["background", "tumour", "stroma"]})
    p, t = pattern(), GRID.tile
    for r in range(rows):
        for col in range(cols):
            c.write_tile(col, r, np.ascontiguousarray(p[r * t:(r + 1) * t, col * t:(col + 1) * t]),
                         flush=False)
    c.flush()
    return c


def pixel_union(mask: np.ndarray, ds: float = DS) -> shapely.Geometry:
    """The union of a mask's pixel squares, built independently of the vectoriser."""
    rows, cols = np.nonzero(mask)
    return shapely.union_all(shapely.box(cols * ds, rows * ds, (cols + 1) * ds, (rows + 1) * ds))


def test_polygons_in_the_whole_map_have_the_pixel_area_and_keep_holes(cache):
    got = prediction_in_region(cache, box(0, 0, 1024, 768))
    labels = labels_from_probs(pattern())
    assert got.level == 0 and got.downsample == DS and got.pending == 0
    assert cache.class_names == ("tumour", "stroma")
    for k in (0, 1):
        polys = got.polygons[k]
        assert polys and all(isinstance(p, Polygon) and p.is_valid for p in polys)
        assert sum(p.area for p in polys) == pytest.approx((labels == k + 1).sum() * DS * DS)
    tumour = sorted(got.polygons[0], key=lambda p: -p.area)
    assert len(tumour) == 5  # ring, blob, island, two corner pixels
    ring = next(p for p in tumour if p.interiors)
    assert len(ring.interiors) == 1 and Polygon(ring.interiors[0]).area == 80 * 120 * DS * DS
    assert ring.area == (160 * 200 - 80 * 120) * DS * DS
    assert len(got.polygons[1]) == 1 and got.polygons[1][0].area == 20 * 230 * DS * DS


def test_a_region_cuts_the_polygons_at_its_outline(cache):
    view = box(100, 100, 500, 460)  # level-0 px: cache pixels 50–250 × 50–230
    got = prediction_in_region(cache, view)
    labels = labels_from_probs(pattern())
    inside = np.zeros(labels.shape, bool)
    inside[50:230, 50:250] = True
    assert sum(p.area for p in got.polygons[0]) == pytest.approx(
        ((labels == 1) & inside).sum() * DS * DS)
    assert all(view.covers(p) and p.is_valid for p in got.polygons[0])
    roi = Polygon([(50, 50), (700, 120), (300, 700)])  # a triangle, not on the pixel grid
    tri = prediction_in_region(cache, roi)
    for k in (0, 1):
        want = pixel_union(labels == k + 1).intersection(roi).area
        assert sum(p.area for p in tri.polygons[k]) == pytest.approx(want, rel=1e-9)
        assert all(p.is_valid and roi.buffer(1e-6).covers(p) for p in tri.polygons[k])


def test_a_large_region_is_read_at_a_coarser_level_and_islands_can_be_dropped(cache):
    got = prediction_in_region(cache, box(0, 0, 1024, 768), max_pixels=W * H // 4)
    assert got.level == 1 and got.downsample == 2 * DS
    labels1 = labels_from_probs(cache.read_region(1, 0, 0, *cache.levels[1]))
    assert sum(p.area for p in got.polygons[0]) == pytest.approx((labels1 == 1).sum() * 16.0)
    big = prediction_in_region(cache, box(0, 0, 1024, 768), min_area=1000.0)
    assert len(big.polygons[0]) == 2 and all(p.area >= 1000 for p in big.polygons[0])
    smooth = prediction_in_region(cache, box(0, 0, 1024, 768), tolerance=3.0)
    assert all(p.is_valid for ps in smooth.polygons for p in ps)


def test_tiles_not_predicted_yet_are_counted(tmp_path):
    cols, rows = GRID.shape
    tissue = np.zeros((rows, cols), bool)
    tissue[0:2, 0:3] = True
    c = PredictionCache.open(tmp_path / "p", GRID, "v1", 1, tissue)
    c.write_tile(0, 0, np.full((64, 64, 1), 255, np.uint8))
    assert pending_tiles(c, 0, 0, 1024, 768) == 5
    assert pending_tiles(c, 0, 0, 100, 100) == 0  # tile (0, 0) only: done
    got = prediction_in_region(c, box(0, 0, 1024, 768))
    assert got.pending == 5 and got.polygons[0][0].area == 64 * 64 * DS * DS


def test_the_component_under_a_click_is_that_region_only(cache):
    labels = labels_from_probs(pattern())
    ring = prediction_component_at(cache, 2 * 35 + 1, 2 * 45 + 1)
    assert ring is not None and ring.class_index == 0 and ring.level == 0
    assert ring.geometry.is_valid and isinstance(ring.geometry, Polygon)
    assert ring.geometry.area == (160 * 200 - 80 * 120) * DS * DS == ring.pixels * DS * DS
    assert len(ring.geometry.interiors) == 1  # the island in the hole is not part of it
    assert prediction_component_at(cache, 2 * 100, 2 * 100) is None  # in the hole: background
    island = prediction_component_at(cache, 2 * 125, 2 * 115)
    assert island is not None and island.geometry.area == 100 * DS * DS
    bar = prediction_component_at(cache, 2 * 100, 2 * 260)
    assert bar is not None and bar.class_index == 1 and bar.geometry.area == 20 * 230 * DS * DS
    corner = prediction_component_at(cache, 2 * 20.5, 2 * 350.5)
    assert corner is not None and corner.geometry.area == DS * DS  # 4-connected: one pixel
    blob_mask = labels == 1
    blob_mask[:, :290] = False
    small = prediction_component_at(cache, 2 * 400, 2 * 200, start=4)  # the window has to grow
    assert small is not None and small.geometry.equals(pixel_union(blob_mask))
    assert prediction_component_at(cache, -5, 10) is None and prediction_component_at(cache, 5000, 5) is None


def test_a_component_too_large_for_the_budget_is_taken_at_a_coarser_level(cache):
    got = prediction_component_at(cache, 2 * 400, 2 * 200, max_pixels=50_000)
    assert got is not None and got.level == 1 and got.downsample == 2 * DS
    assert got.geometry.covers(shapely.Point(800, 400))
    assert got.geometry.area == got.pixels * 16.0 == 200 * 160 * DS * DS  # the blob, on level 1's grid


def test_tolerances_follow_the_slide_resolution():
    assert vector_tolerances((0.5, 0.5)) == (2.0, 800.0)
    assert vector_tolerances(None) == (1.0, 200.0)  # no µm/px: taken as pixels

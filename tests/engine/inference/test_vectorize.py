"""Masks to polygons: valid, holes kept, area equal to pixel count × pixel area, islands dropped."""

from __future__ import annotations

import numpy as np
import shapely
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from engine.inference.vectorize import labels_from_probs, mask_to_polygons


def blobs(seed: int, shape=(120, 160)) -> np.ndarray:
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    return ndimage.gaussian_filter(rng.random(shape), 4) > 0.5


def test_polygons_are_valid_and_their_area_is_the_pixel_area():
    mask = blobs(0)
    polys = mask_to_polygons(mask, downsample=4.0, origin=(100, 50))
    assert polys and all(p.is_valid for p in polys)
    assert sum(p.area for p in polys) == mask.sum() * 16.0
    # each mask pixel centre is inside, each background pixel centre outside
    yy, xx = np.mgrid[0:mask.shape[0], 0:mask.shape[1]]
    pts = shapely.points(100 + (xx.ravel() + 0.5) * 4, 50 + (yy.ravel() + 0.5) * 4)
    inside = np.zeros(pts.shape, bool)
    for p in polys:
        inside |= shapely.contains(p, pts)
    np.testing.assert_array_equal(inside, mask.ravel())


def test_holes_are_kept_and_small_islands_dropped():
    mask = np.zeros((50, 50), bool)
    mask[5:45, 5:45] = True
    mask[15:35, 15:35] = False  # a hole
    mask[1:3, 48:50] = True  # a 4-pixel island
    polys = mask_to_polygons(mask, min_area=10)
    assert len(polys) == 1 and len(polys[0].interiors) == 1
    assert polys[0].area == 40 * 40 - 20 * 20
    assert len(mask_to_polygons(mask)) == 2


def test_simplification_stays_within_its_tolerance():
    mask = blobs(1)
    exact = shapely.unary_union(mask_to_polygons(mask, 2.0))
    simple = mask_to_polygons(mask, 2.0, tolerance=3.0)
    union = shapely.unary_union(simple)
    assert all(p.is_valid for p in simple)
    # what simplification moved is a band along the outline no wider than the tolerance
    assert shapely.symmetric_difference(exact, union).area <= exact.length * 3.0
    assert abs(union.area - exact.area) <= exact.length * 3.0
    assert sum(len(p.exterior.coords) for p in simple) < sum(
        len(p.exterior.coords) for p in mask_to_polygons(mask, 2.0))


@settings(max_examples=40, deadline=None)
@given(arrays(bool, st.tuples(st.integers(1, 12), st.integers(1, 12))))
def test_any_mask_gives_valid_polygons_of_the_same_area(mask):
    polys = mask_to_polygons(mask, downsample=0.5)
    assert all(p.is_valid and not p.is_empty for p in polys)
    assert abs(sum(p.area for p in polys) - mask.sum() * 0.25) < 1e-9


def test_labels_take_the_most_probable_class_and_ties_go_to_background():
    probs = np.array([[[128, 0], [127, 0], [100, 120], [60, 60]]], np.uint8)
    np.testing.assert_array_equal(labels_from_probs(probs), [[1, 0, 2, 0]])


@settings(max_examples=60, deadline=None)
@given(arrays(bool, st.tuples(st.integers(1, 14), st.integers(1, 14))))
def test_one_polygon_per_4_connected_region_covering_exactly_its_pixels(mask):
    from scipy import ndimage

    polys = mask_to_polygons(mask, downsample=2.0, origin=(5, 7))
    _, regions = ndimage.label(mask)
    assert len(polys) == regions
    rows, cols = np.nonzero(mask)
    pixels = shapely.union_all(shapely.box(5 + cols * 2.0, 7 + rows * 2.0,
                                           5 + (cols + 1) * 2.0, 7 + (rows + 1) * 2.0))
    union = shapely.union_all(polys) if polys else shapely.Polygon()
    assert union.symmetric_difference(pixels).area < 1e-9
    assert all(p.geom_type == "Polygon" and p.is_valid for p in polys)


def test_one_class_labels_agree_with_the_general_rule():
    p = np.arange(256, dtype=np.uint8).reshape(16, 16, 1)
    general = labels_from_probs(np.concatenate([p, np.zeros_like(p)], axis=-1))
    np.testing.assert_array_equal(labels_from_probs(p), general)
    assert labels_from_probs(p).ravel()[127] == 0 and labels_from_probs(p).ravel()[128] == 1

"""Outputs of a slide run: the mask TIFF opens in OpenSlide with the right geometry and labels,
the GeoJSON is QuPath's shape and loads in shapely, the summary's areas add up."""

from __future__ import annotations

import json
import uuid

import numpy as np
import openslide
import pytest
from shapely.geometry import shape

from engine.inference.job import InferOptions, infer_slide
from engine.inference.runner import TorchRunner

from infer_fixtures import RedIsTumour, plain_spec


@pytest.fixture
def run(pattern_slide, tmp_path):
    spec = plain_spec(tile=64)
    summary = infer_slide(pattern_slide, spec, TorchRunner(RedIsTumour(), spec), tmp_path / "out",
                          InferOptions(margin=16, simplify_um=0.0, min_area_um2=0.0))
    return spec, summary


def test_mask_tiff_opens_in_openslide_with_the_slide_geometry(run, pattern_slide):
    spec, summary = run
    assert summary["status"] == "done"
    from engine.inference.cache import PredictionCache

    cache = PredictionCache(summary["cache"])
    with openslide.OpenSlide(summary["outputs"]["mask"]) as mask:
        assert mask.level_count == cache.level_count
        assert mask.level_dimensions[0] == (700, 520)  # model at the slide's 0.5 µm/px
        assert [tuple(d) for d in mask.level_dimensions] == [tuple(d) for d in cache.levels]
        assert float(mask.properties[openslide.PROPERTY_NAME_MPP_X]) == pytest.approx(0.5)
        labels = np.asarray(mask.read_region((0, 0), 0, (700, 520)))[..., 0]
        assert mask.level_downsamples[1] == pytest.approx(2.0)
    w, h = cache.levels[0]
    probs = cache.read_region(0, 0, 0, w, h)[..., 0]
    np.testing.assert_array_equal(labels, np.where(probs >= 128, 1, 0))
    assert labels.any() and not labels.all()


def test_geojson_follows_qupath_and_matches_the_measured_area(run):
    spec, summary = run
    doc = json.loads(open(summary["outputs"]["geojson"]).read())
    assert doc["type"] == "FeatureCollection" and doc["features"]
    total = 0.0
    for f in doc["features"]:
        assert f["type"] == "Feature" and str(uuid.UUID(f["id"])) == f["id"]
        props = f["properties"]
        assert props["objectType"] == "annotation"
        assert props["classification"]["name"] == "tumour"
        color = props["classification"]["color"]
        assert len(color) == 3 and all(isinstance(c, int) and 0 <= c <= 255 for c in color)
        geom = shape(f["geometry"])
        assert geom.is_valid and geom.geom_type in ("Polygon", "MultiPolygon")
        total += geom.area
    tumour = summary["measurements"]["classes"]["tumour"]
    # no simplification: polygons cover exactly the tumour pixels of the vectorised level
    assert summary["polygons"]["cache_level"] == 0
    from engine.inference.cache import PredictionCache

    cache = PredictionCache(summary["cache"])
    w, h = cache.levels[0]
    pixels = int((cache.read_region(0, 0, 0, w, h)[..., 0] >= 128).sum())
    assert total == pytest.approx(pixels * cache.grid.downsample ** 2, abs=1e-6)
    assert 0 < tumour["area_px"] <= total  # the summary counts pixels inside the tissue mask only
    assert tumour["area_um2"] == pytest.approx(tumour["area_px"] * 0.25)


def test_summary_measures_tissue_and_tumour_fraction(run):
    _, s = run
    m = s["measurements"]
    assert m["tissue_area_mm2"] == pytest.approx(m["tissue_area_um2"] / 1e6)
    t = m["classes"]["tumour"]
    assert 0 < t["fraction_of_tissue"] < 1
    assert t["fraction_of_tissue"] == pytest.approx(t["area_px"] / m["tissue_area_px"])
    assert s["model"]["version"] == "v1" and s["time_s"] > 0
    assert s["tiles"]["done"] == s["tiles"]["tissue"] < s["tiles"]["all"]

"""Every real annotation file in ../shared/data/annotations imports, checked against an independent
parse (the standard library's XML and JSON parsers, the shoelace formula and shapely), and the
ImageScope outlines rasterised match the masks shipped with them."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import shapely
from PIL import Image
from shapely.geometry import Polygon

from engine.annotations import Project, SlideRecord
from engine.annotations.formats import guess_format, import_file, read_annotations
from engine.annotations.mask import rasterize
from engine.shared_data import data_path

ANN = ("annotations",)
ASAP_FILES = sorted(p.name for sub in ("camelyon16_metastasis", "tissue_annotations")
                    for p in data_path(*ANN, "asap", sub).glob("*.xml"))
APERIO_FILES = sorted(p.stem for p in data_path(*ANN, "aperio").glob("*.xml"))


def _asap_path(name: str) -> Path:
    for sub in ("camelyon16_metastasis", "tissue_annotations"):
        p = data_path(*ANN, "asap").joinpath(sub, name)
        if p.exists():
            return p
    raise FileNotFoundError(name)


def shoelace(points: list[tuple[float, float]]) -> float:
    x, y = np.asarray(points, dtype=float).T
    return abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))) / 2


def valid_area(points: list[tuple[float, float]]) -> float:
    """Area of the outline once repaired: the polygonal parts of shapely's make_valid."""
    g = shapely.make_valid(Polygon(points))
    parts = shapely.get_parts(g)
    return float(sum(p.area for p in parts if p.geom_type in ("Polygon", "MultiPolygon")))


def expected_outlines(root: ET.Element, path: str, point: str) -> list[list[tuple[float, float]]]:
    out = []
    for el in root.iterfind(path):
        pts = el.findall(point)
        if "Order" in (pts[0].attrib if pts else {}):
            pts = sorted(pts, key=lambda c: float(c.get("Order")))
        out.append([(float(c.get("X")), float(c.get("Y"))) for c in pts])
    return out


def check_outlines(outlines: list[list[tuple[float, float]]], areas: list[float]) -> None:
    assert len(areas) == len(outlines)
    for pts, area in zip(outlines, areas):
        if Polygon(pts).is_valid:
            assert area == pytest.approx(shoelace(pts), rel=1e-9)
        assert area == pytest.approx(valid_area(pts), rel=1e-9)


@pytest.mark.parametrize("name", ASAP_FILES)
def test_asap_files_import_like_an_independent_parse(name: str) -> None:
    path = _asap_path(name)
    root = ET.parse(path).getroot()
    parsed = read_annotations(path)
    assert guess_format(path) == "asap" and parsed.format == "ASAP XML"
    outlines = expected_outlines(root, "./Annotations/Annotation", "./Coordinates/Coordinate")
    check_outlines(outlines, [a.area for a in parsed.annotations])
    groups = [el.get("PartOfGroup") for el in root.iterfind("./Annotations/Annotation")]
    assert [a.class_name for a in parsed.annotations] == groups
    assert [a.name for a in parsed.annotations] == [
        el.get("Name") for el in root.iterfind("./Annotations/Annotation")]
    colours = {g.get("Name"): g.get("Color").lower() for g in root.iterfind(".//Group")}
    for cls in parsed.classes:
        assert "#{:02x}{:02x}{:02x}".format(*cls.color) == colours[cls.name]
    if any(el.get("Type") == "Spline" for el in root.iterfind(".//Annotation")):
        assert any("spline" in w for w in parsed.warnings)


@pytest.mark.parametrize("stem", APERIO_FILES)
def test_imagescope_files_import_like_an_independent_parse(stem: str) -> None:
    path = data_path(*ANN, "aperio", f"{stem}.xml")
    root = ET.parse(path).getroot()
    parsed = read_annotations(path)
    assert guess_format(path) == "imagescope"
    outlines = expected_outlines(root, ".//Region", "./Vertices/Vertex")
    check_outlines(outlines, [a.area for a in parsed.annotations])
    assert parsed.mpp == pytest.approx(float(root.get("MicronsPerPixel")))
    assert all(a.geometry.is_valid for a in parsed.annotations)


@pytest.mark.parametrize("stem", APERIO_FILES)
def test_imagescope_outlines_match_the_shipped_masks(stem: str) -> None:
    parsed = read_annotations(data_path(*ANN, "aperio", f"{stem}.xml"))
    truth = np.asarray(Image.open(data_path(*ANN, "aperio", "masks", f"{stem}.png")).convert("L")) > 127
    h, w = truth.shape
    ours = rasterize([(a, 1) for a in parsed.annotations], 0, 0, w, h) > 0
    iou = (ours & truth).sum() / (ours | truth).sum()
    assert iou >= 0.85, f"IoU {iou:.3f}"


def test_histomicstk_geojson_imports_like_an_independent_parse() -> None:
    path = data_path(*ANN, "geojson", "sample_histomicstk_nuclei_TCGA-02-0010.geojson")
    doc = json.loads(path.read_text())
    parsed = read_annotations(path)
    assert guess_format(path) == "geojson"
    outlines = [[(x, y) for x, y, *_z in f["geometry"]["coordinates"][0]] for f in doc["features"]]
    check_outlines(outlines, [a.area for a in parsed.annotations])
    assert all(a.class_name is None for a in parsed.annotations)


def test_every_real_file_imports_into_a_project(project: Project, slide: SlideRecord,
                                                shared_data: Path) -> None:
    store = project.store(slide)
    files = sorted((shared_data / "annotations").rglob("*.xml")) + sorted(
        (shared_data / "annotations").rglob("*.geojson"))
    assert len(files) == 9
    total = 0
    for f in files:
        parsed = read_annotations(f)
        result = import_file(store, f)
        total += result.count
        assert result.count == len(parsed.annotations) > 0
        assert store.count() == total
        summed = sum(s.area_px2 for s in result.summary.values())
        assert summed == pytest.approx(sum(a.area for a in parsed.annotations))
        for s in result.summary.values():
            assert s.area_um2 == pytest.approx(s.area_px2 * 0.499 * 0.499)
    assert len(store.steps()) == len(files)
    store.undo()  # an import is one step: undo removes all of it
    assert store.count() == total - result.count

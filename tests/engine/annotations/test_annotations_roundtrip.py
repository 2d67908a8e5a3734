"""Round trips (ours → file → ours) lose only what the format cannot hold, and say so; masks are
exact at pixel centres, keep holes, and the pyramidal TIFF opens in OpenSlide."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import openslide
import pytest
import shapely
from PIL import Image
from shapely.geometry import MultiPolygon, Polygon, box

from engine.annotations import (Annotation, AnnotationClass, AnnotationError, Kind, Project,
                                SlideRecord, Source)
from engine.annotations.formats import export_file, import_file
from engine.annotations.mask import fill, pyramid_dimensions, rasterize
from engine.annotations.rois import IGNORE, partial_label_mask, reviewed_area

DONUT = box(100, 100, 400, 400).difference(box(200, 200, 300, 300))


def _sample(store_project: Project, slide: SlideRecord) -> list[Annotation]:
    project = store_project
    project.set_class(AnnotationClass("tumour", (200, 30, 40), "1"))
    project.set_class(AnnotationClass("stroma", (10, 120, 250)))
    anns = [
        Annotation(DONUT, "tumour", name="with a hole", author="alice", created=1.7e9),
        Annotation(MultiPolygon([box(500, 500, 600, 650), box(700.25, 500.5, 800.125, 600)]),
                   "stroma", source=Source.MODEL, author="student-v2", created=1.7e9 + 1),
        Annotation(Polygon([(1000, 1000), (1100, 1010.5), (1050.75, 1200)]), "tumour", locked=True),
        Annotation(box(0, 0, 1500, 1500), kind=Kind.ROI, author="alice"),
        Annotation(box(1200, 1200, 1300, 1300), None, name="unclassified"),
    ]
    store = project.store(slide)
    store.add(anns)
    return store.annotations(kind=None)


def _fresh(tmp_path: Path, small_svs: Path, name: str) -> tuple[Project, SlideRecord]:
    p = Project.create(tmp_path / name, author="importer")
    return p, p.add_slide(small_svs)


def test_geojson_round_trip_is_lossless(project: Project, slide: SlideRecord, tmp_path: Path,
                                        small_svs: Path) -> None:
    ours = _sample(project, slide)
    out = tmp_path / "out.geojson"
    result = export_file(project.store(slide), out)
    assert result.count == 5 and result.warnings == ("class shortcuts are not stored in GeoJSON",)
    other, other_slide = _fresh(tmp_path, small_svs, "other")
    with other:
        imported = import_file(other.store(other_slide), out)
        assert imported.count == 5 and imported.warnings == ()
        back = other.store(other_slide).annotations(kind=None)
        assert back == ours  # every field: ids, exact coordinates, class, kind, source, times, lock
        assert {c.name: c.color for c in other.classes()} == {"tumour": (200, 30, 40),
                                                               "stroma": (10, 120, 250)}


def test_geojson_is_what_qupath_expects(project: Project, slide: SlideRecord, tmp_path: Path) -> None:
    _sample(project, slide)
    out = tmp_path / "q.geojson"
    export_file(project.store(slide), out)
    doc = json.loads(out.read_text())
    assert doc["type"] == "FeatureCollection" and len(doc["features"]) == 5
    for f in doc["features"]:
        assert f["type"] == "Feature" and f["properties"]["objectType"] == "annotation"
        assert f["geometry"]["type"] in ("Polygon", "MultiPolygon") and len(f["id"]) == 36
        cls = f["properties"].get("classification")
        if cls is not None:  # QuPath throws when color is missing
            assert isinstance(cls["name"], str) and len(cls["color"]) == 3
            assert all(isinstance(v, int) and 0 <= v <= 255 for v in cls["color"])
        assert isinstance(f["properties"]["isLocked"], bool)
        assert shapely.geometry.shape(f["geometry"]).is_valid
    donut = next(f for f in doc["features"] if f["properties"].get("name") == "with a hole")
    assert len(donut["geometry"]["coordinates"]) == 2  # the hole is kept
    meta = donut["properties"]["metadata"]  # QuPath keeps metadata with primitive values
    assert meta["cocopath.author"] == "alice" and all(isinstance(v, str) for v in meta.values())
    m = donut["properties"]["measurements"]
    assert m["Area px^2"] == DONUT.area and m["Area µm^2"] == pytest.approx(DONUT.area * 0.499**2)


def test_asap_round_trip_keeps_what_asap_holds_and_says_what_not(
        project: Project, slide: SlideRecord, tmp_path: Path, small_svs: Path) -> None:
    ours = {a.uuid: a for a in _sample(project, slide)}
    out = tmp_path / "out.xml"
    result = export_file(project.store(slide), out, "asap")
    text = " ".join(result.warnings)
    assert "1 hole(s) were filled" in text and "1 multi-part" in text and "authors" in text
    other, other_slide = _fresh(tmp_path, small_svs, "other")
    with other:
        imported = import_file(other.store(other_slide), out)
        back = {a.uuid: a for a in other.store(other_slide).annotations(kind=None)}
        assert imported.count == 5 and back.keys() == ours.keys()
        for uid, a in ours.items():
            b = back[uid]
            assert (b.class_name, b.kind) == (a.class_name, a.kind)
            polys = a.geometry.geoms if isinstance(a.geometry, MultiPolygon) else [a.geometry]
            filled = shapely.union_all([Polygon(p.exterior) for p in polys])
            assert b.geometry.equals(filled)  # exact coordinates except the filled hole
        assert back[next(u for u, a in ours.items() if a.name == "with a hole")].area == 300 * 300
        assert {c.name: c.color for c in other.classes()} == {"tumour": (200, 30, 40),
                                                               "stroma": (10, 120, 250)}


def test_real_asap_file_round_trips(project: Project, slide: SlideRecord, tmp_path: Path,
                                    shared_data: Path) -> None:
    src = shared_data / "annotations" / "asap" / "camelyon16_metastasis" / "tumor_085.xml"
    store = project.store(slide)
    import_file(store, src)
    first = store.annotations()
    export_file(store, tmp_path / "again.xml")
    export_file(store, tmp_path / "again.geojson")
    for f in ("again.xml", "again.geojson"):
        p2 = Project.create(tmp_path / f"p-{f}")
        with p2:
            s2 = p2.store(p2.add_slide(slide.path))
            import_file(s2, tmp_path / f)
            again = {a.uuid: a for a in s2.annotations()}
            assert len(again) == len(first)
            for a in first:
                expected = a.geometry
                if f.endswith(".xml"):  # ASAP has no holes: repaired outlines may have had some
                    polys = a.geometry.geoms if isinstance(a.geometry, MultiPolygon) else [a.geometry]
                    expected = shapely.union_all([Polygon(p.exterior) for p in polys])
                else:
                    assert again[a.uuid] == a  # GeoJSON: every field
                assert again[a.uuid].geometry.equals(expected)
                assert again[a.uuid].class_name == "metastasis"


def test_fill_is_exact_at_pixel_centres(rng: np.random.Generator, star) -> None:
    for _ in range(20):
        geom = star(rng, *rng.uniform(20, 80, 2), rng.uniform(5, 40), int(rng.integers(3, 30)))
        if rng.random() < 0.5:
            geom = geom.difference(star(rng, *geom.centroid.coords[0], 8))
        ds = float(rng.choice([1.0, 2.0, 3.5]))
        mask = fill(geom, 0, 0, 60, 60, ds)
        yy, xx = np.mgrid[0:60, 0:60]
        truth = shapely.contains_xy(geom, (xx + 0.5) * ds, (yy + 0.5) * ds)
        assert (mask == truth).all()


def test_holes_overlaps_and_windows_in_rasterize() -> None:
    donut = Annotation(DONUT, "a")
    inner = Annotation(box(250, 250, 260, 260), "b")
    lab = rasterize([(donut, 1), (inner, 2)], 0, 0, 500, 500)
    assert lab[150, 150] == 1 and lab[220, 220] == 0 and lab[255, 255] == 2 and lab[450, 450] == 0
    assert (lab == 1).sum() == DONUT.area and (lab == 2).sum() == 100
    window = rasterize([(donut, 1), (inner, 2)], 240, 240, 20, 20)
    assert (window == lab[240:260, 240:260]).all()
    coarse = rasterize([(donut, 1)], 0, 0, 50, 50, 10)
    assert coarse[15, 15] == 1 and coarse[25, 25] == 0


def test_mask_exports_png_and_pyramidal_tiff(project: Project, slide: SlideRecord,
                                             tmp_path: Path) -> None:
    _sample(project, slide)
    store = project.store(slide)
    png = export_file(store, tmp_path / "m.png", "mask", downsample=4)
    assert dict(png.labels) == {1: "tumour", 2: "stroma"} and png.count == 3
    assert any("ROI" in w for w in png.warnings) and any("unclassified" in w for w in png.warnings)
    img = Image.open(tmp_path / "m.png")
    assert img.mode == "P" and img.size == (555, 742)
    assert img.getpalette()[3:9] == [200, 30, 40, 10, 120, 250]
    arr = np.asarray(img)
    assert arr[150 // 4, 150 // 4] == 1 and arr[250 // 4, 250 // 4] == 0 and arr[550 // 4, 550 // 4] == 2
    tif = export_file(store, tmp_path / "m.tif", "mask", downsample=2)
    assert tif.labels == png.labels
    with openslide.OpenSlide(str(tmp_path / "m.tif")) as osr:
        dims = pyramid_dimensions((slide.width, slide.height), 2)
        assert osr.level_dimensions == tuple(dims) and len(dims) >= 2
        assert float(osr.properties["openslide.mpp-x"]) == pytest.approx(0.499 * 2)
        region = np.asarray(osr.read_region((0, 0), 1, dims[1]))[..., 0]
        assert (region == np.asarray(Image.open(tmp_path / "m.png"))).all()  # level 1: ×4


def test_mask_refuses_bad_requests(project: Project, slide: SlideRecord, tmp_path: Path) -> None:
    store = project.store(slide)
    with pytest.raises(AnnotationError, match=".png or .tif"):
        export_file(store, tmp_path / "m.bmp", "mask")
    with pytest.raises(AnnotationError, match="positive"):
        export_file(store, tmp_path / "m.png", "mask", downsample=0)
    with pytest.raises(AnnotationError, match="ending"):
        export_file(store, tmp_path / "m.txt")


def test_partial_labels_follow_the_correction_rois() -> None:
    classes = [AnnotationClass("tumour"), AnnotationClass("stroma")]
    anns = [Annotation(box(0, 0, 100, 100), kind=Kind.ROI),
            Annotation(box(50, 50, 150, 100), kind=Kind.ROI),  # overlapping ROIs: union
            Annotation(box(10, 10, 30, 30), "tumour"),
            Annotation(box(120, 60, 200, 80), "stroma"),  # half inside the second ROI
            Annotation(box(150, 150, 170, 170), "tumour")]  # outside every ROI
    m = partial_label_mask(anns, classes, 0, 0, 200, 200)
    assert m[20, 20] == 1 and m[5, 5] == 0 and m[70, 140] == 2 and m[70, 120] == 2
    assert m[70, 160] == IGNORE and m[160, 160] == IGNORE and m[120, 20] == IGNORE
    assert (m == 0).sum() == 100 * 100 + 100 * 50 - 50 * 50 - 20 * 20 - 30 * 20
    loose = partial_label_mask(anns, classes, 0, 0, 200, 200, label_outside_rois=True)
    assert loose[160, 160] == 1 and loose[70, 160] == 2 and loose[120, 20] == IGNORE
    assert reviewed_area(anns) == 100 * 100 + 100 * 50 - 50 * 50
    assert (partial_label_mask(anns[2:], classes, 0, 0, 50, 50) == IGNORE).all()


def test_import_keeps_project_colours_and_says_so(project: Project, slide: SlideRecord,
                                                  shared_data: Path) -> None:
    project.set_class(AnnotationClass("metastasis", (1, 2, 3)))
    src = shared_data / "annotations" / "asap" / "camelyon16_metastasis" / "tumor_085.xml"
    result = import_file(project.store(slide), src)
    assert any("keeps the project's colour #010203, not the file's #00aa00" in w
               for w in result.warnings)
    assert project.class_named("metastasis").color == (1, 2, 3)


def test_qupath_variants_are_read(tmp_path: Path) -> None:
    from engine.annotations.geojson_io import read_geojson

    uid = "8d2c1c1e-63a7-4b36-9d0e-2b1d2d9a5f10"
    features = [
        {"type": "Feature", "id": uid, "geometry": {"type": "Polygon", "coordinates": [
            [[0, 0], [100, 0], [100, 100], [0, 100], [0, 0]], [[10, 10], [20, 10], [20, 20], [10, 10]]]},
         "properties": {"objectType": "annotation", "isLocked": True, "name": "A",
                        "classification": {"name": "Tumor", "colorRGB": -3670016},  # QuPath ≤ 0.3
                        "measurements": [{"name": "Area", "value": 1.0}],
                        "metadata": {"cocopath.kind": "region", "cocopath.created": "1700000000.5",
                                     "cocopath.author": "alice"}}},
        {"type": "Feature", "geometry": {"type": "MultiPolygon", "coordinates": [
            [[[200, 200], [300, 200], [300, 300], [200, 200]]], [[[400, 400], [500, 400], [500, 500], [400, 400]]]]},
         "properties": {"objectType": "detection", "classification": {"names": ["Tumor", "Positive"],
                                                                       "color": [1, 2, 3]}}},
        {"type": "Feature", "geometry": {"type": "LineString", "coordinates": [[0, 0], [5, 5]]},
         "properties": {"objectType": "annotation"}},
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [
            [[0, 0], [10, 0], [10, 10], [0, 10], [0, 0]]]},
         "properties": {"metadata": {"cocopath.kind": "roi"}, "classification": {"name": "Region*"}}},
    ]
    path = tmp_path / "qupath.geojson"
    path.write_text(json.dumps(features))  # a bare list of features, as QuPath's script export does
    parsed = read_geojson(path)
    a, b, roi = parsed.annotations
    assert a.uuid == uid and a.locked and a.name == "A" and a.author == "alice"
    assert a.created == 1700000000.5 and a.area == 100 * 100 - 50 and len(a.geometry.interiors) == 1
    assert a.class_name == "Tumor" and parsed.classes[0].color == (200, 0, 0)
    assert b.class_name == "Tumor: Positive" and isinstance(b.geometry, MultiPolygon)
    assert roi.kind is Kind.ROI and roi.class_name is None
    text = " | ".join(parsed.warnings)
    assert "1 skipped: line (not a region)" in text and "1 QuPath detection object(s)" in text

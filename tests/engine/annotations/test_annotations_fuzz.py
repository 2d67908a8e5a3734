"""Fuzzing: thousands of broken inputs at every reader; only CocoPathError (one clear sentence naming
the file) ever comes out, and a failed import leaves the store exactly as it was."""

from __future__ import annotations

import json
import math
import random
import re
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from engine.annotations import Annotation, Project
from engine.annotations.asap_io import read_asap
from engine.annotations.formats import import_file, read_annotations
from engine.annotations.geojson_io import read_geojson
from engine.annotations.imagescope_io import read_imagescope
from engine.errors import CocoPathError
from engine.shared_data import data_path

READERS: dict[str, Callable] = {"geojson": read_geojson, "asap": read_asap,
                                "imagescope": read_imagescope, "auto": read_annotations}
FUZZ = settings(deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])  # autouse env only


def _small_imagescope() -> bytes:
    """A real ImageScope file cut to its first regions (the full files take a second to parse)."""
    root = ET.parse(data_path("annotations", "aperio", "TCGA-B0-5710-01Z-00-DX1.xml")).getroot()
    regions = root.find("./Annotation/Regions")
    for r in regions.findall("./Region")[4:]:
        regions.remove(r)
    return ET.tostring(root)


def _seeds() -> dict[str, bytes]:
    a = ("annotations",)
    return {
        "asap-spline": data_path(*a, "asap", "tissue_annotations", "8_HE_spline.xml").read_bytes(),
        "asap-tissue": data_path(*a, "asap", "tissue_annotations", "normal_042.xml").read_bytes(),
        "geojson": data_path(*a, "geojson", "sample_histomicstk_nuclei_TCGA-02-0010.geojson").read_bytes(),
        "imagescope": _small_imagescope(),
    }


SEEDS = _seeds()


@pytest.fixture(scope="module")
def scratch() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as d:
        yield Path(d)


def _check(reader: Callable, path: Path) -> None:
    """The reader returns valid annotations or raises a CocoPathError naming the file."""
    try:
        parsed = reader(path)
    except CocoPathError as exc:
        text = str(exc)
        assert str(path) in text and "\n" not in text, text
        event("refused with a clear error")
        return
    event("read with annotations" if parsed.annotations else "read, nothing in it")
    for ann in parsed.annotations:
        assert isinstance(ann, Annotation) and ann.geometry.is_valid and ann.area > 0


# -- mutated real files --------------------------------------------------------------------------

mutation = st.one_of(
    st.tuples(st.just("delete"), st.floats(0, 1), st.integers(1, 64)),
    st.tuples(st.just("insert"), st.floats(0, 1), st.binary(min_size=1, max_size=16)),
    st.tuples(st.just("insert"), st.floats(0, 1), st.sampled_from(
        [b"<", b">", b'"', b"NaN", b"-1e999", b"1e400", b"]", b"{", b",", b"null", b"&x;",
         b"<!DOCTYPE a [<!ENTITY x 'y'>]>", b"\x00", b"\xff\xfe", b"Type=\"Spline\"", b"Order=\"x\""])),
    st.tuples(st.just("duplicate"), st.floats(0, 1), st.integers(1, 200)),
    st.tuples(st.just("truncate"), st.floats(0, 1), st.just(0)),
    st.tuples(st.just("number"), st.floats(0, 1), st.sampled_from(
        [b"nan", b"-inf", b"1e999", b"", b"-0", b"1e-320", b"12abc", b"1,5", b"true", b"[]", b"\"7\"",
         b"99999999999999999999999", b"3.4028235e38", b"0x1F"])),
    st.tuples(st.just("number"), st.floats(0, 1), st.integers(-10**6, 10**6).map(lambda v: str(v).encode())),
)
NUMBER = re.compile(rb"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")


def _mutate(data: bytes, ops: list[tuple]) -> bytes:
    for op, where, arg in ops:
        i = int(where * len(data))
        if op == "delete":
            data = data[:i] + data[i + arg:]
        elif op == "insert":
            data = data[:i] + arg + data[i:]
        elif op == "number":  # replace the number nearest after position i: well-formed, bad value
            m = NUMBER.search(data, i) or NUMBER.search(data)
            if m:
                data = data[:m.start()] + arg + data[m.end():]
        elif op == "duplicate":
            data = data[:i] + data[i:i + arg] + data[i:]
        else:
            data = data[:i]
    return data


@settings(FUZZ, max_examples=1200)
@given(seed=st.sampled_from(sorted(SEEDS)), own_reader=st.booleans(),
       ops=st.lists(mutation, min_size=1, max_size=4))
def test_mutated_real_files(scratch: Path, seed: str, own_reader: bool, ops: list[tuple]) -> None:
    path = scratch / "mutated.dat"
    path.write_bytes(_mutate(SEEDS[seed], ops))
    _check(READERS[seed.split("-")[0]] if own_reader else read_annotations, path)


@settings(FUZZ, max_examples=400)
@given(data=st.binary(max_size=512), reader=st.sampled_from(sorted(READERS)))
def test_random_bytes(scratch: Path, data: bytes, reader: str) -> None:
    path = scratch / "random.dat"
    path.write_bytes(data)
    _check(READERS[reader], path)


# -- random JSON structures ----------------------------------------------------------------------

def mostly(good: st.SearchStrategy, bad: st.SearchStrategy) -> st.SearchStrategy:
    """Usually ``good``, sometimes ``bad``: deep structures stay valid long enough to reach the
    code that reads their leaves."""
    return st.sampled_from([True, True, True, False]).flatmap(lambda ok: good if ok else bad)


xml_text = st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=6)
scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8))
json_values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=6), inner, max_size=4)), max_leaves=30)
coordinate = st.floats(-1e4, 1e4)
number = mostly(coordinate, st.one_of(st.integers(-2**70, 2**70), st.floats(), json_values))
position = mostly(st.lists(coordinate, min_size=2, max_size=3),
                  st.one_of(st.lists(number, max_size=4), json_values))


def _star_ring(seed: int) -> list[list[float]]:
    rng = random.Random(seed)
    cx, cy, n = rng.uniform(0, 1e4), rng.uniform(0, 1e4), rng.randint(3, 12)
    angles = sorted(rng.uniform(0, 2 * math.pi) for _ in range(n))
    return [[cx + rng.uniform(5, 500) * math.cos(a), cy + rng.uniform(5, 500) * math.sin(a)]
            for a in angles]


clean_ring = st.one_of(st.integers(0, 2**32).map(_star_ring),
                       st.lists(st.lists(coordinate, min_size=2, max_size=3), min_size=3, max_size=8))
ring = mostly(clean_ring, st.one_of(st.lists(position, min_size=3, max_size=8), json_values))
polygon_coords = mostly(st.lists(ring, min_size=1, max_size=3), json_values)
geometry = st.one_of(
    st.fixed_dictionaries({"type": st.just("Polygon"), "coordinates": polygon_coords}),
    st.fixed_dictionaries({"type": st.just("MultiPolygon"),
                           "coordinates": mostly(st.lists(polygon_coords, max_size=3), json_values)}),
    st.fixed_dictionaries({"type": st.sampled_from(["Point", "LineString", "GeometryCollection",
                                                    "Bogus", "MultiPolygon", "Polygon"]),
                           "coordinates": json_values},
                          optional={"geometries": st.lists(json_values, max_size=3)}))
properties = mostly(st.fixed_dictionaries({}, optional={
    "objectType": st.one_of(st.just("annotation"), json_values),
    "classification": st.one_of(json_values, st.fixed_dictionaries(
        {"name": st.one_of(st.text(max_size=5), json_values),
         "color": st.one_of(st.lists(st.integers(-5, 300), min_size=3, max_size=3), json_values)})),
    "name": json_values, "isLocked": json_values,
    "metadata": st.one_of(json_values, st.fixed_dictionaries(
        {"cocopath.kind": st.sampled_from(["roi", "region", 3]),
         "cocopath.created": st.one_of(st.sampled_from(["1e999", "nan", "12", "x"]), json_values),
         "cocopath.source": json_values}))}), json_values)
feature = mostly(st.fixed_dictionaries(
    {"type": st.just("Feature"), "geometry": mostly(geometry, json_values)},
    optional={"id": st.one_of(st.uuids().map(str), json_values), "properties": properties}),
    json_values)
document = mostly(st.fixed_dictionaries(
    {"type": st.sampled_from(["FeatureCollection", "FeatureCollection", "Feature", "Polygon"]),
     "features": mostly(st.lists(feature, min_size=1, max_size=4), json_values)}),
    st.one_of(json_values, st.lists(feature, max_size=4)))


@settings(FUZZ, max_examples=600)
@given(doc=document)
def test_random_json_structures(scratch: Path, doc: object) -> None:
    path = scratch / "random.geojson"
    path.write_text(json.dumps(doc, allow_nan=True))
    _check(read_geojson, path)
    _check(read_annotations, path)


# -- random XML structures -----------------------------------------------------------------------

attr = st.one_of(st.sampled_from(["0", "1", "2", "5", "-3.5", "1e308", "1e999", "nan", "inf", "",
                                  " 12 ", "0x10", "Polygon", "Spline", "Dot", "None", "#00ff00"]),
                 st.floats(allow_nan=True).map(repr), xml_text)
region_type = st.one_of(st.sampled_from(["Polygon", "Spline", "Rectangle", "Dot", "0", "1", "2",
                                         "3", "5"]), attr)


@st.composite
def xml_documents(draw: st.DrawFn) -> bytes:
    asap = draw(st.booleans())
    root = ET.Element("ASAP_Annotations" if asap else "Annotations",
                      **({} if asap else {"MicronsPerPixel": draw(attr)}))
    parent = ET.SubElement(root, "Annotations") if asap else root
    for _ in range(draw(st.sampled_from([0, 1, 1, 2, 3]))):
        clean = draw(st.sampled_from([True, False]))
        keys = ["Name", "Type", "PartOfGroup", "Color"] if asap else ["Name", "LineColor", "Type"]
        ann = ET.SubElement(parent, "Annotation", {
            k: draw(region_type if k == "Type" else attr) for k in keys if draw(st.integers(0, 3))})
        holder = ET.SubElement(ann, "Coordinates") if asap else ET.SubElement(
            ET.SubElement(ET.SubElement(ann, "Regions"), "Region",
                          {"Type": draw(region_type), "NegativeROA": draw(st.sampled_from(["0", "1", "x"]))}),
            "Vertices")
        for _k in range(draw(mostly(st.integers(3, 7), st.integers(0, 2)))):
            names = ["Order", "X", "Y"] if asap else ["X", "Y", "Z"]
            ET.SubElement(holder, "Coordinate" if asap else "Vertex",
                          {n: draw(coordinate.map(repr) if clean else mostly(coordinate.map(repr), attr))
                           for n in names if clean or draw(st.integers(0, 9))})
    if asap and draw(st.booleans()):
        groups = ET.SubElement(root, "AnnotationGroups")
        ET.SubElement(groups, "Group", Name=draw(attr), Color=draw(attr))
    return ET.tostring(root)


@settings(FUZZ, max_examples=600)
@given(doc=xml_documents(), reader=st.sampled_from(["asap", "imagescope", "auto"]))
def test_random_xml_structures(scratch: Path, doc: bytes, reader: str) -> None:
    path = scratch / "random.xml"
    path.write_bytes(doc)
    _check(READERS[reader], path)


# -- imports are all or nothing ---------------------------------------------------------------

@pytest.fixture(scope="module")
def fuzz_project(tmp_path_factory: pytest.TempPathFactory, small_svs: Path) -> Iterator[Project]:
    with Project.create(tmp_path_factory.mktemp("fuzz") / "p") as p:
        p.add_slide(small_svs)
        yield p


@settings(FUZZ, max_examples=200)
@given(seed=st.sampled_from(sorted(SEEDS)), ops=st.lists(mutation, min_size=1, max_size=3))
def test_failed_imports_change_nothing(fuzz_project: Project, scratch: Path, seed: str,
                                       ops: list[tuple]) -> None:
    store = fuzz_project.store(1)
    before, steps = store.count(), len(store.steps())
    path = scratch / "import.dat"
    path.write_bytes(_mutate(SEEDS[seed], ops))
    try:
        result = import_file(store, path)
    except CocoPathError:
        assert store.count() == before and len(store.steps()) == steps
        return
    assert store.count() == before + result.count
    assert all(math.isfinite(a.area) for a in store.annotations()[before:])

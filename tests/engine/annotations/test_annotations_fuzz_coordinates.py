"""Fuzzing the numbers where a position belongs (issue 13): NaN, infinities, 1e308, integers of
hundreds or thousands of digits, values just beyond ±1e7 px, subnormals, in GeoJSON, ASAP and
ImageScope files. Every outcome is a valid import whose geometry is finite and within the bound, or
a CocoPathError naming the file in one line; never another exception. What is imported exports as
strict JSON (no bare NaN/Infinity)."""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import shapely
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from engine.annotations import Project
from engine.annotations.formats import export_file, import_file, read_annotations
from engine.annotations.model import MAX_COORDINATE, ParsedAnnotations
from engine.errors import CocoPathError

FUZZ = settings(deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])

EDGES = [1e308, -1e308, 1.7976931348623157e308, 5e-324, -0.0, MAX_COORDINATE, -MAX_COORDINATE,
         math.nextafter(MAX_COORDINATE, math.inf), 1e7 + 1, 3.4028235e38, 2.0**53 + 1]
number = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(-2.5e7, 2.5e7),
    st.floats(0, 3000),
    st.integers(-10**400, 10**400),
    st.integers(-3 * 10**7, 3 * 10**7),
    st.sampled_from(EDGES),
)
JSON_LITERALS = ["1" * 5000, "-" + "9" * 400, "1e999", "-1e999", "1E+308", "0.0e-999"]
XML_LITERALS = ["nan", "NaN", "inf", "-inf", "Infinity", "+inf", "1e999", " 1e308 ", "-0",
                "1" * 5000, "1e-400", "0x10", "1_000", "", "١٢"]


def _json_number(v: object) -> str:
    return v if isinstance(v, str) else json.dumps(v)  # NaN / Infinity literals for floats


def _xml_number(v: object) -> str:
    return v if isinstance(v, str) else repr(v)


json_value = st.one_of(number, number, number, st.sampled_from(JSON_LITERALS))
xml_value = st.one_of(number, number, number, st.sampled_from(XML_LITERALS))


def _near(base: float) -> st.SearchStrategy:
    return st.floats(base - 50, base + 50)


@st.composite
def rings(draw: st.DrawFn, value: st.SearchStrategy) -> list[tuple[object, object]]:
    """A ring of 3 to 7 positions: mostly sane around a centre, a few drawn from ``value``."""
    n = draw(st.integers(3, 7))
    cx, cy = draw(st.floats(0, 3000)), draw(st.floats(0, 3000))
    pts: list[tuple[object, object]] = [(draw(_near(cx)), draw(_near(cy))) for _ in range(n)]
    for _ in range(draw(st.integers(0, 2))):
        i, axis = draw(st.integers(0, n - 1)), draw(st.integers(0, 1))
        p = list(pts[i])
        p[axis] = draw(value)
        pts[i] = (p[0], p[1])
    return pts


@st.composite
def geojson_documents(draw: st.DrawFn) -> str:
    features = []
    for _ in range(draw(st.integers(1, 4))):
        polys = [[[f"[{_json_number(x)}, {_json_number(y)}"
                   + (", 0]" if draw(st.booleans()) else "]") for x, y in draw(rings(json_value))]]
                 for _ in range(draw(st.integers(1, 2)))]
        texts = ["[" + ", ".join("[" + ", ".join(r) + "]" for r in p) + "]" for p in polys]
        if len(texts) == 1 and draw(st.booleans()):
            geometry = f'{{"type": "Polygon", "coordinates": {texts[0]}}}'
        else:
            geometry = f'{{"type": "MultiPolygon", "coordinates": [{", ".join(texts)}]}}'
        features.append(f'{{"type": "Feature", "geometry": {geometry}, "properties": {{}}}}')
    return f'{{"type": "FeatureCollection", "features": [{", ".join(features)}]}}'


@st.composite
def asap_documents(draw: st.DrawFn) -> str:
    out = []
    for k in range(draw(st.integers(1, 3))):
        pts = draw(rings(xml_value))
        kind = draw(st.sampled_from(["Polygon", "Rectangle", "Spline"]))
        coords = "".join(f'<Coordinate Order="{i}" X="{_xml_number(x)}" Y="{_xml_number(y)}"/>'
                         for i, (x, y) in enumerate(pts))
        out.append(f'<Annotation Name="a{k}" Type="{kind}" PartOfGroup="g">'
                   f'<Coordinates>{coords}</Coordinates></Annotation>')
    return f"<ASAP_Annotations><Annotations>{''.join(out)}</Annotations></ASAP_Annotations>"


@st.composite
def imagescope_documents(draw: st.DrawFn) -> str:
    regions = []
    for _ in range(draw(st.integers(1, 3))):
        rtype = draw(st.sampled_from(["0", "1", "2", "5"]))
        pts = draw(rings(xml_value))
        negative = "1" if draw(st.integers(0, 4)) == 0 else "0"
        vertices = "".join(f'<Vertex X="{_xml_number(x)}" Y="{_xml_number(y)}"/>' for x, y in pts)
        regions.append(f'<Region Type="{rtype}" NegativeROA="{negative}">'
                       f'<Vertices>{vertices}</Vertices></Region>')
    mpp = _xml_number(draw(xml_value))
    return (f'<Annotations MicronsPerPixel="{mpp}"><Annotation Name="tumour"><Regions>'
            f'{"".join(regions)}</Regions></Annotation></Annotations>')


@pytest.fixture(scope="module")
def scratch() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as d:
        yield Path(d)


def _check(path: Path, read: Callable[[Path], ParsedAnnotations]) -> ParsedAnnotations | None:
    try:
        parsed = read(path)
    except CocoPathError as exc:
        text = str(exc)
        assert str(path) in text and "\n" not in text, text
        event("refused with a clear error")
        return None
    event("imported" if parsed.annotations else "nothing to import")
    for ann in parsed.annotations:
        coords = shapely.get_coordinates(ann.geometry)
        assert np.isfinite(coords).all() and np.abs(coords).max() <= MAX_COORDINATE
        assert math.isfinite(ann.area) and ann.area > 0 and ann.geometry.is_valid
    return parsed


def _fuzz(scratch: Path, name: str, doc: str) -> None:
    path = scratch / name
    path.write_text(doc)
    _check(path, read_annotations)


@settings(FUZZ, max_examples=500)
@given(doc=geojson_documents())
def test_geojson_coordinates(scratch: Path, doc: str) -> None:
    _fuzz(scratch, "fuzz.geojson", doc)


@settings(FUZZ, max_examples=400)
@given(doc=asap_documents())
def test_asap_coordinates(scratch: Path, doc: str) -> None:
    _fuzz(scratch, "fuzz-asap.xml", doc)


@settings(FUZZ, max_examples=400)
@given(doc=imagescope_documents())
def test_imagescope_coordinates(scratch: Path, doc: str) -> None:
    _fuzz(scratch, "fuzz-imagescope.xml", doc)


@pytest.fixture(scope="module")
def fuzz_project(tmp_path_factory: pytest.TempPathFactory, small_svs: Path) -> Iterator[Project]:
    with Project.create(tmp_path_factory.mktemp("fuzzc") / "p") as p:
        p.add_slide(small_svs)
        yield p


def _refuse_constant(name: str) -> None:
    raise AssertionError(f"bare {name} in an exported file")


@settings(FUZZ, max_examples=60)
@given(doc=st.one_of(geojson_documents(), asap_documents(), imagescope_documents()))
def test_what_imports_exports_as_strict_json(fuzz_project: Project, scratch: Path,
                                             doc: str) -> None:
    store = fuzz_project.store(1)
    path = scratch / ("in.geojson" if doc.startswith("{") else "in.xml")
    path.write_text(doc)
    before = store.count(kind=None)
    try:
        result = import_file(store, path)
    except CocoPathError as exc:
        assert "\n" not in str(exc) and store.count(kind=None) == before
        return
    assert store.count(kind=None) == before + result.count
    out = scratch / "out.geojson"
    export_file(store, out)
    doc_out = json.loads(out.read_text(), parse_constant=_refuse_constant)
    assert len(doc_out["features"]) == store.count(kind=None)

"""QuPath GeoJSON in and out; the HistomicsTK / DSA flavour (3-D coordinates) is read too.

QuPath's shape: a FeatureCollection of Features with ``id`` (a UUID), a Polygon or MultiPolygon
geometry, and properties ``objectType: "annotation"``, ``classification: {"name", "color": [r, g,
b]}`` (QuPath throws when ``color`` is missing, so it is always written), optional ``name``,
``isLocked`` and ``measurements`` (written as an object, QuPath ≥ 0.4's form; never read back:
areas are recomputed from the geometry).
What QuPath has no field for (kind, source, author, times) goes into ``properties.metadata`` as
``cocopath.*`` strings: QuPath keeps an annotation's metadata (primitive values) and writes it back,
so these survive a trip through QuPath, and our own files round-trip losslessly.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path

from shapely.geometry import MultiPolygon, Polygon, mapping

from engine.annotations.errors import AnnotationError
from engine.annotations.model import (DEFAULT_COLOR, Annotation, AnnotationClass, Color,
                                      ExportResult, Kind, ParsedAnnotations, Source, parse_uuid)
from engine.annotations.reading import (Collector, Problem, coordinate, decode_text, polygon,
                                        read_bytes, ring)
from engine.annotations.writing import atomic_write_bytes

log = logging.getLogger(__name__)

FORMAT = "GeoJSON"
META = "cocopath."  # prefix of our keys in properties.metadata
MAX_DEPTH = 8  # GeometryCollections nested deeper than this are refused
_SKIPPED_TYPES = {"Point": "point", "MultiPoint": "points", "LineString": "line",
                  "MultiLineString": "lines"}


# -- reading -------------------------------------------------------------------------------------

def read_geojson(path: str | Path) -> ParsedAnnotations:
    """Read a QuPath or HistomicsTK GeoJSON file; malformed input raises AnnotationFormatError."""
    path = Path(path)
    text = decode_text(read_bytes(path), path)
    return parse_geojson(text, path)


def parse_geojson(text: str, path: Path) -> ParsedAnnotations:
    col = Collector(path, FORMAT)
    try:
        doc = json.loads(text, parse_int=_parse_int)
    except json.JSONDecodeError as exc:
        raise col.fail(f"not JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    except RecursionError:
        raise col.fail("JSON nested too deeply") from None
    except (ValueError, MemoryError) as exc:
        raise col.fail(f"unreadable JSON ({type(exc).__name__})") from None
    try:
        for i, feature in enumerate(_features(doc)):
            _read_feature(col, feature, f"feature {i}")
    except Problem as exc:
        raise col.fail(exc) from None
    return col.result()


def _parse_int(text: str) -> int | float:
    """A JSON integer; one of hundreds of digits is a float (infinite: refused where a coordinate
    belongs), not a ValueError from Python's 4300-digit limit on int()."""
    return int(text) if len(text) < 300 else float(text)


def _features(doc: object) -> list:
    if isinstance(doc, list):
        return doc
    if not isinstance(doc, dict):
        raise Problem(f"the top level is a {type(doc).__name__}, not a FeatureCollection")
    kind = doc.get("type")
    if kind == "FeatureCollection":
        feats = doc.get("features")
        if not isinstance(feats, list):
            raise Problem("the FeatureCollection has no list of features")
        return feats
    if kind == "Feature":
        return [doc]
    if kind in ("Polygon", "MultiPolygon", "GeometryCollection"):
        return [{"type": "Feature", "geometry": doc, "properties": {}}]
    raise Problem(f"the top level has type {str(kind)[:40]!r}, not FeatureCollection or Feature")


def _read_feature(col: Collector, feature: object, where: str) -> None:
    if not isinstance(feature, dict):
        raise Problem(f"{where} is a {type(feature).__name__}, not an object")
    geometry = feature.get("geometry")
    if geometry is None:
        col.skipped["feature without geometry"] += 1
        return
    props = feature.get("properties") or {}
    if not isinstance(props, dict):
        raise Problem(f"{where}: properties is a {type(props).__name__}, not an object")
    shapes = _geometry(col, geometry, f"{where} geometry", 0)
    if not shapes:
        return
    shape = shapes[0] if len(shapes) == 1 else MultiPolygon(
        [p for s in shapes for p in (s.geoms if isinstance(s, MultiPolygon) else [s])])
    attrs: dict[str, object] = {}
    uid = parse_uuid(feature.get("id"))
    if uid:
        attrs["uuid"] = uid
    object_type = props.get("objectType", "annotation")
    if object_type not in ("annotation", None):
        kind = str(object_type)[:20].replace("{", "(").replace("}", ")")
        col.noted["{n} QuPath " + kind + " object(s) imported as annotations"] += 1
    cls = _classification(props.get("classification"), where)
    if cls is not None:
        col.add_class(cls)
        attrs["class_name"] = cls.name
    name = props.get("name")
    if isinstance(name, str):
        attrs["name"] = name
    attrs["locked"] = props.get("isLocked") is True
    metadata = props.get("metadata")
    if isinstance(metadata, dict):
        _read_metadata(metadata, attrs)
        if attrs.get("kind") == Kind.ROI:
            attrs.pop("class_name", None)
    col.add(shape, **attrs)


def _geometry(col: Collector, g: object, where: str, depth: int) -> list[Polygon | MultiPolygon]:
    if not isinstance(g, dict):
        raise Problem(f"{where} is a {type(g).__name__}, not an object")
    kind = g.get("type")
    if kind == "GeometryCollection":
        if depth >= MAX_DEPTH:
            raise Problem(f"{where}: geometry collections nested too deeply")
        parts = g.get("geometries")
        if not isinstance(parts, list):
            raise Problem(f"{where}: GeometryCollection without a list of geometries")
        return [s for i, p in enumerate(parts)
                for s in _geometry(col, p, f"{where}[{i}]", depth + 1)]
    coords = g.get("coordinates")
    if kind in _SKIPPED_TYPES:
        col.skipped[f"{_SKIPPED_TYPES[kind]} (not a region)"] += 1
        return []
    if kind == "Polygon":
        p = _polygon(coords, where)
        if p is None:
            col.skipped["outline with fewer than three distinct points"] += 1
        return [p] if p is not None else []
    if kind == "MultiPolygon":
        if not isinstance(coords, list):
            raise Problem(f"{where}: MultiPolygon coordinates are not a list")
        polys = [_polygon(c, f"{where} polygon {i}") for i, c in enumerate(coords)]
        good = [p for p in polys if p is not None]
        if len(good) < len(polys):
            n_bad = len(polys) - len(good)
            col.skipped["polygon part with fewer than three distinct points"] += n_bad
        return [MultiPolygon(good)] if good else []
    raise Problem(f"{where}: unknown geometry type {str(kind)[:40]!r}")


def _polygon(coords: object, where: str) -> Polygon | None:
    if not isinstance(coords, list) or not coords:
        raise Problem(f"{where}: Polygon coordinates are not a list of rings")
    rings = [_ring(r, f"{where} ring {i}") for i, r in enumerate(coords)]
    return polygon(rings[0], rings[1:])


def _ring(r: object, where: str) -> list[tuple[float, float]] | None:
    if not isinstance(r, list):
        raise Problem(f"{where} is not a list of positions")
    pts = []
    for j, pos in enumerate(r):
        if not isinstance(pos, list) or len(pos) < 2:
            raise Problem(f"{where} position {j} is not [x, y] (or [x, y, z])")
        w = f"{where} position {j}"
        pts.append((coordinate(pos[0], w), coordinate(pos[1], w)))
    return ring(pts)


def _color(value: object) -> Color | None:
    if isinstance(value, list) and len(value) >= 3 and all(
            isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in value[:3]):
        return value[0], value[1], value[2]
    if isinstance(value, int) and not isinstance(value, bool):  # QuPath's packed (A)RGB integer
        return (value >> 16) & 255, (value >> 8) & 255, value & 255
    return None


def _classification(c: object, where: str) -> AnnotationClass | None:
    if c is None:
        return None
    if isinstance(c, str):
        return AnnotationClass(c) if c.strip() else None
    if not isinstance(c, dict):
        raise Problem(f"{where}: classification is a {type(c).__name__}, not an object")
    name = c.get("name")
    if not isinstance(name, str) or not name.strip():
        names = c.get("names")  # QuPath's derived classes: ["Tumor", "Positive"]
        if isinstance(names, list) and names and all(isinstance(n, str) and n for n in names):
            name = ": ".join(names)
        else:
            return None
    color = _color(c.get("color")) or _color(c.get("colorRGB")) or DEFAULT_COLOR
    return AnnotationClass(name, color)


def _read_metadata(metadata: dict, attrs: dict[str, object]) -> None:
    """Our fields from QuPath metadata (strings once QuPath has re-saved them; tolerate numbers)."""
    get = {k.removeprefix(META): v for k, v in metadata.items()
           if isinstance(k, str) and k.startswith(META)}
    if get.get("kind") in ("region", "roi"):
        attrs["kind"] = Kind(get["kind"])
    if get.get("source") in ("pathologist", "model"):
        attrs["source"] = Source(get["source"])
    if isinstance(get.get("author"), str):
        attrs["author"] = get["author"]
    for key in ("created", "modified"):
        v = get.get(key)
        try:
            t = float(v) if isinstance(v, (str, int, float)) and not isinstance(v, bool) else None
        except ValueError:
            t = None
        if t is not None and math.isfinite(t) and abs(t) < 1e12:
            attrs[key] = t


# -- writing -------------------------------------------------------------------------------------

def feature(ann: Annotation, classes: dict[str, AnnotationClass],
            mpp: tuple[float, float] | None = None) -> dict:
    """One annotation as a QuPath GeoJSON Feature."""
    props: dict[str, object] = {"objectType": "annotation"}
    if ann.class_name is not None:
        cls = classes.get(ann.class_name) or AnnotationClass(ann.class_name)
        props["classification"] = {"name": cls.name, "color": list(cls.color)}
    if ann.name:
        props["name"] = ann.name
    props["isLocked"] = ann.locked
    measurements = {"Area px^2": ann.area}
    if mpp:
        measurements["Area µm^2"] = ann.area * mpp[0] * mpp[1]
    props["measurements"] = measurements
    props["metadata"] = {f"{META}kind": ann.kind.value, f"{META}source": ann.source.value,
                         f"{META}author": ann.author, f"{META}created": repr(ann.created),
                         f"{META}modified": repr(ann.modified)}
    return {"type": "Feature", "id": ann.uuid, "geometry": mapping(ann.geometry),
            "properties": props}


def strict_json(doc: object, path: Path) -> str:
    """``doc`` as strict JSON: a NaN or an infinity (which QuPath and other strict readers refuse)
    is an AnnotationError naming ``path``, never a bare ``NaN``/``Infinity`` in the file."""
    try:
        return json.dumps(doc, ensure_ascii=False, allow_nan=False)
    except ValueError:
        raise AnnotationError(f"{path}: not written: a coordinate or a measurement is not a finite "
                              f"number, which JSON cannot hold") from None


def write_geojson(path: str | Path, annotations: Sequence[Annotation],
                  classes: Sequence[AnnotationClass], mpp: tuple[float, float] | None = None
                  ) -> ExportResult:
    """Write QuPath GeoJSON (atomically: a partial file never replaces a good one)."""
    path = Path(path)
    by_name = {c.name: c for c in classes}
    doc = {"type": "FeatureCollection", "features": [feature(a, by_name, mpp) for a in annotations]}
    warnings = []
    used = {a.class_name for a in annotations}
    if any(c.shortcut for c in classes if c.name in used):
        warnings.append("class shortcuts are not stored in GeoJSON")
    atomic_write_bytes(path, strict_json(doc, path).encode("utf-8"))
    return ExportResult(str(path), FORMAT, len(annotations), tuple(warnings))



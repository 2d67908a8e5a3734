"""Aperio ImageScope XML in (read only).

    <Annotations MicronsPerPixel="0.2468">
      <Annotation Id="1" Name="" LineColor="65280" Type="4">
        <Regions>
          <Region Id="1" Type="0" NegativeROA="0"> <Vertices><Vertex X="75" Y="929"/> …</Vertices>
        </Regions>
      </Annotation>
    </Annotations>

Each Annotation is a layer; a named layer becomes a class (unnamed ones leave regions unclassified).
Region types: 0 free-hand, 1 rectangle, 2 ellipse (two corner vertices), 5 polygon; 3 arrow, 4 ruler
and 6 pin are not regions and are skipped. A negative region (``NegativeROA="1"``) is cut out of the
layer's regions that it overlaps. ``LineColor`` is a BGR integer.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from pathlib import Path

from shapely.geometry import Polygon

from engine.annotations.model import AnnotationClass, Color, ParsedAnnotations, polygonal
from engine.annotations.reading import (Collector, Problem, coordinate, number, parse_xml, polygon,
                                        read_bytes, ring)

FORMAT = "ImageScope XML"
AREA_TYPES = {"0": "free-hand", "1": "rectangle", "2": "ellipse", "5": "polygon"}
SKIPPED_TYPES = {"3": "arrow", "4": "ruler", "6": "pin"}
ELLIPSE_SEGMENTS = 64


def read_imagescope(path: str | Path) -> ParsedAnnotations:
    path = Path(path)
    return parse_imagescope(parse_xml(read_bytes(path), path), path)


def _bgr(value: str | None) -> Color | None:
    try:
        v = int(value or "")
    except ValueError:
        return None
    if not 0 <= v <= 0xFFFFFF:
        return None
    return v & 255, (v >> 8) & 255, (v >> 16) & 255


def parse_imagescope(root: ET.Element, path: Path) -> ParsedAnnotations:
    col = Collector(path, FORMAT)
    if root.tag != "Annotations":
        raise col.fail(f"the root element is <{root.tag[:40]}>, not <Annotations>")
    mpp = root.get("MicronsPerPixel")
    try:
        if mpp:
            value = number(mpp, "MicronsPerPixel")
            col.mpp = value if value > 0 else None
        for i, layer in enumerate(root.iterfind("./Annotation")):
            _read_layer(col, layer, f"annotation {i}")
    except Problem as exc:
        raise col.fail(exc) from None
    return col.result()


def _read_layer(col: Collector, layer: ET.Element, where: str) -> None:
    name = (layer.get("Name") or "").strip()
    class_name = None
    if name:
        col.add_class(AnnotationClass(name, _bgr(layer.get("LineColor")) or (255, 0, 0)))
        class_name = name
    positive: list[Polygon | None] = []
    negative: list[Polygon] = []
    for j, region in enumerate(layer.iterfind("./Regions/Region")):
        w = f"{where} region {j}"
        rtype = (region.get("Type") or "0").strip()
        if rtype in SKIPPED_TYPES:
            col.skipped[f"{SKIPPED_TYPES[rtype]} (not a region)"] += 1
            continue
        if rtype not in AREA_TYPES:
            col.skipped[f"region of unknown type {rtype[:10]!r}"] += 1
            continue
        pts = [(coordinate(v.get("X"), f"{w} vertex {k} X"),
                coordinate(v.get("Y"), f"{w} vertex {k} Y"))
               for k, v in enumerate(region.iterfind("./Vertices/Vertex"))]
        shape = _ellipse(pts) if rtype == "2" else polygon(ring(pts))
        if region.get("NegativeROA") == "1":
            if shape is not None:
                negative.append(shape)
            continue
        positive.append(shape)
    for shape in positive:
        if shape is not None and negative:
            shape = polygonal(shape)
            for cut in negative:
                if not shape.is_empty and shape.intersects(cut):
                    shape = polygonal(shape.difference(polygonal(cut)))
            if shape.is_empty:
                col.skipped["region cut away entirely by negative regions"] += 1
                continue
        col.add(shape, class_name=class_name)
    if negative:
        col.notes.append(f"{len(negative)} negative region(s) of {where} cut out of its regions")


def _ellipse(pts: list[tuple[float, float]]) -> Polygon | None:
    if len(pts) < 2:
        return None
    (x0, y0), (x1, y1) = pts[0], pts[1]
    cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, abs(x1 - x0) / 2, abs(y1 - y0) / 2
    if rx == 0 or ry == 0:
        return None
    t = [2 * math.pi * k / ELLIPSE_SEGMENTS for k in range(ELLIPSE_SEGMENTS)]
    return Polygon([(cx + rx * math.cos(a), cy + ry * math.sin(a)) for a in t])

"""ASAP XML in and out (the format of ASAP and the CAMELYON challenges).

    <ASAP_Annotations>
      <Annotations>
        <Annotation Name="Tumor1" Type="Polygon" PartOfGroup="metastasis" Color="#00aa00">
          <Coordinates><Coordinate Order="0" X="11347" Y="29510.8" /> …</Coordinates>
        </Annotation>
      </Annotations>
      <AnnotationGroups>
        <Group Name="metastasis" PartOfGroup="None" Color="#64FE2E" />
      </AnnotationGroups>
    </ASAP_Annotations>

Groups are classes. Polygon, Rectangle and Spline annotations are regions (a Spline is read as the
polygon through its control points: ASAP's curve passes through them, so the area differs slightly);
points and measurements are skipped. ASAP has one ring per annotation: on export a MultiPolygon
becomes one Annotation per part, all named with the annotation's id so they merge again on import,
and holes are filled (said in the warnings). Correction ROIs go to the group ``cocopath-roi``.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

from shapely.geometry import MultiPolygon, Polygon

from engine.annotations.model import (Annotation, AnnotationClass, ExportResult, Kind,
                                      ParsedAnnotations, color_from_hex, color_to_hex, parse_uuid)
from engine.annotations.reading import (Collector, Problem, coordinate, number, parse_xml, polygon,
                                        read_bytes, ring)
from engine.annotations.writing import atomic_write_bytes

FORMAT = "ASAP XML"
ROI_GROUP = "cocopath-roi"
REGION_TYPES = {"polygon", "rectangle", "spline"}
NO_GROUP = {"", "none"}


def read_asap(path: str | Path) -> ParsedAnnotations:
    path = Path(path)
    return parse_asap(parse_xml(read_bytes(path), path), path)


def parse_asap(root: ET.Element, path: Path) -> ParsedAnnotations:
    col = Collector(path, FORMAT)
    if root.tag != "ASAP_Annotations":
        raise col.fail(f"the root element is <{root.tag[:40]}>, not <ASAP_Annotations>")
    try:
        groups = _groups(root)
        for g in groups.values():
            col.add_class(g)
        merged: dict[str, list[Polygon]] = {}
        first: dict[str, dict[str, object]] = {}
        for i, el in enumerate(root.iterfind("./Annotations/Annotation")):
            _read_annotation(col, el, f"annotation {i}", groups, merged, first)
        for uid, parts in merged.items():
            geometry = parts[0] if len(parts) == 1 else MultiPolygon(parts)
            col.add(geometry, **first[uid])
    except Problem as exc:
        raise col.fail(exc) from None
    spline = sum(1 for el in root.iterfind("./Annotations/Annotation")
                 if el.get("Type", "").lower() == "spline")
    if spline:
        col.notes.append(f"{spline} spline(s) read as polygons through their control points")
    return col.result()


def _groups(root: ET.Element) -> dict[str, AnnotationClass]:
    out = {}
    for g in root.iterfind("./AnnotationGroups/Group"):
        name = (g.get("Name") or "").strip()
        if name and name.lower() not in NO_GROUP and name != ROI_GROUP:
            out[name] = AnnotationClass(name, color_from_hex(g.get("Color", "")) or (255, 0, 0))
    return out


def _read_annotation(col: Collector, el: ET.Element, where: str, groups: dict[str, AnnotationClass],
                     merged: dict[str, list[Polygon]], first: dict[str, dict[str, object]]) -> None:
    kind = (el.get("Type") or "Polygon").strip()
    if kind.lower() not in REGION_TYPES:
        col.skipped[f"{kind[:30]} annotation (not a region)"] += 1
        return
    coords = []
    for j, c in enumerate(el.iterfind("./Coordinates/Coordinate")):
        w = f"{where} coordinate {j}"
        order = c.get("Order")
        coords.append((number(order, w + " Order") if order is not None else float(j),
                       coordinate(c.get("X"), w + " X"), coordinate(c.get("Y"), w + " Y")))
    coords.sort(key=lambda t: t[0])
    shape = polygon(ring([(x, y) for _, x, y in coords]))
    group = (el.get("PartOfGroup") or "").strip()
    attrs: dict[str, object] = {}
    name = el.get("Name") or ""
    uid = parse_uuid(name)
    if uid:
        attrs["uuid"] = uid
    else:
        attrs["name"] = name
    if group == ROI_GROUP:
        attrs["kind"] = Kind.ROI
    elif group.lower() not in NO_GROUP:
        if group not in groups:
            color = color_from_hex(el.get("Color", "")) or (255, 0, 0)
            groups[group] = AnnotationClass(group, color)
            col.add_class(groups[group])
        attrs["class_name"] = group
    if uid is None or shape is None:
        col.add(shape, **attrs)
        return
    if uid in first and first[uid] != attrs:
        raise Problem(f"{where}: parts named {uid} belong to different groups")
    first.setdefault(uid, attrs)
    merged.setdefault(uid, []).append(shape)


# -- writing -------------------------------------------------------------------------------------

def _fmt(v: float) -> str:
    return repr(float(v)).removesuffix(".0") if float(v).is_integer() else repr(float(v))


def write_asap(path: str | Path, annotations: Sequence[Annotation],
               classes: Sequence[AnnotationClass]) -> ExportResult:
    """Write ASAP XML; what ASAP cannot hold is listed in the result's warnings."""
    path = Path(path)
    by_name = {c.name: c for c in classes}
    root = ET.Element("ASAP_Annotations")
    anns_el = ET.SubElement(root, "Annotations")
    holes = multi = 0
    for ann in annotations:
        g = ann.geometry
        polys = list(g.geoms) if isinstance(g, MultiPolygon) else [g]
        multi += len(polys) > 1
        holes += sum(len(p.interiors) for p in polys)
        group = ROI_GROUP if ann.is_roi else (ann.class_name or "None")
        cls = by_name.get(ann.class_name or "")
        color = color_to_hex(cls.color) if cls else "#ff0000"
        for p in polys:
            a = ET.SubElement(anns_el, "Annotation", Name=ann.uuid, Type="Polygon",
                              PartOfGroup=group, Color=color)
            cs = ET.SubElement(a, "Coordinates")
            for k, (x, y) in enumerate(list(p.exterior.coords)[:-1]):
                ET.SubElement(cs, "Coordinate", Order=str(k), X=_fmt(x), Y=_fmt(y))
    groups_el = ET.SubElement(root, "AnnotationGroups")
    used = []
    for ann in annotations:
        g = ROI_GROUP if ann.is_roi else ann.class_name
        if g is not None and g not in used:
            used.append(g)
    for g in used:
        cls = by_name.get(g)
        color = color_to_hex(cls.color) if cls else ("#ffff00" if g == ROI_GROUP else "#ff0000")
        el = ET.SubElement(groups_el, "Group", Name=g, PartOfGroup="None", Color=color)
        ET.SubElement(el, "Attributes")
    ET.indent(root)
    atomic_write_bytes(path, ET.tostring(root, encoding="utf-8", xml_declaration=True))
    warnings = ["ASAP XML does not store names, sources, authors, times, locks or class shortcuts "
                "(ids are kept in the Name attribute)"]
    if holes:
        warnings.append(f"ASAP XML has no holes: {holes} hole(s) were filled")
    if multi:
        warnings.append(f"{multi} multi-part annotation(s) written as one ASAP annotation per part "
                        f"(same Name; CoCoPath merges them back, ASAP shows them apart)")
    return ExportResult(str(path), FORMAT, len(annotations), tuple(warnings))

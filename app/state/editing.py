"""What each annotation tool does to the annotations, as plain values (no Qt, no database).

Every function takes the annotations a gesture touches (the caller asks the store for them) and
returns an :class:`Edit`: the (before, after) pairs and the label of one journalled step, or None when
the gesture changes nothing. Coordinates are level-0 pixels throughout.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import time

import shapely
from shapely.geometry import LineString, MultiPolygon, Point, Polygon
from shapely.geometry.base import BaseGeometry

from engine.api import Annotation, AnnotationClass, Kind, polygonal

Pair = tuple[Annotation | None, Annotation | None]

#: Pieces smaller than this (level-0 px²) left by a subtraction are dropped, not kept as specks.
MIN_AREA = 1.0


@dataclass(frozen=True)
class Edit:
    """One undoable step: a label for the Edit menu and the changes, as the store's ``edit`` takes
    (with the classes the project gains in the same step, an accepted prediction's say)."""

    label: str
    pairs: tuple[Pair, ...]
    classes: tuple[AnnotationClass, ...] = ()


def stroke_shape(points: Sequence[tuple[float, float]], radius: float) -> Polygon | MultiPolygon:
    """A brush stroke through ``points`` with a round tip of ``radius`` (level-0 px)."""
    if radius <= 0:
        raise ValueError("brush radius must be positive")
    pts = [tuple(map(float, p)) for p in points]
    unique = list(dict.fromkeys(pts))
    geom: BaseGeometry = Point(unique[0]) if len(unique) == 1 else LineString(pts)
    return polygonal(geom.buffer(radius, quad_segs=8))


def _clean(geom: BaseGeometry) -> Polygon | MultiPolygon | None:
    """``geom`` as a valid polygonal shape without specks, or None when nothing with area is left."""
    poly = polygonal(geom)
    if isinstance(poly, MultiPolygon):
        parts = [p for p in poly.geoms if p.area >= MIN_AREA]
        poly = MultiPolygon(parts) if len(parts) > 1 else (parts[0] if parts else Polygon())
    return None if poly.is_empty or poly.area < MIN_AREA else poly


def _editable(anns: Sequence[Annotation], shape: BaseGeometry, kind: Kind,
              class_name: str | None = None, any_class: bool = False) -> list[Annotation]:
    return [a for a in anns if a.kind is kind and not a.locked
            and (any_class or a.class_name == class_name) and a.geometry.intersects(shape)]


def add_shape(shape: BaseGeometry, class_name: str | None, touching: Sequence[Annotation],
              author: str, kind: Kind = Kind.REGION, label: str = "brush",
              merge: bool = True) -> Edit | None:
    """Add ``shape`` as the class's region: unioned into the unlocked annotations of the same class
    (and kind) it overlaps, which become one (the oldest keeps its id), or a new annotation."""
    geom = _clean(shape)
    if geom is None:
        return None
    if kind is Kind.ROI:
        class_name = None
    same = _editable(touching, geom, kind, class_name) if merge else []
    if not same:
        return Edit(label, ((None, Annotation(geom, class_name, kind=kind, author=author)),))
    target, others = same[0], same[1:]
    union = _clean(shapely.union_all([geom, *(a.geometry for a in same)]))
    if union is None:  # cannot happen for a union of shapes with area; be safe anyway
        return None
    pairs: list[Pair] = [(target, target.evolve(modified=time.time(), geometry=union))]
    pairs += [(a, None) for a in others]
    return Edit(label, tuple(pairs))


def subtract_shape(shape: BaseGeometry, touching: Sequence[Annotation], class_name: str | None,
                   any_class: bool, label: str = "erase") -> Edit | None:
    """Cut ``shape`` out of the unlocked regions it overlaps (only ``class_name``'s unless
    ``any_class``); annotations with nothing left are deleted."""
    geom = polygonal(shape)
    pairs: list[Pair] = []
    for a in _editable(touching, geom, Kind.REGION, class_name, any_class):
        rest = _clean(a.geometry.difference(geom))
        now = time.time()
        pairs.append((a, None) if rest is None else (a, a.evolve(modified=now, geometry=rest)))
    pairs = [(b, a) for b, a in pairs if a is None or not a.geometry.equals(b.geometry)]
    return Edit(label, tuple(pairs)) if pairs else None


def clip_edit(edit: Edit, limit: BaseGeometry) -> Edit | None:
    """``edit`` with every new or changed outline cut to ``limit`` (the slide); an annotation with
    nothing left inside is deleted (or, if new, not added)."""
    pairs: list[Pair] = []
    for before, after in edit.pairs:
        if after is not None and not limit.contains(after.geometry):
            rest = _clean(after.geometry.intersection(limit))
            after = after.evolve(modified=time.time(), geometry=rest) if rest is not None else None
        if before is not None or after is not None:
            pairs.append((before, after))
    return Edit(edit.label, tuple(pairs), edit.classes) if pairs else None


def translate(ann: Annotation, dx: float, dy: float) -> Edit | None:
    if ann.locked or (dx == 0 and dy == 0):
        return None
    moved = shapely.transform(ann.geometry, lambda c: c + (dx, dy))
    return Edit("move annotation", ((ann, ann.evolve(modified=time.time(), geometry=moved)),))


def merge(anns: Sequence[Annotation]) -> Edit | None:
    """Union several annotations into the first (its class and id); the others are deleted."""
    anns = [a for a in anns if not a.locked]
    if len(anns) < 2:
        return None
    union = _clean(shapely.union_all([a.geometry for a in anns]))
    if union is None:
        return None
    first = anns[0]
    pairs: list[Pair] = [(first, first.evolve(modified=time.time(), geometry=union))]
    pairs += [(a, None) for a in anns[1:]]
    return Edit(f"merge {len(anns)} annotations", tuple(pairs))


def delete(anns: Sequence[Annotation]) -> Edit | None:
    anns = [a for a in anns if not a.locked]
    if not anns:
        return None
    label = "delete annotation" if len(anns) == 1 else f"delete {len(anns)} annotations"
    return Edit(label, tuple((a, None) for a in anns))


def reclass(anns: Sequence[Annotation], class_name: str) -> Edit | None:
    now = time.time()
    pairs = tuple((a, a.evolve(class_name=class_name, modified=now)) for a in anns
                  if not a.locked and a.kind is Kind.REGION and a.class_name != class_name)
    return Edit(f"set class {class_name}", pairs) if pairs else None


def hit(anns: Sequence[Annotation], x: float, y: float, tolerance: float = 0.0,
        kind: Kind | None = Kind.REGION) -> Annotation | None:
    """The annotation under (x, y): the newest one containing it (else the nearest within
    ``tolerance``)."""
    pt = Point(x, y)
    cands = [a for a in anns if kind is None or a.kind is kind]
    for a in reversed(cands):
        if a.geometry.covers(pt):
            return a
    if tolerance > 0:
        near = [(a.geometry.distance(pt), i) for i, a in enumerate(cands)]
        near = [(d, i) for d, i in near if d <= tolerance]
        if near:
            return cands[min(near)[1]]
    return None


def fill_at(x: float, y: float, nearby: Sequence[Annotation], class_name: str | None,
            author: str) -> Edit | None:
    """Flood the region under (x, y) into an annotation.

    * Inside a hole of a region: the hole is filled (the enclosing annotation grows into it).
    * Else inside a correction ROI: the unannotated part of the ROI around the click becomes a new
      annotation of ``class_name`` (merged with same-class neighbours it touches).
    * Elsewhere: None (the *fill from prediction* tool floods the model's predicted regions).
    """
    pt = Point(x, y)
    regions = [a for a in nearby if a.kind is Kind.REGION]
    best: tuple[float, Annotation, Polygon] | None = None
    for a in regions:
        if a.locked or a.geometry.covers(pt):
            continue
        polys = a.geometry.geoms if isinstance(a.geometry, MultiPolygon) else [a.geometry]
        for poly in polys:
            for ring in poly.interiors:
                hole = Polygon(ring)
                if hole.covers(pt) and (best is None or hole.area < best[0]):
                    best = (hole.area, a, hole)
    if best is not None:
        _, a, hole = best
        filled = _clean(a.geometry.union(hole))
        if filled is not None:
            return Edit("fill hole", ((a, a.evolve(modified=time.time(), geometry=filled)),))
    if any(a.geometry.covers(pt) for a in regions):
        return None  # already annotated here
    roi = next((a for a in reversed(nearby) if a.kind is Kind.ROI and a.geometry.covers(pt)), None)
    if roi is None or class_name is None:
        return None
    taken = [a.geometry for a in regions if a.geometry.intersects(roi.geometry)]
    free = roi.geometry.difference(shapely.union_all(taken)) if taken else roi.geometry
    free = polygonal(free)
    parts = free.geoms if isinstance(free, MultiPolygon) else [free]
    region = next((p for p in parts if p.covers(pt)), None)
    if region is None:
        return None
    return add_shape(region, class_name, regions, author, label="fill")

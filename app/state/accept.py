"""Accepting the model's prediction into annotations, as plain values (no Qt, no database).

The engine gives the predicted shapes (:func:`engine.api.prediction_in_region`,
:func:`engine.api.prediction_component_at`); this module decides what they become:

* each model class goes to the project class of the same name (case and the tumor/tumour spelling
  aside); a model class the project lacks is created, in the model's colour, with the edit;
* what the pathologist already drew wins: predicted shapes are cut where annotations of another
  class (or locked ones) lie, and join the unlocked annotations of their own class they touch
  (which become one, the first keeping its id), like a brush stroke;
* the rest become new annotations (source *model*, author the model and its version).

All of it is one :class:`~app.state.editing.Edit`: one journalled step, one undo.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence

import shapely
from shapely import STRtree
from shapely.geometry import MultiPolygon, Polygon
from shapely.geometry.base import BaseGeometry

from app.state.editing import MIN_AREA, Edit, Pair
from engine.api import Annotation, AnnotationClass, Kind, Source, polygonal

Shapes = tuple[str, Sequence[BaseGeometry]]  # (project class name, predicted polygons)

#: Most cache pixels read to accept a region or fill a component (4 Mpx, twice the pixels of a
#: 1920×1080 view; a larger region is read at a coarser cache level, still finer than the screen).
#: Vectorising 4 Mpx of a dense prediction (random blobs over half the area) takes seconds on this
#: 2-core machine under load; real predictions have far less outline.
MAX_PIXELS = 1 << 22


def _key(name: str) -> str:
    return re.sub(r"\btumor", "tumour", name.strip().casefold())


def match_class(name: str, classes: Sequence[AnnotationClass]) -> AnnotationClass | None:
    """The project class a model class is accepted as: same name, ignoring case and tumor/tumour."""
    key = _key(name)
    return next((c for c in classes if _key(c.name) == key), None)


def target_classes(model_classes: Sequence[str], project_classes: Sequence[AnnotationClass],
                   colors: Sequence[tuple[int, int, int]]) -> tuple[list[str], list[AnnotationClass]]:
    """(project class name for each model class, the classes the project must gain)."""
    names: list[str] = []
    new: list[AnnotationClass] = []
    for i, name in enumerate(model_classes):
        cls = match_class(name, [*project_classes, *new])
        if cls is None:
            cls = AnnotationClass(name.strip() or f"class {i + 1}", tuple(colors[i % len(colors)]))
            new.append(cls)
        names.append(cls.name)
    return names, new


def _parts(geom: BaseGeometry) -> list[Polygon]:
    g = polygonal(geom)
    parts = list(g.geoms) if isinstance(g, MultiPolygon) else [g]
    return [p for p in parts if not p.is_empty and p.area >= MIN_AREA]


def _cut(polys: Sequence[BaseGeometry], keep_out: Sequence[BaseGeometry]) -> list[Polygon]:
    """``polys`` minus ``keep_out``, as polygons (specks dropped)."""
    pieces = [p for g in polys for p in _parts(g)]
    if not keep_out or not pieces:
        return pieces
    tree = STRtree(keep_out)
    out: list[Polygon] = []
    for p in pieces:
        hit = tree.query(p, predicate="intersects")
        out += _parts(p.difference(shapely.union_all([keep_out[i] for i in hit]))) if len(hit) else [p]
    return out


def accept_shapes(shapes: Sequence[Shapes], touching: Sequence[Annotation], author: str,
                  label: str, classes: Sequence[AnnotationClass] = (),
                  single: bool = False) -> Edit | None:
    """The edit that accepts predicted ``shapes`` (per class) given the annotations they may meet.

    ``single``: the new pieces of a class make one annotation (a filled component) instead of one
    each. ``classes``: classes to create with the edit. None when nothing would change.
    """
    regions = [a for a in touching if a.kind is Kind.REGION]
    now = time.time()
    pairs: list[Pair] = []
    for class_name, polys in shapes:
        pieces = _cut(polys, [a.geometry for a in regions if a.class_name != class_name or a.locked])
        if not pieces:
            continue
        same = [a for a in regions if a.class_name == class_name and not a.locked]
        n = len(pieces)
        parent = list(range(n + len(same)))

        def find(i: int) -> int:
            while parent[i] != i:
                parent[i] = parent[parent[i]]
                i = parent[i]
            return i

        tree = STRtree(pieces)
        for j, a in enumerate(same):
            for i in tree.query(a.geometry, predicate="intersects"):
                ri, rj = find(int(i)), find(n + j)
                if ri != rj:
                    parent[ri] = rj
        groups: dict[int, list[int]] = {}
        for k in range(n + len(same)):
            groups.setdefault(find(k), []).append(k)
        fresh: list[Polygon] = []
        for members in groups.values():
            anns = [same[k - n] for k in members if k >= n]
            pcs = [pieces[k] for k in members if k < n]
            if not pcs:
                continue
            if not anns:
                fresh += pcs
                continue
            target = anns[0]
            union = polygonal(shapely.union_all([a.geometry for a in anns] + pcs))
            if len(anns) == 1 and union.equals(target.geometry):
                continue  # already annotated as predicted
            pairs.append((target, target.evolve(geometry=union, modified=now)))
            pairs += [(a, None) for a in anns[1:]]
        news = [polygonal(shapely.union_all(fresh))] if single and fresh else fresh
        pairs += [(None, Annotation(g, class_name, source=Source.MODEL, author=author))
                  for g in news if not g.is_empty]
    used = {after.class_name for _, after in pairs if after is not None}
    return Edit(label, tuple(pairs), tuple(c for c in classes if c.name in used)) if pairs else None


def model_label(meta: dict, version: str) -> str:
    """Who drew accepted shapes: the model's name and version (a prediction cache's card)."""
    name = str((meta.get("model") or {}).get("name") or "model")
    return f"{name} {version}"


def accepted_counts(pairs: Sequence[Pair]) -> tuple[int, int]:
    """(new annotations, annotations of the pathologist's that grew) in an accepted edit."""
    new = sum(1 for b, a in pairs if b is None and a is not None)
    grown = sum(1 for b, a in pairs if b is not None and a is not None)
    return new, grown

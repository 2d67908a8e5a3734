"""Value types of the annotation engine: annotations, classes, and what readers and writers return.

Geometry is shapely, in level-0 pixel coordinates of the slide (x right, y down). An
:class:`Annotation` is always a valid, non-empty Polygon or MultiPolygon: ``__post_init__`` repairs
invalid input with ``make_valid``, keeps only its polygonal parts, and refuses what is left empty.
"""

from __future__ import annotations

import math
import re
import time
import uuid as uuid_module
from dataclasses import dataclass, field, replace
from enum import Enum

import numpy as np
import shapely
from shapely.geometry import MultiPolygon, Polygon
from shapely.geometry.base import BaseGeometry

from engine.annotations.errors import AnnotationError

Color = tuple[int, int, int]

#: Coordinates are level-0 pixels; the largest slides are about 250 000 pixels wide, so a position
#: beyond ±10 million pixels is nonsense (or an attack: 1e308 makes areas infinite).
MAX_COORDINATE = 1e7

#: Colour given to classes that arrive without one.
DEFAULT_COLOR: Color = (255, 0, 0)


class Source(str, Enum):
    """Who drew an annotation: a pathologist, or a model whose prediction was accepted."""

    PATHOLOGIST = "pathologist"
    MODEL = "model"


class Kind(str, Enum):
    """A class region, or a correction ROI (an area a pathologist reviewed; see ``rois.py``)."""

    REGION = "region"
    ROI = "roi"


def polygonal(geometry: BaseGeometry) -> Polygon | MultiPolygon:
    """The polygonal part of ``geometry`` made valid: a Polygon, a MultiPolygon or an empty Polygon.

    Lines and points that ``make_valid`` may produce (a ring folded onto itself) are dropped.
    """
    if geometry is None or geometry.is_empty:
        return Polygon()
    if not geometry.is_valid:
        geometry = shapely.make_valid(geometry)
    parts: list[Polygon] = []
    stack = [geometry]
    while stack:
        g = stack.pop()
        if isinstance(g, Polygon):
            if not g.is_empty and g.area > 0:
                parts.append(g)
        elif hasattr(g, "geoms"):
            stack.extend(reversed(list(g.geoms)))
    if not parts:
        return Polygon()
    if len(parts) == 1:
        return parts[0]
    multi = MultiPolygon(parts)
    if not multi.is_valid:  # parts of a collection may touch along edges: merge them
        merged = shapely.unary_union(parts)
        return merged if isinstance(merged, (Polygon, MultiPolygon)) else polygonal(merged)
    return multi


def coordinate_problem(geometry: BaseGeometry) -> str | None:
    """None when every coordinate of ``geometry`` is a finite number within ±:data:`MAX_COORDINATE`
    pixels (so every area is finite too); else what is wrong, to follow "coordinates must be"."""
    coords = shapely.get_coordinates(geometry)
    if not np.isfinite(coords).all():
        return "finite numbers"
    if coords.size and np.abs(coords).max() > MAX_COORDINATE:
        return (f"finite positions within ±{MAX_COORDINATE:,.0f} pixels, not "
                f"{np.abs(coords).max():g}")
    return None


def new_uuid() -> str:
    return str(uuid_module.uuid4())


def parse_uuid(text: object) -> str | None:
    """``text`` as a canonical lower-case UUID string, or None when it is not a UUID."""
    if not isinstance(text, str):
        return None
    try:
        return str(uuid_module.UUID(text))
    except ValueError:
        return None


_HEX = re.compile(r"^#?([0-9a-fA-F]{6})$")


def color_from_hex(text: str) -> Color | None:
    m = _HEX.match(text.strip()) if isinstance(text, str) else None
    if not m:
        return None
    v = int(m.group(1), 16)
    return (v >> 16) & 255, (v >> 8) & 255, v & 255


def color_to_hex(color: Color) -> str:
    return "#{:02x}{:02x}{:02x}".format(*color)


def _check_color(color: object) -> Color:
    if (not isinstance(color, tuple) or len(color) != 3
            or not all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 255
                       for c in color)):
        raise AnnotationError(f"colour {color!r} is not three integers 0–255")
    return color


@dataclass(frozen=True)
class AnnotationClass:
    """A class a region can belong to: its name, display colour, and an optional key shortcut."""

    name: str
    color: Color = DEFAULT_COLOR
    shortcut: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise AnnotationError("a class needs a non-empty name")
        _check_color(self.color)
        if self.shortcut is not None and (not isinstance(self.shortcut, str) or not self.shortcut):
            raise AnnotationError(f"class {self.name!r}: shortcut must be a non-empty string "
                                  f"or None")


@dataclass(frozen=True)
class Annotation:
    """One region (or correction ROI) on one slide; geometry in level-0 pixels, always valid."""

    geometry: Polygon | MultiPolygon
    class_name: str | None = None
    uuid: str = field(default_factory=new_uuid)
    kind: Kind = Kind.REGION
    source: Source = Source.PATHOLOGIST
    author: str = ""
    name: str = ""
    created: float = field(default_factory=time.time)
    modified: float | None = None
    locked: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.geometry, BaseGeometry):
            raise AnnotationError(f"annotation geometry must be a shapely geometry, "
                                  f"not {type(self.geometry).__name__}")
        problem = coordinate_problem(self.geometry)
        if problem:
            raise AnnotationError(f"annotation coordinates must be {problem}")
        geom = self.geometry
        if not isinstance(geom, (Polygon, MultiPolygon)) or not geom.is_valid or geom.is_empty:
            geom = polygonal(geom)
        if geom.is_empty or geom.area <= 0:
            raise AnnotationError("an annotation needs an area: its outline is empty or has no "
                                  "area")
        if not math.isfinite(geom.area):
            raise AnnotationError("annotation coordinates must be finite positions (the area is "
                                  "not finite)")
        object.__setattr__(self, "geometry", geom)
        canonical = parse_uuid(self.uuid)
        if canonical is None:
            raise AnnotationError(f"annotation id {self.uuid!r} is not a UUID")
        object.__setattr__(self, "uuid", canonical)
        object.__setattr__(self, "kind", Kind(self.kind))
        object.__setattr__(self, "source", Source(self.source))
        if self.kind is Kind.ROI and self.class_name is not None:
            raise AnnotationError("a correction ROI has no class")
        if self.class_name is not None and (not isinstance(self.class_name, str)
                                            or not self.class_name.strip()):
            raise AnnotationError("a class name must be a non-empty string")
        for attr in ("created", "modified"):
            v = getattr(self, attr)
            if v is None and attr == "modified":
                object.__setattr__(self, "modified", self.created)
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise AnnotationError(f"annotation {attr} time must be a finite number of seconds")
            object.__setattr__(self, attr, float(v))
        object.__setattr__(self, "locked", bool(self.locked))
        if not isinstance(self.author, str) or not isinstance(self.name, str):
            raise AnnotationError("annotation author and name must be strings")

    @classmethod
    def from_store(cls, geometry: Polygon | MultiPolygon, class_name: str | None, uuid: str,
                   kind: str, source: str, author: str, name: str, created: float,
                   modified: float, locked: bool) -> Annotation:
        """Rebuild an annotation the store validated when it was written, without validating it
        again (reading 10 000 annotations for a viewport must take milliseconds, not a second)."""
        ann = object.__new__(cls)
        for key, value in (("geometry", geometry), ("class_name", class_name), ("uuid", uuid),
                           ("kind", Kind(kind)), ("source", Source(source)), ("author", author),
                           ("name", name), ("created", float(created)),
                           ("modified", float(modified)), ("locked", bool(locked))):
            object.__setattr__(ann, key, value)
        object.__setattr__(ann, "_stored", True)  # a flag, not a reference to itself: no cycle
        return ann

    @property
    def seen(self) -> Annotation | None:
        """The stored state this annotation was read as, or was derived from with :meth:`evolve`
        (None for an annotation made anew). ``AnnotationStore.modify`` and friends compare the
        database against it, so that a change another window or program committed since is reported
        (ConflictError), never overwritten. Not a field: it takes no part in equality."""
        state = self.__dict__
        return self if state.get("_stored") else state.get("_seen")

    @property
    def area(self) -> float:
        """Area in level-0 pixels²."""
        return float(self.geometry.area)

    @property
    def is_roi(self) -> bool:
        return self.kind is Kind.ROI

    def evolve(self, **changes: object) -> Annotation:
        """A copy with ``changes`` applied (validated again); it keeps the :attr:`seen` state."""
        new = replace(self, **changes)
        if self.seen is not None:
            object.__setattr__(new, "_seen", self.seen)
        return new


def mark_seen(annotation: Annotation, stored: Annotation) -> None:
    """Record that ``annotation`` now derives from the stored state ``stored`` (after a commit)."""
    state = annotation.__dict__
    state.pop("_seen", None)
    state.pop("_stored", None)
    if annotation is stored:
        state["_stored"] = True
    else:
        state["_seen"] = stored


@dataclass(frozen=True)
class ParsedAnnotations:
    """What a reader found in a file: annotations, the classes they use, and what was left out."""

    annotations: tuple[Annotation, ...]
    classes: tuple[AnnotationClass, ...]
    warnings: tuple[str, ...] = ()
    format: str = ""
    mpp: float | None = None  # microns per pixel the file declares, if any


@dataclass(frozen=True)
class ExportResult:
    """What a writer wrote: where, how many annotations, and what the format could not hold."""

    path: str
    format: str
    count: int
    warnings: tuple[str, ...] = ()
    labels: tuple[tuple[int, str], ...] = ()  # label value → class name, for masks

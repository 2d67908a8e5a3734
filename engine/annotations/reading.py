"""What every reader shares: reading the file, strict numbers, rings, collecting what was skipped.

Readers are strict about syntax (a coordinate that is not a number makes the whole file fail, with
its position) and tolerant about content (an outline with no area, a point, a line: skipped and
counted in a warning). Either way a file imports completely or not at all.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import defusedxml
import defusedxml.ElementTree as SafeET
import shapely
from shapely.geometry import MultiPolygon, Polygon

from engine.annotations.errors import AnnotationError, AnnotationFormatError
from engine.annotations.model import (MAX_COORDINATE, Annotation, AnnotationClass,
                                      ParsedAnnotations)
from engine.files import read_regular

#: Files larger than this (1 GiB) are refused rather than read into memory: the largest real
#: annotation files (a whole-slide nucleus segmentation in GeoJSON) are a few hundred MiB.
MAX_FILE_BYTES = 1 << 30


class Problem(Exception):
    """A malformed detail found while parsing; the reader turns it into AnnotationFormatError."""


def read_bytes(path: str | Path) -> bytes:
    """The whole file; a FIFO, a device, a folder or a file over :data:`MAX_FILE_BYTES` is refused
    (FileProblem, one line) before anything is read."""
    return read_regular(Path(path), "annotation files", MAX_FILE_BYTES)


def decode_text(data: bytes, path: Path) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise AnnotationFormatError(f"{path}: is not UTF-8 text (byte {exc.start}); is it really "
                                    f"an annotation file?") from None


def parse_xml(data: bytes, path: Path) -> ET.Element:
    """Parse XML with defusedxml: entity expansion and external references are refused."""
    try:
        return SafeET.fromstring(data)
    except ET.ParseError as exc:
        line, col = getattr(exc, "position", (0, 0))
        reason = str(exc).split(":")[0]
        raise AnnotationFormatError(f"{path}: malformed XML at line {line}, column {col} "
                                    f"({reason})") from None
    except defusedxml.DefusedXmlException as exc:
        raise AnnotationFormatError(f"{path}: XML with entities or external references, refused "
                                    f"for safety ({type(exc).__name__})") from None
    except LookupError as exc:  # <?xml encoding="x-klingon"?>: Python knows no such codec
        raise AnnotationFormatError(f"{path}: the XML declares a text encoding Python does not "
                                    f"know ({str(exc).removeprefix('unknown encoding: ')[:40]!r}); "
                                    f"save it as UTF-8") from None
    except (ValueError, UnicodeError, RecursionError, MemoryError) as exc:
        raise AnnotationFormatError(f"{path}: unreadable XML ({type(exc).__name__})") from None


def _float(value: object, where: str) -> float:
    """A float from a JSON number or an XML attribute (possibly infinite or NaN), else a Problem."""
    if isinstance(value, bool):
        raise Problem(f"{where}: {value!r} is not a number")
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            raise Problem(f"{where}: {value[:40]!r} is not a number") from None
    if isinstance(value, float):
        return value
    if isinstance(value, int):
        try:
            return float(value)
        except OverflowError:  # an integer of hundreds of digits
            return math.inf if value > 0 else -math.inf
    raise Problem(f"{where}: {type(value).__name__} where a number belongs")


def _shown(value: object, f: float) -> str:
    return value.strip()[:40] if isinstance(value, str) else f"{f:g}"


def number(value: object, where: str) -> float:
    """A finite float from a JSON number or an XML attribute, else a Problem naming ``where``."""
    f = _float(value, where)
    if not math.isfinite(f):
        raise Problem(f"{where}: {_shown(value, f)} is not a finite number")
    return f


def coordinate(value: object, where: str) -> float:
    """A position in level-0 pixels: a finite number within ±:data:`MAX_COORDINATE`, else a Problem
    naming ``where`` (the feature or annotation, and the vertex)."""
    f = _float(value, where)
    if not math.isfinite(f) or abs(f) > MAX_COORDINATE:
        raise Problem(f"{where}: coordinate {_shown(value, f)} is not a finite position within "
                      f"±{MAX_COORDINATE:,.0f} pixels")
    return f


def ring(points: list[tuple[float, float]]) -> list[tuple[float, float]] | None:
    """A closed ring from points (closing it if needed); None when it cannot enclose an area."""
    if points and points[0] != points[-1]:
        points = [*points, points[0]]
    if len(set(points)) < 3:
        return None
    return points


def polygon(shell: list[tuple[float, float]] | None,
            holes: list[list[tuple[float, float]] | None] = ()) -> Polygon | None:
    """A (possibly invalid) polygon from rings; None when the shell is degenerate."""
    if shell is None:
        return None
    try:
        return Polygon(shell, [h for h in holes if h is not None])
    except (ValueError, shapely.errors.GEOSException):
        return None


class Collector:
    """Accumulates annotations, classes and skip counts while a reader walks a file."""

    def __init__(self, path: Path, fmt: str) -> None:
        self.path = path
        self.format = fmt
        self.annotations: list[Annotation] = []
        self.classes: dict[str, AnnotationClass] = {}
        self.skipped: Counter[str] = Counter()
        self.noted: Counter[str] = Counter()  # templates with {n}, e.g. "{n} detections imported"
        self.notes: list[str] = []
        self.mpp: float | None = None
        self._uuids: set[str] = set()
        self.renamed = 0

    def add_class(self, cls: AnnotationClass) -> None:
        self.classes.setdefault(cls.name, cls)

    def add(self, geometry: Polygon | MultiPolygon | None, **attrs: object) -> Annotation | None:
        """Add an annotation; one with no area is skipped and counted (not an error)."""
        if geometry is None:
            self.skipped["outline with fewer than three distinct points"] += 1
            return None
        uid = attrs.get("uuid")
        if uid is not None and uid in self._uuids:
            attrs.pop("uuid")
            self.renamed += 1
        try:
            ann = Annotation(geometry=geometry, **attrs)  # type: ignore[arg-type]
        except AnnotationError as exc:
            text = str(exc)
            if "finite" in text:
                raise Problem(text) from None
            self.skipped["outline with no area" if "area" in text else text] += 1
            return None
        except shapely.errors.GEOSException:
            self.skipped["outline that cannot be repaired"] += 1
            return None
        self._uuids.add(ann.uuid)
        self.annotations.append(ann)
        return ann

    def result(self) -> ParsedAnnotations:
        warnings = list(self.notes)
        for what, n in sorted(self.skipped.items()):
            warnings.append(f"{n} skipped: {what}")
        for template, n in sorted(self.noted.items()):
            warnings.append(template.format(n=n))
        if self.renamed:
            warnings.append(f"{self.renamed} annotation(s) repeated an id of the file and got new "
                            f"ids")
        used = {a.class_name for a in self.annotations}
        classes = tuple(c for name, c in self.classes.items() if name in used)
        for name in sorted(n for n in used if n is not None and n not in self.classes):
            classes += (AnnotationClass(name),)
        return ParsedAnnotations(tuple(self.annotations), classes, tuple(warnings), self.format,
                                 self.mpp)

    def fail(self, problem: Problem | str) -> AnnotationFormatError:
        return AnnotationFormatError(f"{self.path}: not a valid {self.format} file: {problem}")

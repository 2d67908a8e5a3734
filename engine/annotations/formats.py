"""Import and export by format name: guess a file's format, read it into a slide's store in one
journalled step (undo removes the whole import), write a slide's annotations, and summarise them.

Which formats exist, and which reader or writer each runs, is the table in
:mod:`engine.annotations.registry`; this module holds no per-format branches."""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from engine.annotations.errors import AnnotationError, AnnotationFormatError
from engine.annotations.model import (MAX_COORDINATE, Annotation, ExportResult, Kind,
                                      ParsedAnnotations, color_to_hex, coordinate_problem,
                                      new_uuid)
from engine.annotations.reading import parse_xml, read_bytes
from engine.annotations.registry import (MASK_SUFFIXES, WriteContext, annotation_format,
                                         annotation_formats, format_for_suffix, format_names,
                                         joined_titles)
from engine.annotations.store import AnnotationStore

log = logging.getLogger(__name__)

#: Names of the formats read and written (kept for callers of the former constants).
IMPORT_FORMATS = format_names("import")
EXPORT_FORMATS = format_names("export")
_ROOT_TAG = re.compile(rb"<([A-Za-z_][A-Za-z0-9_.:-]*)")  # the first start tag: not <? or <!
__all__ = ["EXPORT_FORMATS", "IMPORT_FORMATS", "MASK_SUFFIXES", "ClassSummary", "ImportResult",
           "export_file", "guess_format", "import_file", "read_annotations", "summarize"]


@dataclass(frozen=True)
class ClassSummary:
    count: int
    area_px2: float
    area_um2: float | None


@dataclass(frozen=True)
class ImportResult:
    """What an import did: how many annotations, in which step, what was left out or changed."""

    path: str
    format: str
    count: int
    step_id: int | None
    warnings: tuple[str, ...] = ()
    summary: dict[str, ClassSummary] = field(default_factory=dict, compare=False)


def guess_format(path: str | Path) -> str:
    """The name of the format ``path`` is in ('geojson', 'asap' or 'imagescope'), from the file's
    content (not its name): a JSON document, or the root element of an XML one."""
    path = Path(path)
    data = read_bytes(path)
    head = data[:4096].lstrip(b"\xef\xbb\xbf \t\r\n")
    readable = annotation_formats("import")
    if head[:1] in (b"{", b"["):
        json_format = next((f for f in readable if f.json), None)
        if json_format is not None:
            return json_format.name
    if head[:1] == b"<":
        xml_formats = [f for f in readable if f.xml_root]
        match = _ROOT_TAG.search(head)
        tag = match.group(1).decode("ascii") if match else None
        if tag is None:  # no start tag in the first 4 KiB: let the parser say what is wrong
            tag = parse_xml(data, path).tag
        for f in xml_formats:
            if tag == f.xml_root:
                return f.name
        known = " nor ".join(f"{f.title.removesuffix(' XML')} (<{f.xml_root}>)"
                             for f in xml_formats)
        raise AnnotationFormatError(f"{path}: XML with root <{tag[:40]}> is neither {known}")
    raise AnnotationFormatError(f"{path}: not an annotation file CoCoPath reads "
                                f"({joined_titles(readable)})")


def read_annotations(path: str | Path, fmt: str | None = None) -> ParsedAnnotations:
    """Read ``path`` as ``fmt`` (guessed from the content when None); an unknown name raises
    :class:`AnnotationError` listing the formats read."""
    return annotation_format(fmt or guess_format(path), "import").read(path)


def summarize(annotations: Sequence[Annotation], mpp: tuple[float, float] | None
              ) -> dict[str, ClassSummary]:
    """Count and area per class (key "(unclassified)" for none, "(correction ROI)" for ROIs)."""
    acc: dict[str, list[float]] = {}
    for a in annotations:
        key = "(correction ROI)" if a.kind is Kind.ROI else (a.class_name or "(unclassified)")
        n, area = acc.get(key, [0, 0.0])
        acc[key] = [n + 1, area + a.area]
    um2 = mpp[0] * mpp[1] if mpp else None
    return {k: ClassSummary(int(n), area, area * um2 if um2 else None)
            for k, (n, area) in sorted(acc.items())}


def import_file(store: AnnotationStore, path: str | Path, fmt: str | None = None) -> ImportResult:
    """Import a file into a slide's store as one step; nothing is imported if anything is wrong."""
    parsed = read_annotations(path, fmt)
    warnings = list(parsed.warnings)
    anns = list(parsed.annotations)
    if anns:
        taken = _existing_uuids(store, [a.uuid for a in anns])
        if taken:
            anns = [a.evolve(uuid=new_uuid()) if a.uuid in taken else a for a in anns]
            warnings.append(f"{len(taken)} annotation(s) had ids already in the project and were "
                            f"imported with new ids")
        anns = [a if a.author else a.evolve(author=store.project.author) for a in anns]
    for cls in parsed.classes:
        mine = store.project.class_named(cls.name)
        if mine is not None and mine.color != cls.color:
            warnings.append(f"class {cls.name!r} keeps the project's colour "
                            f"{color_to_hex(mine.color)}, not the file's {color_to_hex(cls.color)}")
    slide = store.slide
    if parsed.mpp and slide.mpp and abs(parsed.mpp - slide.mpp[0]) > 0.01 * slide.mpp[0]:
        warnings.append(f"the file says {parsed.mpp:g} µm/px, the slide {slide.mpp[0]:g} µm/px: "
                        f"is it the right slide?")
    for a in anns:
        x0, y0, x1, y1 = a.geometry.bounds
        if x1 < 0 or y1 < 0 or x0 > slide.width or y0 > slide.height:
            warnings.append(f"some annotations lie outside the slide's "
                            f"{slide.width}×{slide.height} pixels: is it the right slide?")
            break
    step = None
    if anns:
        step = store.edit([(None, a) for a in anns], f"import {Path(path).name}",
                          classes=parsed.classes).id
    log.info("imported %d annotations from %s", len(anns), path)
    return ImportResult(str(path), parsed.format, len(anns), step, tuple(warnings),
                        summarize(anns, slide.mpp))


def _existing_uuids(store: AnnotationStore, uuids: list[str]) -> set[str]:
    found: set[str] = set()
    for i in range(0, len(uuids), 500):
        chunk = uuids[i:i + 500]
        rows = store.project.query(f"SELECT uuid FROM annotations WHERE uuid IN "
                                   f"({','.join('?' * len(chunk))})", chunk)
        found.update(r[0] for r in rows)
    return found


def export_file(store: AnnotationStore, out: str | Path, fmt: str | None = None,
                downsample: float = 1.0) -> ExportResult:
    """Write the slide's annotations (and ROIs, where the format can hold them) to ``out``."""
    out = Path(out)
    fmt = fmt or _format_from_suffix(out)
    anns, left_out = _exportable(store.annotations(kind=None))
    result = _write(store, out, fmt, anns, downsample)
    if left_out:
        return replace(result, warnings=(left_out, *result.warnings))
    return result


def _exportable(anns: list[Annotation]) -> tuple[list[Annotation], str | None]:
    """The annotations a file can hold, and a warning naming those left out: coordinates beyond
    any slide (stored by a CoCoPath before imports checked them) would give infinite areas and,
    in JSON, a bare ``Infinity`` that QuPath refuses."""
    bad = [a.uuid for a in anns if coordinate_problem(a.geometry) or not math.isfinite(a.area)]
    if not bad:
        return anns, None
    skip = set(bad)
    shown = ", ".join(bad[:3]) + (" …" if len(bad) > 3 else "")
    return ([a for a in anns if a.uuid not in skip],
            f"{len(bad)} annotation(s) left out: their coordinates are not finite positions within "
            f"±{MAX_COORDINATE:,.0f} pixels ({shown}); delete them in the project")


def _write(store: AnnotationStore, out: Path, fmt: str, anns: list[Annotation],
           downsample: float) -> ExportResult:
    writer = annotation_format(fmt, "export")
    slide = store.slide
    context = WriteContext(tuple(store.project.classes()), (slide.width, slide.height), slide.mpp,
                           downsample)
    return writer.write(out, anns, context)


def _format_from_suffix(out: Path) -> str:
    found = format_for_suffix(out, "export")
    if found is None:
        suffix = out.suffix.lower()
        raise AnnotationError(f"{out}: cannot tell the format from the ending {suffix or '(none)'}; "
                              f"give --format {'|'.join(format_names('export'))}")
    return found.name

"""The annotation formats CoCoPath reads and writes, by name: one :class:`AnnotationFormat` each.

Everything that offers a choice of formats reads this table: :mod:`engine.annotations.formats`
(which reader or writer runs, the format guessed from a file's content or an output's ending), the
command line's ``--format`` choices, and the GUI's file-dialog filters (through ``engine.api``).
Adding a format is one entry here plus its reader or writer module.

Readers and writers are named as ``"module:function"`` and imported when first called, so looking
at the table costs nothing (the mask writer needs Pillow and tifffile, the readers need no more than
shapely). An unknown name raises :class:`~engine.annotations.errors.AnnotationError` listing the
valid ones.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from engine.annotations.errors import AnnotationError

if TYPE_CHECKING:  # the table itself loads nothing heavy: the command line builds its choices here
    from engine.annotations.model import (Annotation, AnnotationClass, ExportResult,
                                          ParsedAnnotations)

Direction = Literal["import", "export"]


@dataclass(frozen=True)
class Capabilities:
    """What a file of the format holds (what the others lose is said in an export's warnings)."""

    outlines: bool  # vector outlines; False: a raster label mask
    classes: bool  # class names (and colours) travel with the annotations
    holes: bool  # holes in an outline survive (else they are filled)
    measurements: bool  # areas are written into the file
    rois: bool  # correction ROIs travel as ROIs


@dataclass(frozen=True)
class WriteContext:
    """What a writer may need beyond the annotations: the project's classes and the slide."""

    classes: tuple[AnnotationClass, ...]
    slide_size: tuple[int, int]
    mpp: tuple[float, float] | None
    downsample: float = 1.0


Reader = Callable[[Path], "ParsedAnnotations"]
Writer = Callable[[Path, Sequence["Annotation"], WriteContext], "ExportResult"]


@dataclass(frozen=True)
class AnnotationFormat:
    """One file format. ``extensions`` are lower-case with the dot, the usual one first (an export
    without an ending gets it). ``reader`` / ``writer`` are ``"module:function"`` or None (the
    format is not read / not written). A file is recognised by its content: ``json`` for a JSON
    document, ``xml_root`` for the root element of an XML one."""

    name: str
    title: str
    extensions: tuple[str, ...]
    capabilities: Capabilities
    reader: str | None = None
    writer: str | None = None
    json: bool = False
    xml_root: str | None = None

    @property
    def readable(self) -> bool:
        return self.reader is not None

    @property
    def writable(self) -> bool:
        return self.writer is not None

    def read(self, path: str | Path) -> ParsedAnnotations:
        if self.reader is None:
            raise AnnotationError(f"{self.title} files are written, not read, by CoCoPath "
                                  f"(it reads {joined_titles(annotation_formats('import'))})")
        fn: Reader = _resolve(self.reader)
        return fn(Path(path))

    def write(self, out: str | Path, annotations: Sequence[Annotation],
              context: WriteContext) -> ExportResult:
        if self.writer is None:
            raise AnnotationError(f"{self.title} files are read, not written, by CoCoPath "
                                  f"(it writes {joined_titles(annotation_formats('export'))})")
        fn: Writer = _resolve(self.writer)
        return fn(Path(out), annotations, context)


def _resolve(target: str) -> Callable:
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


_FORMATS: dict[str, AnnotationFormat] = {}


def register_format(fmt: AnnotationFormat) -> AnnotationFormat:
    """Add ``fmt`` to the table (a name already taken raises)."""
    if fmt.name in _FORMATS:
        raise AnnotationError(f"annotation format {fmt.name!r} is already registered")
    if not fmt.extensions or any(e != e.lower() or not e.startswith(".") for e in fmt.extensions):
        raise AnnotationError(f"annotation format {fmt.name!r}: extensions must be lower-case "
                              f"endings with a dot, not {fmt.extensions!r}")
    _FORMATS[fmt.name] = fmt
    return fmt


def annotation_formats(direction: Direction | None = None) -> tuple[AnnotationFormat, ...]:
    """Every format in registration order; ``"import"``: those read, ``"export"``: those written."""
    if direction is None:
        return tuple(_FORMATS.values())
    if direction not in ("import", "export"):
        raise AnnotationError(f"unknown direction {direction!r} (known: import, export)")
    want = "readable" if direction == "import" else "writable"
    return tuple(f for f in _FORMATS.values() if getattr(f, want))


def format_names(direction: Direction | None = None) -> tuple[str, ...]:
    """The names ``--format`` accepts: every format's, or those read / written."""
    return tuple(f.name for f in annotation_formats(direction))


def annotation_format(name: str, direction: Direction | None = None) -> AnnotationFormat:
    """The format called ``name``; an unknown name (or one not read / written, when ``direction``
    is given) raises :class:`AnnotationError` listing the valid names."""
    candidates = annotation_formats(direction)
    for f in candidates:
        if f.name == name:
            return f
    kind = {"import": "import ", "export": "export "}.get(direction or "", "")
    raise AnnotationError(f"unknown {kind}format {name!r} (known: "
                          f"{', '.join(f.name for f in candidates)})")


def format_for_suffix(path: str | Path, direction: Direction = "export") -> AnnotationFormat | None:
    """The first format of ``direction`` whose extensions include ``path``'s ending, else None."""
    suffix = Path(path).suffix.lower()
    return next((f for f in annotation_formats(direction) if suffix in f.extensions), None)


def joined_titles(fmts: Sequence[AnnotationFormat]) -> str:
    """Titles for a sentence: "QuPath GeoJSON, ASAP XML or ImageScope XML"."""
    titles = [f.title for f in fmts]
    return ", ".join(titles[:-1]) + (f" or {titles[-1]}" if len(titles) > 1 else "".join(titles))


# -- writers: the modules' functions, called with a WriteContext -----------------------------------

def write_geojson(out: Path, annotations: Sequence[Annotation], ctx: WriteContext) -> ExportResult:
    from engine.annotations.geojson_io import write_geojson as write

    return write(out, annotations, ctx.classes, ctx.mpp)


def write_asap(out: Path, annotations: Sequence[Annotation], ctx: WriteContext) -> ExportResult:
    from engine.annotations.asap_io import write_asap as write

    return write(out, annotations, ctx.classes)


MASK_SUFFIXES = {".png": "png", ".tif": "tiff", ".tiff": "tiff"}


def write_mask(out: Path, annotations: Sequence[Annotation], ctx: WriteContext) -> ExportResult:
    from engine.annotations.mask import write_mask_png, write_mask_tiff

    kind = MASK_SUFFIXES.get(out.suffix.lower())
    if kind is None:
        raise AnnotationError(f"{out}: a label mask is written as .png or .tif (pyramidal); "
                              f"give the file one of these endings")
    if kind == "png":
        return write_mask_png(out, annotations, ctx.classes, ctx.slide_size, ctx.downsample)
    return write_mask_tiff(out, annotations, ctx.classes, ctx.slide_size, ctx.downsample, ctx.mpp)


GEOJSON = register_format(AnnotationFormat(
    "geojson", "QuPath GeoJSON", (".geojson", ".json"),
    Capabilities(outlines=True, classes=True, holes=True, measurements=True, rois=True),
    reader="engine.annotations.geojson_io:read_geojson", writer=f"{__name__}:write_geojson",
    json=True))
ASAP = register_format(AnnotationFormat(
    "asap", "ASAP XML", (".xml",),
    Capabilities(outlines=True, classes=True, holes=False, measurements=False, rois=True),
    reader="engine.annotations.asap_io:read_asap", writer=f"{__name__}:write_asap",
    xml_root="ASAP_Annotations"))
IMAGESCOPE = register_format(AnnotationFormat(
    "imagescope", "ImageScope XML", (".xml",),
    Capabilities(outlines=True, classes=True, holes=True, measurements=False, rois=False),
    reader="engine.annotations.imagescope_io:read_imagescope", xml_root="Annotations"))
MASK = register_format(AnnotationFormat(
    "mask", "label mask", tuple(MASK_SUFFIXES),
    Capabilities(outlines=False, classes=True, holes=True, measurements=False, rois=False),
    writer=f"{__name__}:write_mask"))

"""Annotations: the project store (SQLite, R*Tree, edit journal) and QuPath, ASAP, ImageScope files
(the formats by name: :mod:`engine.annotations.registry`).

No Qt and no torch here: the viewer imports this at start-up.
"""

from engine.annotations.errors import (AnnotationError, AnnotationFormatError, ConflictError,
                                       ProjectCorruptError, ProjectError, ProjectLockedError,
                                       ProjectMissingError)
from engine.annotations.formats import (ClassSummary, ImportResult, export_file, guess_format,
                                        import_file, read_annotations, summarize)
from engine.annotations.model import (Annotation, AnnotationClass, ExportResult, Kind,
                                      ParsedAnnotations, Source, polygonal)
from engine.annotations.project import Project, SlideRecord, slide_fingerprint
from engine.annotations.registry import (AnnotationFormat, Capabilities, annotation_format,
                                         annotation_formats)
from engine.annotations.store import AnnotationStore, AuditEntry, Change, Step

__all__ = [
    "Annotation", "AnnotationClass", "AnnotationError", "AnnotationFormat", "AnnotationFormatError",
    "AnnotationStore", "AuditEntry", "Capabilities", "Change", "ClassSummary", "ConflictError",
    "ExportResult", "ImportResult", "Kind", "ParsedAnnotations", "Project", "ProjectCorruptError",
    "ProjectError", "ProjectLockedError", "ProjectMissingError", "SlideRecord", "Source", "Step",
    "annotation_format", "annotation_formats", "export_file", "guess_format", "import_file",
    "polygonal", "read_annotations", "slide_fingerprint", "summarize",
]

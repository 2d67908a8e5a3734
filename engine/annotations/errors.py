"""Errors a user meets with projects and annotation files; each message is one actionable sentence.
"""

from __future__ import annotations

from engine.errors import CocoPathError


class AnnotationError(CocoPathError):
    """An annotation or an edit is not acceptable (empty geometry, locked annotation, unknown id).
    """


class ConflictError(AnnotationError):
    """An edit was refused because the annotation is no longer in the state the caller saw: another
    window or program changed or deleted it meanwhile. Nothing was written; reload and try again.
    """


class AnnotationFormatError(AnnotationError):
    """An annotation file is malformed or not in the format it claims; nothing of it was imported.
    """


class ProjectError(CocoPathError):
    """A project folder or its database cannot be used."""


class ProjectMissingError(ProjectError):
    """No project (or no database) where one was expected."""


class ProjectLockedError(ProjectError):
    """Another process holds the database's write lock for longer than we are willing to wait."""


class ProjectCorruptError(ProjectError):
    """The database file is damaged or is not a CoCoPath project."""

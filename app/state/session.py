"""Which project the app's annotations go to (no Qt).

A pathologist who opens a slide and starts drawing expects the outlines to be kept, without being
asked where first. So a slide opened without a project goes into the *default project*, a folder in
CoCoPath's per-user data folder (``<user data>/Default project``), created on first use; File ▸ New
project / Open project switch to a project folder of one's own. Every stroke is a committed SQLite
transaction the moment it is made: there is no "save".
"""

from __future__ import annotations

import logging
from pathlib import Path

from engine.api import AnnotationClass, Project, ProjectMissingError, sample

log = logging.getLogger(__name__)

DEFAULT_PROJECT_NAME = "Default project"

#: The classes a new project starts with (number keys 1–4); a project keeps its own list after that.
STARTER_CLASSES: tuple[AnnotationClass, ...] = (
    AnnotationClass("Tumour", (220, 40, 40), "1"),
    AnnotationClass("Stroma", (60, 160, 60), "2"),
    AnnotationClass("Necrosis", (150, 90, 200), "3"),
    AnnotationClass("Other", (40, 110, 220), "4"),
)


def default_project_folder() -> Path:
    """``<user data>/Default project`` (``$COCOPATH_DATA_DIR`` replaces the user data folder)."""
    return sample.user_data_dir() / DEFAULT_PROJECT_NAME


def create_project(folder: str | Path) -> Project:
    """A new project in ``folder``, with the starter classes."""
    project = Project.create(folder)
    try:
        for cls in STARTER_CLASSES:
            project.set_class(cls)
    except BaseException:
        project.close()
        raise
    return project


def open_or_create(folder: str | Path) -> Project:
    """Open the project in ``folder``, creating it (with the starter classes) if there is none.

    A folder whose database is damaged or locked raises, and is never overwritten."""
    try:
        return Project.open(folder)
    except ProjectMissingError:
        log.info("creating project %s", folder)
        return create_project(folder)

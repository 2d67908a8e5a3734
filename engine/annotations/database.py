"""The project's SQLite database: schema, connection settings, sqlite errors turned into sentences.

One file, ``project.sqlite``, in WAL mode with ``synchronous=FULL`` (a commit is on disk before it
returns, so a crash of the process or of the machine never loses an edit the app reported saved),
foreign keys on, and ``BEGIN IMMEDIATE`` transactions (one per edit) so writers queue instead of
failing half-way. Spatial queries use an R*Tree virtual table keyed by the annotation's row id.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from engine.annotations.errors import (ProjectCorruptError, ProjectError, ProjectLockedError,
                                       ProjectMissingError)

log = logging.getLogger(__name__)

DB_NAME = "project.sqlite"
SCHEMA_VERSION = 1
APPLICATION_ID = 0x436F436F  # "CoCo": marks the file as ours in its header

SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE slides (
    id INTEGER PRIMARY KEY,
    path TEXT NOT NULL,
    name TEXT NOT NULL,
    size INTEGER NOT NULL,
    hash TEXT NOT NULL UNIQUE,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    mpp_x REAL,
    mpp_y REAL,
    added REAL NOT NULL
);
CREATE TABLE classes (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    r INTEGER NOT NULL CHECK (r BETWEEN 0 AND 255),
    g INTEGER NOT NULL CHECK (g BETWEEN 0 AND 255),
    b INTEGER NOT NULL CHECK (b BETWEEN 0 AND 255),
    shortcut TEXT UNIQUE
);
CREATE TABLE annotations (
    id INTEGER PRIMARY KEY,
    uuid TEXT NOT NULL UNIQUE,
    slide_id INTEGER NOT NULL REFERENCES slides(id) ON DELETE CASCADE,
    kind TEXT NOT NULL CHECK (kind IN ('region', 'roi')),
    class_id INTEGER REFERENCES classes(id) ON DELETE RESTRICT,
    name TEXT NOT NULL DEFAULT '',
    source TEXT NOT NULL CHECK (source IN ('pathologist', 'model')),
    author TEXT NOT NULL DEFAULT '',
    created REAL NOT NULL,
    modified REAL NOT NULL,
    locked INTEGER NOT NULL DEFAULT 0 CHECK (locked IN (0, 1)),
    area REAL NOT NULL,
    geometry BLOB NOT NULL
);
CREATE INDEX annotations_slide ON annotations(slide_id, kind);
CREATE INDEX annotations_class ON annotations(class_id);
CREATE VIRTUAL TABLE annotation_index USING rtree(id, min_x, max_x, min_y, max_y);
CREATE TABLE steps (
    id INTEGER PRIMARY KEY,
    slide_id INTEGER NOT NULL REFERENCES slides(id) ON DELETE CASCADE,
    label TEXT NOT NULL,
    author TEXT NOT NULL,
    at REAL NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('applied', 'undone', 'discarded'))
);
CREATE INDEX steps_slide ON steps(slide_id, status, id);
CREATE TABLE changes (
    id INTEGER PRIMARY KEY,
    step_id INTEGER NOT NULL REFERENCES steps(id) ON DELETE CASCADE,
    op TEXT NOT NULL,
    uuid TEXT NOT NULL,
    before TEXT,
    before_geometry BLOB,
    after TEXT,
    after_geometry BLOB
);
CREATE INDEX changes_step ON changes(step_id);
CREATE INDEX changes_uuid ON changes(uuid);
CREATE TABLE audit (
    id INTEGER PRIMARY KEY,
    step_id INTEGER NOT NULL REFERENCES steps(id) ON DELETE CASCADE,
    action TEXT NOT NULL CHECK (action IN ('do', 'undo', 'redo')),
    author TEXT NOT NULL,
    at REAL NOT NULL
);
"""

_LOCKED_MARKERS = ("database is locked", "database table is locked", "database is busy")
_CORRUPT_MARKERS = ("file is not a database", "malformed", "corrupt", "disk image")


def translate(exc: sqlite3.Error, path: Path) -> ProjectError:
    """A one-sentence :class:`ProjectError` for a sqlite error on the database at ``path``."""
    text = str(exc)
    low = text.lower()
    if any(m in low for m in _LOCKED_MARKERS):
        return ProjectLockedError(f"{path}: the project is busy: another program (or another "
                                  f"CoCoPath window) is writing to it; close it and try again")
    if any(m in low for m in _CORRUPT_MARKERS):
        return ProjectCorruptError(f"{path}: the project database is damaged ({text}); restore it "
                                   f"from a backup or create a new project")
    if "unable to open" in low or "readonly" in low or "read-only" in low:
        return ProjectError(f"{path}: the project database cannot be written ({text}); check the "
                            f"folder's permissions and free disk space")
    return ProjectError(f"{path}: database error ({text})")


@contextmanager
def guarded(path: Path) -> Iterator[None]:
    """Run a block, turning any sqlite error into a :class:`ProjectError` about ``path``."""
    try:
        yield
    except sqlite3.Error as exc:
        raise translate(exc, path) from exc


def connect(path: Path, *, timeout: float) -> sqlite3.Connection:
    """Open ``path`` in autocommit mode (transactions are explicit) with the project's settings."""
    conn = sqlite3.connect(str(path), timeout=timeout, isolation_level=None,
                           check_same_thread=False)
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
        conn.execute("PRAGMA foreign_keys = ON")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            log.warning("%s: journal mode is %s, not WAL (network file system?)", path, mode)
        conn.execute("PRAGMA synchronous = FULL")
    except sqlite3.Error:
        conn.close()
        raise
    return conn


def create_schema(conn: sqlite3.Connection, created: float) -> None:
    conn.execute("BEGIN IMMEDIATE")  # executescript would commit early: one statement at a time
    try:
        for statement in SCHEMA.split(";"):
            if statement.strip():
                conn.execute(statement)
        conn.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        conn.execute("INSERT INTO meta VALUES ('created', ?)", (repr(created),))
        conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def check_schema(conn: sqlite3.Connection, path: Path, *, quick_check: bool) -> None:
    """Raise a clear error when ``conn`` is not a healthy CoCoPath project of a version we read."""
    if quick_check:
        rows = [r[0] for r in conn.execute("PRAGMA quick_check").fetchall()]
        if rows != ["ok"]:
            raise ProjectCorruptError(f"{path}: the project database is damaged ({rows[0]}); "
                                      f"restore it from a backup or create a new project")
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if "meta" not in tables:
        raise ProjectCorruptError(f"{path}: is an SQLite file but not a CoCoPath project")
    row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    if row is None or not str(row[0]).isdigit():
        raise ProjectCorruptError(f"{path}: is an SQLite file but not a CoCoPath project")
    version = int(row[0])
    if version > SCHEMA_VERSION:
        raise ProjectError(f"{path}: was made by a newer CoCoPath (project version {version}, this "
                           f"one reads up to {SCHEMA_VERSION}); update CoCoPath")
    missing = {"slides", "classes", "annotations", "annotation_index", "steps", "changes"} - tables
    if missing:
        raise ProjectCorruptError(f"{path}: the project database lacks tables "
                                  f"{', '.join(sorted(missing))}; restore it from a backup")


def database_file(folder: Path) -> Path:
    return Path(folder) / DB_NAME


def require_folder(folder: Path) -> Path:
    db = database_file(folder)
    if not Path(folder).exists():
        raise ProjectMissingError(f"{folder}: no such project folder (create one with "
                                  f"`cocopath-engine project create {folder}`)")
    if not db.is_file():
        raise ProjectMissingError(f"{folder}: not a CoCoPath project (no {DB_NAME} in it; create "
                                  f"one with `cocopath-engine project create {folder}`)")
    return db

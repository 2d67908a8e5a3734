"""The project's SQLite database: schema, connection settings, sqlite errors turned into sentences.

One file, ``project.sqlite``, in WAL mode with ``synchronous=FULL`` (a commit is on disk before it
returns, so a crash of the process or of the machine never loses an edit the app reported saved),
foreign keys on, and ``BEGIN IMMEDIATE`` transactions (one per edit) so writers queue instead of
failing half-way. Spatial queries use an R*Tree virtual table keyed by the annotation's row id.
"""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from engine.annotations.errors import (ProjectCorruptError, ProjectError, ProjectLockedError,
                                       ProjectMissingError)
from engine.atomic import fsync_dir

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
    if "disk is full" in low or "disk full" in low:
        return ProjectError(f"{path}: the disk is full ({text}); free some space and try again")
    if "disk i/o error" in low:  # e.g. no room for the WAL index when opening on a full disk
        return ProjectError(f"{path}: the project database cannot be read or written ({text}: a "
                            f"full disk or a failing drive?); free some space and try again")
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
        if conn.in_transaction:  # a full disk may have rolled it back already
            conn.execute("ROLLBACK")
        raise


def os_reason(exc: OSError) -> str:
    """Why an OS call failed, in words a user acts on."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return "the disk is full"
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return "the folder is read-only or not yours"
    return exc.strerror or str(exc)


def _side_files(path: Path) -> list[Path]:
    return [path, path.with_name(path.name + "-journal"), path.with_name(path.name + "-wal"),
            path.with_name(path.name + "-shm")]


def create_database(path: Path, created: float) -> None:
    """Create the project database at ``path`` all or nothing: it is built and made durable under a
    temporary name in the same folder, then linked to ``path`` (which must not exist). On any
    failure (a full disk, a read-only folder) nothing is left behind and one ProjectError says
    what happened; ``path`` never exists half-made."""
    folder = path.parent
    tmp = folder / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.creating"
    try:
        try:
            conn = sqlite3.connect(str(tmp), isolation_level=None)
            try:  # a rollback journal, not WAL: once COMMIT returns, everything is in ``tmp``
                conn.execute("PRAGMA journal_mode = DELETE")
                conn.execute("PRAGMA synchronous = FULL")
                create_schema(conn, created)
            finally:
                conn.close()
        except sqlite3.Error as exc:
            raise ProjectError(f"{folder}: cannot create the project ({sqlite_reason(exc)}); "
                               f"nothing was left behind") from exc
        try:
            os.link(tmp, path)  # fails if ``path`` appeared meanwhile: never overwrites a project
        except FileExistsError:
            raise ProjectError(f"{folder}: already holds a CoCoPath project; open it "
                               f"instead") from None
        except OSError:  # a file system without hard links: rename, after checking again
            if path.exists():
                raise ProjectError(f"{folder}: already holds a CoCoPath project; open it "
                                   f"instead") from None
            os.replace(tmp, path)
        fsync_dir(folder)
    except OSError as exc:
        raise ProjectError(f"{folder}: cannot create the project ({os_reason(exc)}); nothing was "
                           f"left behind") from None
    finally:
        remove_database(tmp)


def remove_database(path: Path) -> None:
    """Delete a database file and its journal, WAL and shared-memory files (best effort)."""
    for f in _side_files(path):
        try:
            f.unlink()
        except FileNotFoundError:
            pass
        except OSError:
            log.warning("%s: cannot remove this file", f)


def sqlite_reason(exc: sqlite3.Error) -> str:
    return "the disk is full" if "full" in str(exc).lower() else str(exc)


def is_unfinished(path: Path) -> bool:
    """Whether ``path`` is a database that holds nothing at all: 0 bytes, or SQLite without a single
    table (left by a creation that failed, e.g. on a full disk, before creation was made all or
    nothing). Such a file can be replaced without losing anything."""
    try:
        if path.stat().st_size == 0:
            return is_empty(path)
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            return conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0
        finally:
            conn.close()
    except (OSError, sqlite3.Error):
        return False


def is_empty(path: Path) -> bool:
    """Whether ``path`` and its write-ahead log hold no byte at all."""
    try:
        if path.stat().st_size:
            return False
        wal = path.with_name(path.name + "-wal")
        return not wal.exists() or wal.stat().st_size == 0
    except OSError:
        return False


def discard_unfinished(path: Path) -> bool:
    """Remove ``path`` (and its side files) when :func:`is_unfinished`; True when it is gone."""
    if not is_unfinished(path):
        return False
    log.warning("%s: holds nothing (an earlier creation did not finish); replacing it", path)
    try:
        for f in _side_files(path):
            f.unlink(missing_ok=True)
    except OSError as exc:
        raise ProjectError(f"{path}: holds no project but cannot be removed "
                           f"({os_reason(exc)}); delete it by hand") from None
    return True


def check_schema(conn: sqlite3.Connection, path: Path, *, quick_check: bool) -> None:
    """Raise a clear error when ``conn`` is not a healthy CoCoPath project of a version we read."""
    if quick_check:
        rows = [r[0] for r in conn.execute("PRAGMA quick_check").fetchall()]
        if rows != ["ok"]:
            raise ProjectCorruptError(f"{path}: the project database is damaged ({rows[0]}); "
                                      f"restore it from a backup or create a new project")
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if not tables:
        raise ProjectCorruptError(unfinished_message(path))
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


def unfinished_message(path: Path) -> str:
    return (f"{path}: holds no project (its creation did not finish, on a full disk?); run "
            f"`cocopath-engine project create {path.parent}` again, which replaces it")


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

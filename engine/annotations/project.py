"""A CoCoPath project: a folder with one SQLite database holding slides, classes and annotations.

>>> project = Project.create("~/cases/gastric-01")          # doctest: +SKIP
>>> slide = project.add_slide("/data/slides/case-17.svs")    # doctest: +SKIP
>>> store = project.store(slide)                             # annotations of that slide, journalled

Slides are identified by a content hash so that a moved slide can be found again
(:meth:`Project.relink_slide`, :meth:`Project.relink_missing`). Hashing a multi-gigabyte slide in
full would take minutes, so the hash covers the file's size and its first and last 4 MiB (for a
DICOM folder: each file's name, size, and first 1 MiB). Two different scans agreeing on all of that
is not a practical concern; a re-saved copy of the same scan may hash differently.
"""

from __future__ import annotations

import getpass
import hashlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from engine.annotations import database as db
from engine.annotations.errors import AnnotationError, ProjectCorruptError, ProjectError
from engine.annotations.model import AnnotationClass, Color

if TYPE_CHECKING:
    from engine.annotations.store import AnnotationStore

log = logging.getLogger(__name__)

HASH_CHUNK = 4 << 20
DICOM_CHUNK = 1 << 20


@dataclass(frozen=True)
class SlideRecord:
    """A slide as the project knows it (its path may be stale if the file moved)."""

    id: int
    path: str
    name: str
    size: int
    hash: str
    width: int
    height: int
    mpp: tuple[float, float] | None
    added: float

    @property
    def exists(self) -> bool:
        return Path(self.path).exists()


def slide_fingerprint(path: str | Path) -> tuple[int, str]:
    """(size in bytes, content hash) of a slide file or DICOM folder; see the module docstring."""
    p = Path(path)
    h = hashlib.sha256()
    try:
        if p.is_dir():
            files = sorted(f for f in p.iterdir() if f.is_file())
            total = 0
            for f in files:
                size = f.stat().st_size
                total += size
                h.update(f"{f.name}\0{size}\0".encode())
                with open(f, "rb") as fh:
                    h.update(fh.read(DICOM_CHUNK))
            return total, "sha256-dir:" + h.hexdigest()
        size = p.stat().st_size
        h.update(size.to_bytes(8, "little"))
        with open(p, "rb") as fh:
            h.update(fh.read(HASH_CHUNK))
            if size > 2 * HASH_CHUNK:
                fh.seek(size - HASH_CHUNK)
                h.update(fh.read(HASH_CHUNK))
            else:
                h.update(fh.read())
        return size, "sha256-ends:" + h.hexdigest()
    except OSError as exc:
        raise ProjectError(f"{p}: cannot be read ({exc.strerror or exc})") from None


def _remove_empty_folder(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:  # not empty after all (another program wrote into it): leave it
        pass


def _slide_from_row(row: Sequence) -> SlideRecord:
    sid, path, name, size, hsh, w, h, mx, my, added = row
    return SlideRecord(sid, path, name, size, hsh, w, h, (mx, my) if mx else None, added)


_SLIDE_COLUMNS = "id, path, name, size, hash, width, height, mpp_x, mpp_y, added"


class Project:
    """An open project; close() when done. Thread-safe: one connection, used under one lock, so a
    viewport query from a loader thread never sees another thread's transaction half-way."""

    def __init__(self, folder: Path, conn: sqlite3.Connection, author: str) -> None:
        self.folder = folder
        self.db_path = db.database_file(folder)
        self.author = author
        self._conn = conn
        self._lock = threading.RLock()

    # -- opening ---------------------------------------------------------------------------------

    @classmethod
    def create(cls, folder: str | Path, *, author: str | None = None,
               timeout: float = 5.0) -> Project:
        """Create a new project in ``folder`` (made if needed; it must not hold a project yet)."""
        folder = Path(folder).expanduser().resolve()
        path = db.database_file(folder)
        if path.exists() and not db.discard_unfinished(path):
            raise ProjectError(f"{folder}: already holds a CoCoPath project; open it instead")
        made = not folder.exists()
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ProjectError(f"{folder}: cannot create the project folder "
                               f"({db.os_reason(exc)})") from None
        try:
            db.create_database(path, time.time())
            try:
                conn = db.connect(path, timeout=timeout)
            except sqlite3.Error as exc:  # WAL files cannot be made (a full disk): undo it all
                db.remove_database(path)
                raise ProjectError(f"{folder}: cannot create the project "
                                   f"({db.sqlite_reason(exc)}); nothing was left behind") from exc
        except BaseException:
            if made:
                _remove_empty_folder(folder)
            raise
        log.info("created project %s", folder)
        return cls(folder, conn, author or _default_author())

    @classmethod
    def open(cls, folder: str | Path, *, author: str | None = None, timeout: float = 5.0,
             quick_check: bool = True) -> Project:
        """Open an existing project; missing, locked and damaged databases raise a clear error."""
        folder = Path(folder).expanduser().resolve()
        path = db.require_folder(folder)
        if db.is_empty(path):  # before connecting, which would write a header into it
            raise ProjectCorruptError(db.unfinished_message(path))
        with db.guarded(path):
            conn = db.connect(path, timeout=timeout)
            try:
                db.check_schema(conn, path, quick_check=quick_check)
            except BaseException:
                conn.close()
                raise
        return cls(folder, conn, author or _default_author())

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                try:
                    self._conn.close()
                finally:
                    self._conn = None  # type: ignore[assignment]

    def __enter__(self) -> Project:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- low level ---------------------------------------------------------------------------------

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise ProjectError(f"{self.folder}: the project was closed")
        return self._conn

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: everything in the block is committed together, or nothing."""
        with self._lock, db.guarded(self.db_path):
            conn = self.conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    @contextmanager
    def reading(self) -> Iterator[sqlite3.Connection]:
        """The connection for several reads in a row, under the project's lock."""
        with self._lock, db.guarded(self.db_path):
            yield self.conn

    def query(self, sql: str, params: Sequence | dict = ()) -> list[tuple]:
        with self._lock, db.guarded(self.db_path):
            return self.conn.execute(sql, params).fetchall()

    # -- slides ----------------------------------------------------------------------------------

    def add_slide(self, path: str | Path) -> SlideRecord:
        """Add a slide (or return it if its content is in the project already, relinking it)."""
        from engine.slide import open_slide

        path = Path(path).expanduser().resolve()
        if path.is_file() and path.suffix.lower() == ".dcm":  # a file of a DICOM slide: the folder
            path = path.parent
        with open_slide(path) as source:
            info = source.info
        size, digest = slide_fingerprint(path)
        existing = self.query(f"SELECT {_SLIDE_COLUMNS} FROM slides WHERE hash = ?", (digest,))
        if existing:
            rec = _slide_from_row(existing[0])
            if rec.path != str(path):
                rec = self._set_path(rec, path)
            return rec
        w, h = info.dimensions
        mpp = info.mpp or (None, None)
        with self.transaction() as c:
            c.execute("INSERT INTO slides (path, name, size, hash, width, height, mpp_x, mpp_y, "
                      "added) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                      (str(path), path.name, size, digest, w, h, mpp[0], mpp[1], time.time()))
        log.info("added slide %s (%d×%d)", path, w, h)
        return self.slide(str(path))

    def slides(self) -> list[SlideRecord]:
        rows = self.query(f"SELECT {_SLIDE_COLUMNS} FROM slides ORDER BY id")
        return [_slide_from_row(r) for r in rows]

    def slide(self, ref: int | str | Path | SlideRecord) -> SlideRecord:
        """Find a slide by id, record, path, file name, or (for a moved file) its content hash."""
        if isinstance(ref, SlideRecord):
            ref = ref.id
        if isinstance(ref, int) or (isinstance(ref, str) and ref.isdigit()):
            rows = self.query(f"SELECT {_SLIDE_COLUMNS} FROM slides WHERE id = ?", (int(ref),))
            if rows:
                return _slide_from_row(rows[0])
        text = str(ref)
        p = Path(text).expanduser()
        cols = f"SELECT {_SLIDE_COLUMNS} FROM slides"
        if p.exists():  # a file on disk: its path, else its content (a moved or copied slide)
            rows = self.query(f"{cols} WHERE path = ?", (str(p.resolve()),)) or self.query(
                f"{cols} WHERE hash = ?", (slide_fingerprint(p)[1],))
        else:  # a stored path that no longer exists, or a file name
            rows = self.query(f"{cols} WHERE path = ?", (text,)) or self.query(
                f"{cols} WHERE name = ?", (p.name,))
            if len(rows) > 1:
                raise ProjectError(f"{text}: several slides of the project have this name; give "
                                   f"the full path or the slide id")
        if not rows:
            raise ProjectError(f"{text}: not a slide of the project {self.folder}; add it with "
                               f"`cocopath-engine project add-slide {self.folder} {text}`")
        return _slide_from_row(rows[0])

    def _set_path(self, rec: SlideRecord, path: Path) -> SlideRecord:
        with self.transaction() as c:
            c.execute("UPDATE slides SET path = ?, name = ? WHERE id = ?",
                      (str(path), path.name, rec.id))
        log.info("slide %d relinked: %s → %s", rec.id, rec.path, path)
        return self.slide(rec.id)

    def relink_slide(self, ref: int | str | SlideRecord, new_path: str | Path) -> SlideRecord:
        """Point a slide at its new location, after checking that the file has the same content."""
        rec = self.slide(ref)
        new_path = Path(new_path).expanduser().resolve()
        if not new_path.exists():
            raise ProjectError(f"{new_path}: no such file")
        size, digest = slide_fingerprint(new_path)
        if digest != rec.hash:
            raise ProjectError(f"{new_path}: is not the slide {rec.name} of this project (its "
                               f"content differs); pick the moved copy of that very file")
        return self._set_path(rec, new_path)

    def missing_slides(self) -> list[SlideRecord]:
        return [s for s in self.slides() if not s.exists]

    def relink_missing(self, folders: Sequence[str | Path]) -> list[SlideRecord]:
        """Search ``folders`` (recursively) for slides whose file moved; relink those found.

        Only files (and folders, for DICOM) of exactly the missing slide's size are hashed.
        """
        by_size: dict[int, list[SlideRecord]] = {}
        for rec in self.missing_slides():
            by_size.setdefault(rec.size, []).append(rec)
        found: list[SlideRecord] = []
        for folder in folders:
            for root, dirs, files in os.walk(Path(folder).expanduser()):
                if not by_size:
                    return found
                for entry in [Path(root, f) for f in files] + [Path(root)]:
                    try:
                        size = (sum(f.stat().st_size for f in entry.iterdir() if f.is_file())
                                if entry.is_dir() else entry.stat().st_size)
                    except OSError:
                        continue
                    if size not in by_size:
                        continue
                    try:
                        digest = slide_fingerprint(entry)[1]
                    except ProjectError:
                        continue
                    match = next((r for r in by_size[size] if r.hash == digest), None)
                    if match is not None:
                        found.append(self._set_path(match, entry.resolve()))
                        by_size[size].remove(match)
                        if not by_size[size]:
                            del by_size[size]
        return found

    # -- classes ---------------------------------------------------------------------------------

    def classes(self) -> list[AnnotationClass]:
        rows = self.query("SELECT name, r, g, b, shortcut FROM classes ORDER BY id")
        return [AnnotationClass(n, (r, g, b), s) for n, r, g, b, s in rows]

    def class_named(self, name: str) -> AnnotationClass | None:
        return next((c for c in self.classes() if c.name == name), None)

    def ensure_class(self, cls: AnnotationClass, conn: sqlite3.Connection | None = None) -> int:
        """The id of class ``cls.name``, created with ``cls``'s colour and shortcut when new."""
        c = conn or self.conn
        with db.guarded(self.db_path):
            row = c.execute("SELECT id FROM classes WHERE name = ?", (cls.name,)).fetchone()
            if row:
                return int(row[0])
            taken = cls.shortcut is not None and c.execute(
                "SELECT 1 FROM classes WHERE shortcut = ?", (cls.shortcut,)).fetchone()
            cur = c.execute("INSERT INTO classes (name, r, g, b, shortcut) VALUES (?, ?, ?, ?, ?)",
                            (cls.name, *cls.color, None if taken else cls.shortcut))
            return int(cur.lastrowid)

    def set_class(self, cls: AnnotationClass) -> None:
        """Create class ``cls`` or update its colour and shortcut."""
        with self.transaction() as c:
            if cls.shortcut is not None:
                clash = c.execute("SELECT name FROM classes WHERE shortcut = ? AND name != ?",
                                  (cls.shortcut, cls.name)).fetchone()
                if clash:
                    raise AnnotationError(f"shortcut {cls.shortcut!r} already belongs to class "
                                          f"{clash[0]!r}")
            c.execute("INSERT INTO classes (name, r, g, b, shortcut) VALUES (?, ?, ?, ?, ?) "
                      "ON CONFLICT(name) DO UPDATE SET r = excluded.r, g = excluded.g, "
                      "b = excluded.b, shortcut = excluded.shortcut",
                      (cls.name, *cls.color, cls.shortcut))

    def remove_class(self, name: str) -> None:
        """Delete a class no annotation uses (should an undo bring back an annotation of it, the
        class is recreated with the default colour)."""
        with self.transaction() as c:
            row = c.execute("SELECT id FROM classes WHERE name = ?", (name,)).fetchone()
            if row is None:
                raise AnnotationError(f"no class named {name!r}")
            n = c.execute("SELECT count(*) FROM annotations WHERE class_id = ?",
                          (row[0],)).fetchone()[0]
            if n:
                raise AnnotationError(f"class {name!r} is used by {n} annotation(s); reclass or "
                                      f"delete them first")
            c.execute("DELETE FROM classes WHERE id = ?", (row[0],))

    def class_color(self, name: str | None) -> Color | None:
        cls = self.class_named(name) if name else None
        return cls.color if cls else None

    # -- annotations -------------------------------------------------------------------------------

    def store(self, slide: int | str | Path | SlideRecord) -> AnnotationStore:
        """The journalled annotation store of one slide of this project."""
        from engine.annotations.store import AnnotationStore

        return AnnotationStore(self, self.slide(slide))


def _default_author() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no user name in containers without a passwd entry
        return os.environ.get("USER", "") or "unknown"

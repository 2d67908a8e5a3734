"""How an Annotation is stored: a row of ``annotations`` and, in the journal, JSON + WKB."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass

import shapely

from engine.annotations.errors import ProjectCorruptError
from engine.annotations.model import Annotation

#: Columns of ``annotations`` read back into an Annotation (class by name through a join).
SELECT = ("SELECT a.id, a.uuid, a.kind, c.name, a.name, a.source, a.author, a.created, a.modified, "
          "a.locked, a.geometry FROM annotations a LEFT JOIN classes c ON c.id = a.class_id")


def to_wkb(ann: Annotation) -> bytes:
    return shapely.to_wkb(ann.geometry, output_dimension=2, byte_order=1)


def from_row(row: tuple) -> Annotation:
    _rowid, uid, kind, cls, name, source, author, created, modified, locked, wkb = row
    try:
        geometry = shapely.from_wkb(wkb)
        return Annotation.from_store(geometry, cls, uid, kind, source, author, name, created,
                                     modified, locked)
    except (shapely.errors.GEOSException, ValueError, TypeError) as exc:
        raise ProjectCorruptError(f"annotation {uid}: its stored record is damaged "
                                  f"({exc})") from None


def from_rows(rows: list[tuple]) -> list[Annotation]:
    """Many rows at once: WKB decoded in one vectorised call."""
    try:
        geoms = shapely.from_wkb([r[-1] for r in rows]) if rows else []
    except shapely.errors.GEOSException as exc:
        raise ProjectCorruptError(f"a stored annotation geometry is damaged ({exc})") from None
    out = []
    for row, g in zip(rows, geoms):
        _rowid, uid, kind, cls, name, source, author, created, modified, locked, _wkb = row
        try:
            out.append(Annotation.from_store(g, cls, uid, kind, source, author, name, created,
                                             modified, locked))
        except (ValueError, TypeError) as exc:
            raise ProjectCorruptError(f"annotation {uid}: its stored record is damaged "
                                      f"({exc})") from None
    return out


@dataclass(frozen=True)
class State:
    """An annotation's full state as the journal keeps it: attributes as JSON, geometry as WKB."""

    attrs: str
    wkb: bytes

    @classmethod
    def of(cls, ann: Annotation) -> State:
        attrs = {"uuid": ann.uuid, "kind": ann.kind.value, "class": ann.class_name,
                 "source": ann.source.value, "author": ann.author, "name": ann.name,
                 "created": ann.created, "modified": ann.modified, "locked": ann.locked}
        return cls(json.dumps(attrs, sort_keys=True, allow_nan=False), to_wkb(ann))

    def annotation(self) -> Annotation:
        a = json.loads(self.attrs)
        return Annotation.from_store(shapely.from_wkb(self.wkb), a["class"], a["uuid"], a["kind"],
                                     a["source"], a["author"], a["name"], a["created"],
                                     a["modified"], a["locked"])


def change_op(before: Annotation | None, after: Annotation | None) -> str:
    """What a change does, for the audit: add, remove, geometry, reclass, lock, unlock, edit."""
    if before is None:
        return "add"
    if after is None:
        return "remove"
    ops = []
    if not before.geometry.equals_exact(after.geometry, 0):
        ops.append("geometry")
    if before.class_name != after.class_name:
        ops.append("reclass")
    if before.locked != after.locked:
        ops.append("lock" if after.locked else "unlock")
    return "+".join(ops) if ops else "edit"


def class_id(conn: sqlite3.Connection, name: str | None) -> int | None:
    """Id of class ``name``; a class deleted since is recreated with the default colour."""
    if name is None:
        return None
    row = conn.execute("SELECT id FROM classes WHERE name = ?", (name,)).fetchone()
    if row:
        return int(row[0])
    return int(conn.execute("INSERT INTO classes (name, r, g, b) VALUES (?, 255, 0, 0)",
                            (name,)).lastrowid)


def insert(conn: sqlite3.Connection, slide_id: int, ann: Annotation) -> None:
    g = ann.geometry
    min_x, min_y, max_x, max_y = g.bounds
    cur = conn.execute(
        "INSERT INTO annotations (uuid, slide_id, kind, class_id, name, source, author, created, "
        "modified, locked, area, geometry) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (ann.uuid, slide_id, ann.kind.value, class_id(conn, ann.class_name), ann.name,
         ann.source.value, ann.author, ann.created, ann.modified, int(ann.locked), g.area,
         to_wkb(ann)))
    conn.execute("INSERT INTO annotation_index VALUES (?, ?, ?, ?, ?)",
                 (cur.lastrowid, min_x, max_x, min_y, max_y))


def delete(conn: sqlite3.Connection, uuid: str) -> None:
    row = conn.execute("SELECT id FROM annotations WHERE uuid = ?", (uuid,)).fetchone()
    if row is not None:
        conn.execute("DELETE FROM annotation_index WHERE id = ?", (row[0],))
        conn.execute("DELETE FROM annotations WHERE id = ?", (row[0],))


def update(conn: sqlite3.Connection, ann: Annotation) -> None:
    g = ann.geometry
    min_x, min_y, max_x, max_y = g.bounds
    row = conn.execute("SELECT id FROM annotations WHERE uuid = ?", (ann.uuid,)).fetchone()
    conn.execute(
        "UPDATE annotations SET kind = ?, class_id = ?, name = ?, source = ?, author = ?, "
        "created = ?, modified = ?, locked = ?, area = ?, geometry = ? WHERE id = ?",
        (ann.kind.value, class_id(conn, ann.class_name), ann.name, ann.source.value, ann.author,
         ann.created, ann.modified, int(ann.locked), g.area, to_wkb(ann), row[0]))
    conn.execute("UPDATE annotation_index SET min_x = ?, max_x = ?, min_y = ?, max_y = ? "
                 "WHERE id = ?", (min_x, max_x, min_y, max_y, row[0]))

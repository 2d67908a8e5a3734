"""The annotations of one slide, with an edit journal that makes undo/redo unlimited and durable.

Every edit is one transaction that changes ``annotations`` (and the R*Tree) and appends a *step* to
the journal: the full state of each touched annotation before and after (JSON + WKB). Undo applies a
step backwards and redo forwards; both are transactions too, so the history survives a crash or a
restart exactly as committed. Steps are never deleted: a new edit after an undo marks the undone
steps ``discarded``, and the ``audit`` table records who did, undid or redid which step, and when.

Locked annotations refuse every change except being unlocked.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from shapely.geometry import box
from shapely.geometry.base import BaseGeometry

from engine.annotations import records
from engine.annotations.errors import AnnotationError, ConflictError
from engine.annotations.model import Annotation, AnnotationClass, Kind, mark_seen
from engine.annotations.records import State

if TYPE_CHECKING:
    from engine.annotations.project import Project, SlideRecord

log = logging.getLogger(__name__)

Pair = tuple[Annotation | None, Annotation | None]
Target = str | Annotation  # an annotation to edit: its uuid, or the Annotation the caller saw


def _targets(targets: Target | Iterable[Target]) -> list[Target]:
    return [targets] if isinstance(targets, (str, Annotation)) else list(targets)


@dataclass(frozen=True)
class Change:
    """One annotation's part of a step: its state before and after (None: absent)."""

    op: str
    uuid: str
    before: Annotation | None
    after: Annotation | None


@dataclass(frozen=True)
class Step:
    """One undoable edit as the journal holds it."""

    id: int
    label: str
    author: str
    at: float
    status: str
    changes: tuple[Change, ...] = ()


@dataclass(frozen=True)
class AuditEntry:
    """Who did, undid or redid which step, and when."""

    step_id: int
    action: str
    author: str
    at: float
    label: str
    ops: tuple[tuple[str, str], ...]  # (op, annotation uuid) for each change of the step


class AnnotationStore:
    """Annotations of one slide. Reads are plain queries; every write is a journalled step."""

    def __init__(self, project: Project, slide: SlideRecord) -> None:
        self.project = project
        self.slide = slide

    # -- reading ---------------------------------------------------------------------------------

    def _select(self, where: str = "", params: Sequence = ()) -> list[Annotation]:
        sql = f"{records.SELECT} WHERE a.slide_id = ? {where} ORDER BY a.id"
        return records.from_rows(self.project.query(sql, (self.slide.id, *params)))

    def find(self, uuid: str) -> Annotation | None:
        found = self._select("AND a.uuid = ?", (str(uuid).lower(),))
        return found[0] if found else None

    def get(self, uuid: str) -> Annotation:
        ann = self.find(uuid)
        if ann is None:
            raise AnnotationError(f"no annotation {uuid} on slide {self.slide.name}")
        return ann

    def annotations(self, kind: Kind | None = Kind.REGION) -> list[Annotation]:
        """All annotations of the slide in creation order (``kind=None``: regions and ROIs)."""
        if kind is None:
            return self._select()
        return self._select("AND a.kind = ?", (Kind(kind).value,))

    def rois(self) -> list[Annotation]:
        """The correction ROIs: inside them, unannotated tissue is reviewed "not tumour"."""
        return self.annotations(Kind.ROI)

    def count(self, kind: Kind | None = Kind.REGION) -> int:
        sql = "SELECT count(*) FROM annotations WHERE slide_id = ?"
        params: tuple = (self.slide.id,)
        if kind is not None:
            sql += " AND kind = ?"
            params += (Kind(kind).value,)
        return int(self.project.query(sql, params)[0][0])

    def query(self, x0: float, y0: float, x1: float, y1: float, *, kind: Kind | None = Kind.REGION,
              exact: bool = True) -> list[Annotation]:
        """Annotations whose geometry meets the rectangle [x0, x1] × [y0, y1] (level-0 pixels).

        The R*Tree finds candidates by bounding box; ``exact`` then keeps only the geometries that
        really intersect the rectangle (a viewport may skip that for speed).
        """
        where = ("AND a.id IN (SELECT id FROM annotation_index WHERE max_x >= ? AND min_x <= ? "
                 "AND max_y >= ? AND min_y <= ?)")
        params: tuple = (x0, x1, y0, y1)
        if kind is not None:
            where += " AND a.kind = ?"
            params += (Kind(kind).value,)
        found = self._select(where, params)
        if not exact:
            return found
        window = box(x0, y0, x1, y1)
        return [a for a in found if a.geometry.intersects(window)]

    # -- editing ---------------------------------------------------------------------------------

    def add(self, annotations: Annotation | Iterable[Annotation], label: str | None = None) -> Step:
        anns = [annotations] if isinstance(annotations, Annotation) else list(annotations)
        stamped = [a if a.author else a.evolve(author=self.project.author) for a in anns]
        default = "add annotation" if len(anns) == 1 else f"add {len(anns)} annotations"
        return self.edit([(None, a) for a in stamped], label or default)

    def remove(self, targets: Target | Iterable[Target], label: str | None = None) -> Step:
        """Delete annotations, given as uuids or as the Annotations the caller saw (then a change
        made meanwhile by another window or program is a ConflictError, and nothing is deleted)."""
        items = _targets(targets)
        default = "delete annotation" if len(items) == 1 else f"delete {len(items)} annotations"
        return self.edit([(self._before(t), None) for t in items], label or default)

    def modify(self, annotation: Annotation, label: str = "edit annotation",
               expected: Annotation | None = None) -> Step:
        """Replace the stored annotation of the same uuid by ``annotation`` (modified: now).

        Optimistic concurrency, as :meth:`edit`: the database must still hold the state the caller
        saw, ``expected``, by default the state ``annotation`` was read as or derived from with
        ``evolve`` (:attr:`Annotation.seen`). If another window or program changed or deleted it
        meanwhile, :class:`ConflictError` and nothing is written. Only an annotation made anew (no
        seen state, no ``expected``) replaces whatever is stored.
        """
        before = expected or annotation.seen or self.get(annotation.uuid)
        after = annotation.evolve(modified=time.time())
        step = self.edit([(before, after)], label)
        mark_seen(annotation, after)  # what the caller derives from it next starts from the commit
        return step

    def set_geometry(self, target: Target, geometry: BaseGeometry,
                     label: str = "change outline") -> Step:
        """Give one annotation (a uuid, or the Annotation the caller saw: compared as in
        :meth:`modify`) a new outline."""
        return self.edit(self._changed([target], geometry=geometry), label)

    def reclass(self, targets: Target | Iterable[Target], class_name: str | None,
                label: str | None = None) -> Step:
        """Set the class of annotations (uuids, or the Annotations the caller saw)."""
        return self.edit(self._changed(_targets(targets), class_name=class_name),
                         label or f"set class {class_name or '(none)'}")

    def set_locked(self, targets: Target | Iterable[Target], locked: bool = True) -> Step:
        """Lock or unlock annotations (uuids, or the Annotations the caller saw)."""
        return self.edit(self._changed(_targets(targets), locked=locked),
                         "lock" if locked else "unlock")

    def _before(self, target: Target) -> Annotation:
        """The state an edit of ``target`` expects in the database: for an Annotation, the state
        the caller saw (what it was read as, or itself); for a uuid, the state stored now."""
        if isinstance(target, Annotation):
            return target.seen or target
        return self.get(target)

    def _changed(self, targets: list[Target], **changes: object) -> list[Pair]:
        now = time.time()
        pairs = []
        for t in targets:
            before = self._before(t)
            base = t if isinstance(t, Annotation) else before
            pairs.append((before, base.evolve(**changes, modified=now)))
        return pairs

    def edit(self, pairs: Sequence[Pair], label: str,
             classes: Sequence[AnnotationClass] = ()) -> Step:
        """Apply one compound edit (e.g. a merge: two removes and an add) as one undoable step.

        Each pair is (state expected now, state wanted): (None, a) adds, (a, None) removes.
        ``classes`` missing from the project are created in the same transaction (an import).
        """
        pairs = [(b, a) for b, a in pairs if b is None or a is None or b != a]
        if not pairs:
            raise AnnotationError("nothing to change")
        for before, after in pairs:
            if before is None and after is None:
                raise AnnotationError("a change needs a state before or after")
            if before is not None and after is not None and before.uuid != after.uuid:
                raise AnnotationError("a change cannot give an annotation a new id")
            if before is not None and before.locked and (after is None or after.locked):
                raise AnnotationError(f"annotation {before.uuid} is locked; unlock it first")
        uuids = [(b or a).uuid for b, a in pairs]  # type: ignore[union-attr]
        if len(set(uuids)) != len(uuids):
            raise AnnotationError("one edit changes the same annotation twice")
        author, now = self.project.author, time.time()
        with self.project.transaction() as c:
            for cls in classes:
                self.project.ensure_class(cls, conn=c)
            c.execute("UPDATE steps SET status = 'discarded' WHERE slide_id = ? "
                      "AND status = 'undone'", (self.slide.id,))
            step_id = int(c.execute(
                "INSERT INTO steps (slide_id, label, author, at, status) "
                "VALUES (?, ?, ?, ?, 'applied')",
                (self.slide.id, label, author, now)).lastrowid)
            changes = []
            for before, after in pairs:
                self._apply(c, before, after)
                op = records.change_op(before, after)
                b, a = (State.of(x) if x else None for x in (before, after))
                c.execute("INSERT INTO changes (step_id, op, uuid, before, before_geometry, after, "
                          "after_geometry) VALUES (?, ?, ?, ?, ?, ?, ?)",
                          (step_id, op, (before or after).uuid,  # type: ignore[union-attr]
                           b and b.attrs, b and b.wkb, a and a.attrs, a and a.wkb))
                uid = (before or after).uuid  # type: ignore[union-attr]
                changes.append(Change(op, uid, before, after))
            c.execute("INSERT INTO audit (step_id, action, author, at) VALUES (?, 'do', ?, ?)",
                      (step_id, author, now))
        for _before, after in pairs:
            if after is not None:
                mark_seen(after, after)  # it is the stored state now
        log.debug("step %d %r: %d change(s)", step_id, label, len(changes))
        return Step(step_id, label, author, now, "applied", tuple(changes))

    def _apply(self, c: sqlite3.Connection, expected: Annotation | None,
               target: Annotation | None) -> None:
        """Move one annotation from state ``expected`` (checked against the database) to
        ``target``."""
        uid = (expected or target).uuid  # type: ignore[union-attr]
        row = c.execute(f"{records.SELECT} WHERE a.uuid = ?", (uid,)).fetchone()
        if expected is None:
            if row is not None:
                where = "this slide" if self._owned(c, uid) else "another slide"
                raise ConflictError(f"annotation {uid} already exists on {where}")
        else:
            if row is None:
                raise ConflictError(f"annotation {uid} was deleted meanwhile (another window or "
                                    f"program?); nothing was changed")
            if not self._owned(c, uid):
                raise AnnotationError(f"no annotation {uid} on slide {self.slide.name}")
            if State.of(records.from_row(row)) != State.of(expected):
                raise ConflictError(f"annotation {uid} was changed meanwhile (another window or "
                                    f"program?); nothing was changed: reload and try again")
        if target is None:
            records.delete(c, uid)
        elif expected is None:
            records.insert(c, self.slide.id, target)
        else:
            records.update(c, target)

    def _owned(self, c: sqlite3.Connection, uuid: str) -> bool:
        row = c.execute("SELECT slide_id FROM annotations WHERE uuid = ?", (uuid,)).fetchone()
        return row is not None and row[0] == self.slide.id

    # -- undo / redo / history -----------------------------------------------------------------

    def _next_step(self, undo: bool) -> tuple[int, str] | None:
        status, order = ("applied", "DESC") if undo else ("undone", "ASC")
        rows = self.project.query(f"SELECT id, label FROM steps WHERE slide_id = ? AND status = ? "
                                  f"ORDER BY id {order} LIMIT 1", (self.slide.id, status))
        return (int(rows[0][0]), rows[0][1]) if rows else None

    def can_undo(self) -> bool:
        return self._next_step(True) is not None

    def can_redo(self) -> bool:
        return self._next_step(False) is not None

    def undo_label(self) -> str | None:
        nxt = self._next_step(True)
        return nxt[1] if nxt else None

    def redo_label(self) -> str | None:
        nxt = self._next_step(False)
        return nxt[1] if nxt else None

    def undo(self) -> Step | None:
        """Undo the latest applied step (None when there is nothing to undo)."""
        return self._travel(undo=True)

    def redo(self) -> Step | None:
        """Redo the earliest undone step (None when there is nothing to redo)."""
        return self._travel(undo=False)

    def _travel(self, *, undo: bool) -> Step | None:
        author, now = self.project.author, time.time()
        with self.project.transaction() as c:
            status, order = ("applied", "DESC") if undo else ("undone", "ASC")
            row = c.execute(f"SELECT id, label, author, at FROM steps WHERE slide_id = ? AND "
                            f"status = ? ORDER BY id {order} LIMIT 1",
                            (self.slide.id, status)).fetchone()
            if row is None:
                return None
            step_id = int(row[0])
            changes = self._changes(c, step_id)
            for ch in (reversed(changes) if undo else changes):
                src, dst = (ch.after, ch.before) if undo else (ch.before, ch.after)
                self._apply(c, src, dst)
            c.execute("UPDATE steps SET status = ? WHERE id = ?",
                      ("undone" if undo else "applied", step_id))
            c.execute("INSERT INTO audit (step_id, action, author, at) VALUES (?, ?, ?, ?)",
                      (step_id, "undo" if undo else "redo", author, now))
        status = "undone" if undo else "applied"
        return Step(step_id, row[1], row[2], row[3], status, tuple(changes))

    @staticmethod
    def _changes(c: sqlite3.Connection, step_id: int) -> list[Change]:
        rows = c.execute("SELECT op, uuid, before, before_geometry, after, after_geometry "
                         "FROM changes WHERE step_id = ? ORDER BY id", (step_id,)).fetchall()
        return [Change(op, uid, State(b, bg).annotation() if b is not None else None,
                       State(a, ag).annotation() if a is not None else None)
                for op, uid, b, bg, a, ag in rows]

    def steps(self, status: str | None = None) -> list[Step]:
        """Journal steps of this slide, oldest first (with their changes)."""
        sql = "SELECT id, label, author, at, status FROM steps WHERE slide_id = ?"
        params: tuple = (self.slide.id,)
        if status:
            sql += " AND status = ?"
            params += (status,)
        with self.project.reading() as conn:
            rows = conn.execute(sql + " ORDER BY id", params).fetchall()
            return [Step(i, lb, au, at, st, tuple(self._changes(conn, i)))
                    for i, lb, au, at, st in rows]

    def history(self, limit: int | None = None) -> list[AuditEntry]:
        """The audit trail of this slide, newest first: who did, undid or redid what, and when."""
        sql = ("SELECT au.step_id, au.action, au.author, au.at, s.label FROM audit au "
               "JOIN steps s ON s.id = au.step_id WHERE s.slide_id = ? ORDER BY au.id DESC")
        params: tuple = (self.slide.id,)
        if limit is not None:
            sql += " LIMIT ?"
            params += (int(limit),)
        out = []
        for step_id, action, author, at, label in self.project.query(sql, params):
            ops = tuple((op, u) for op, u in self.project.query(
                "SELECT op, uuid FROM changes WHERE step_id = ? ORDER BY id", (step_id,)))
            out.append(AuditEntry(step_id, action, author, at, label, ops))
        return out

    def annotation_history(self, uuid: str) -> list[AuditEntry]:
        """The audit trail of one annotation, oldest first: each do, undo and redo touching it."""
        sql = ("SELECT au.step_id, au.action, au.author, au.at, s.label, ch.op FROM audit au "
               "JOIN steps s ON s.id = au.step_id JOIN changes ch ON ch.step_id = s.id "
               "WHERE ch.uuid = ? AND s.slide_id = ? ORDER BY au.id")
        rows = self.project.query(sql, (str(uuid).lower(), self.slide.id))
        return [AuditEntry(step, action, author, at, label, ((op, str(uuid).lower()),))
                for step, action, author, at, label, op in rows]

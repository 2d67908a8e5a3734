"""Undo/redo in the GUI: a QUndoStack that mirrors the store's journal, one command per step.

The store is the truth: an edit is committed to the project's database (one transaction) before its
command is pushed, and a command's undo/redo is the store's undo/redo of the latest (earliest) step.
Since the journal survives a restart, :meth:`AnnotationDocument.set_store` rebuilds the stack from it:
after reopening a project, Edit ▸ Undo undoes the edits of the previous session too.
"""

from __future__ import annotations

import logging

from PySide6.QtCore import QObject, Signal
from PySide6.QtGui import QUndoCommand, QUndoStack

from app.state.editing import Edit
from engine.api import AnnotationStore, CocoPathError, Step

log = logging.getLogger(__name__)


class JournalCommand(QUndoCommand):
    """One journal step. Pushed after the step was committed, so the first redo does nothing."""

    def __init__(self, document: AnnotationDocument, step_id: int, label: str) -> None:
        super().__init__(label)
        self.document = document
        self.step_id = step_id
        self._first = True

    def redo(self) -> None:
        if self._first:
            self._first = False
            return
        self.document.travel(undo=False)

    def undo(self) -> None:
        self.document.travel(undo=True)


class AnnotationDocument(QObject):
    """The annotations of the open slide: the store, its undo stack, and change notifications."""

    changed = Signal(object)  # Step (or None: everything may have changed)
    error = Signal(str)  # an edit, undo or redo was refused: the engine's one sentence

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.store: AnnotationStore | None = None
        self.undo_stack = QUndoStack(self)
        self._mirroring = False  # while the stack is rebuilt: commands leave the store alone

    def set_store(self, store: AnnotationStore | None) -> None:
        """Show ``store``'s slide; the undo stack is rebuilt from its journal."""
        self.store = store
        self.rebuild()
        self.changed.emit(None)

    def rebuild(self) -> None:
        """Make the undo stack mirror the journal: applied steps, then the undone ones (redoable)."""
        self._mirroring = True
        try:
            self.undo_stack.clear()
            if self.store is None:
                return
            steps = [s for s in self.store.steps() if s.status != "discarded"]
            for s in steps:
                self.undo_stack.push(JournalCommand(self, s.id, s.label))
            applied = sum(1 for s in steps if s.status == "applied")
            self.undo_stack.setIndex(applied)  # undone steps: their commands' undo is a no-op here
            self.undo_stack.setClean()
        finally:
            self._mirroring = False

    def apply(self, edit: Edit | None) -> Step | None:
        """Commit ``edit`` as one journalled step and push its command (None: nothing to do)."""
        if edit is None or not edit.pairs or self.store is None:
            return None
        try:
            step = self.store.edit(list(edit.pairs), edit.label, edit.classes)
        except CocoPathError as exc:
            self.error.emit(str(exc))
            return None
        self.adopt(step.id, step.label, step)
        return step

    def adopt(self, step_id: int, label: str, step: Step | None = None) -> None:
        """Push the command of a step the store already committed (an import, say)."""
        self.undo_stack.push(JournalCommand(self, step_id, label))
        self.changed.emit(step)

    def travel(self, *, undo: bool) -> None:
        if self._mirroring or self.store is None:
            return
        try:
            step = self.store.undo() if undo else self.store.redo()
        except CocoPathError as exc:  # the database changed under us: resynchronise the stack
            log.warning("%s", exc)
            self.error.emit(str(exc))
            from PySide6.QtCore import QTimer

            QTimer.singleShot(0, self, self._resync)
            return
        self.changed.emit(step)

    def _resync(self) -> None:
        self.rebuild()
        self.changed.emit(None)

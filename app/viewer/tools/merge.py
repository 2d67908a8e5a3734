"""Merge: click the annotation to keep, then each one to merge into it (one undoable step each);
Esc starts over. The merged shape keeps the first annotation's class and id."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtGui import QKeyEvent

from app.state import editing
from app.viewer.tools.base import ClickTool
from engine.api import Annotation


class MergeTool(ClickTool):
    name = "merge"
    label = "Merge"
    shortcut = "J"
    tip = "Click the annotation to keep, then the ones to merge into it; Esc starts over"
    cursor = Qt.CursorShape.PointingHandCursor

    def activate(self) -> None:
        self.host.set_selection(self.host.selection[:1])

    def clicked(self, ann: Annotation | None, x: float, y: float,
                mods: Qt.KeyboardModifier) -> None:
        if ann is None:
            return
        keep = self.host.selected_annotations()[:1]
        if not keep or keep[0].uuid == ann.uuid:
            self.host.set_selection([ann.uuid])
            self.host.message.emit("Now click the annotations to merge into this one.")
            return
        self.host.apply(editing.merge([keep[0], ann]))
        self.host.set_selection([keep[0].uuid])

    def key(self, event: QKeyEvent) -> bool:
        if event.key() == Qt.Key.Key_Escape and self.host.selection:
            self.host.set_selection([])
            return True
        return False

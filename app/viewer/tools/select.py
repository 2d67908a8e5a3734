"""Select: click an annotation (or a correction ROI) to select it; Shift-click adds or removes;
a click on nothing clears. Delete removes the selection, a class key reclasses it."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtGui import QKeyEvent

from app.viewer.tools.base import Tool
from engine.api import Kind


class SelectTool(Tool):
    name = "select"
    label = "Select"
    shortcut = "S"
    tip = "Click to select, Shift-click to add; Delete deletes, a class key reclasses"
    cursor = Qt.CursorShape.ArrowCursor

    def press(self, x: float, y: float, mods: Qt.KeyboardModifier) -> bool:
        ann = self.host.annotation_at(x, y, kind=Kind.REGION) or self.host.annotation_at(
            x, y, kind=Kind.ROI)
        current = list(self.host.selection)
        if mods & Qt.KeyboardModifier.ShiftModifier:
            if ann is not None:
                current = ([u for u in current if u != ann.uuid] if ann.uuid in current
                           else current + [ann.uuid])
        else:
            current = [ann.uuid] if ann is not None else []
        self.host.set_selection(current)
        return True

    def key(self, event: QKeyEvent) -> bool:
        if event.key() in (Qt.Key.Key_Delete, Qt.Key.Key_Backspace) and self.host.selection:
            self.host.delete_selection()
            return True
        if event.key() == Qt.Key.Key_Escape and self.host.selection:
            self.host.set_selection([])
            return True
        return False

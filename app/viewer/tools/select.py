"""Select: click an annotation (or the border of a correction ROI: a click inside one is a click on
what lies under it) to select it; Shift-click adds or removes; a click on nothing clears. Delete
removes the selection, a class key reclasses it."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtGui import QKeyEvent

from app.viewer.tools.base import Tool


class SelectTool(Tool):
    name = "select"
    label = "Select"
    shortcut = "S"
    tip = ("Click to select (a correction ROI: click its border), Shift-click to add; Delete "
           "deletes, a class key reclasses")
    cursor = Qt.CursorShape.ArrowCursor

    def press(self, x: float, y: float, mods: Qt.KeyboardModifier) -> bool:
        ann = self.host.picked(x, y)
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

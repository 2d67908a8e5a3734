"""Delete: click an annotation (or the border of a correction ROI) to delete it (Ctrl+Z brings it
back)."""

from __future__ import annotations

from PySide6.QtCore import Qt

from app.state import editing
from app.viewer.tools.base import ClickTool
from engine.api import Annotation


class DeleteTool(ClickTool):
    name = "delete"
    label = "Delete"
    shortcut = "D"
    tip = "Click an annotation (a correction ROI: its border) to delete it"
    cursor = Qt.CursorShape.ForbiddenCursor

    def press(self, x: float, y: float, mods: Qt.KeyboardModifier) -> bool:
        ann = self.host.picked(x, y)
        self.act_on(ann, x, y, mods)
        return True

    def clicked(self, ann: Annotation | None, x: float, y: float,
                mods: Qt.KeyboardModifier) -> None:
        if ann is None:
            return
        self.host.apply(editing.delete([ann]))

"""Delete: click an annotation (or a correction ROI) to delete it (Ctrl+Z brings it back)."""

from __future__ import annotations

from PySide6.QtCore import Qt

from app.state import editing
from app.viewer.tools.base import ClickTool
from engine.api import Annotation, Kind


class DeleteTool(ClickTool):
    name = "delete"
    label = "Delete"
    shortcut = "D"
    tip = "Click an annotation to delete it"
    cursor = Qt.CursorShape.ForbiddenCursor

    def press(self, x: float, y: float, mods: Qt.KeyboardModifier) -> bool:
        ann = self.host.annotation_at(x, y, Kind.REGION) or self.host.annotation_at(x, y, Kind.ROI)
        self.act_on(ann, x, y, mods)
        return True

    def clicked(self, ann: Annotation | None, x: float, y: float,
                mods: Qt.KeyboardModifier) -> None:
        if ann is None:
            return
        self.host.apply(editing.delete([ann]))

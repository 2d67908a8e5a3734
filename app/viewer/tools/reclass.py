"""Reclass: click an annotation to give it the current class."""

from __future__ import annotations

from PySide6.QtCore import Qt

from app.state import editing
from app.viewer.tools.base import ClickTool
from engine.api import Annotation


class ReclassTool(ClickTool):
    name = "reclass"
    label = "Reclass"
    shortcut = "C"
    tip = "Click an annotation to give it the current class"
    cursor = Qt.CursorShape.PointingHandCursor

    def clicked(self, ann: Annotation | None, x: float, y: float,
                mods: Qt.KeyboardModifier) -> None:
        if ann is None or self.host.current_class is None:
            return
        self.host.apply(editing.reclass([ann], self.host.current_class))

"""What every annotation tool shares: the host it edits through, and the event hooks it overrides.

A tool turns mouse and key input on the slide view into an :class:`~app.state.editing.Edit`
(computed by :mod:`app.state.editing`, Qt-free) and hands it to the host, which commits it as one
journalled step. Positions reach tools in level-0 pixels; a hook returns True when it used the event
(otherwise the view pans and zooms as usual).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from PySide6.QtCore import QPointF, Qt
from PySide6.QtGui import QColor, QKeyEvent, QPainter, QPen

from app.state.viewport import Viewport

if TYPE_CHECKING:
    from app.viewer.annotator import Annotator

PREVIEW_PEN = QColor(255, 255, 255)


class Tool:
    """Base class: does nothing (the view pans on drag); subclasses override the hooks they need."""

    name: ClassVar[str] = ""
    label: ClassVar[str] = ""
    shortcut: ClassVar[str] = ""
    tip: ClassVar[str] = ""
    cursor: ClassVar[Qt.CursorShape] = Qt.CursorShape.CrossCursor

    def __init__(self, host: Annotator) -> None:
        self.host = host

    # hooks: positions in level-0 pixels; ``mods`` are the keyboard modifiers of the event
    def press(self, x: float, y: float, mods: Qt.KeyboardModifier) -> bool:
        return False

    def move(self, x: float, y: float, mods: Qt.KeyboardModifier, dragging: bool) -> bool:
        return False

    def release(self, x: float, y: float, mods: Qt.KeyboardModifier) -> bool:
        return False

    def double_click(self, x: float, y: float) -> bool:
        return False

    def key(self, event: QKeyEvent) -> bool:
        return False

    def paint(self, p: QPainter, vp: Viewport) -> None:
        """Draw the gesture in progress (screen coordinates)."""

    def cancel(self) -> None:
        """Drop the gesture in progress (Esc, tool change, slide change)."""

    def activate(self) -> None:
        """The tool became the current one."""


class ClickTool(Tool):
    """A tool that acts on the annotation under a click (delete, reclass, merge, select)."""

    def press(self, x: float, y: float, mods: Qt.KeyboardModifier) -> bool:
        self.act_on(self.host.annotation_at(x, y), x, y, mods)
        return True

    def act_on(self, ann: object, x: float, y: float, mods: Qt.KeyboardModifier) -> None:
        if ann is not None and ann.locked:  # type: ignore[attr-defined]
            self.host.message.emit("This annotation is locked; unlock it first.")
            return
        self.clicked(ann, x, y, mods)

    def clicked(self, ann: object, x: float, y: float, mods: Qt.KeyboardModifier) -> None:
        raise NotImplementedError


def outline_pen(color: QColor = PREVIEW_PEN, width: float = 1.5,
                style: Qt.PenStyle = Qt.PenStyle.SolidLine) -> QPen:
    pen = QPen(color, width, style)
    pen.setCosmetic(True)
    return pen


def screen_points(vp: Viewport, pts: list[tuple[float, float]]) -> list[QPointF]:
    return [QPointF(*vp.to_screen(x, y)) for x, y in pts]

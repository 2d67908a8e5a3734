"""Eraser: a brush that cuts its stroke out of every unlocked region under it, whatever its class."""

from __future__ import annotations

from app.viewer.tools.brush import BrushTool


class EraserTool(BrushTool):
    name = "eraser"
    label = "Eraser"
    shortcut = "E"
    tip = "Erase from every annotation under the stroke; [ and ] change the size"
    erases = True

"""Fill: flood the region under the click into an annotation.

A click in a hole of an annotation fills the hole; a click in the unannotated part of a correction
ROI turns that part (the connected piece around the click) into an annotation of the current class.
Flooding the model's predicted region is the *fill from prediction* tool (``fill_prediction``).
"""

from __future__ import annotations

from PySide6.QtCore import Qt

from app.state import editing
from app.viewer.tools.base import Tool
from engine.api import Kind


class FillTool(Tool):
    name = "fill"
    label = "Fill"
    shortcut = "G"
    tip = "Fill a hole of an annotation, or the unannotated part of a correction ROI"
    cursor = Qt.CursorShape.PointingHandCursor

    def press(self, x: float, y: float, mods: Qt.KeyboardModifier) -> bool:
        store = self.host.store
        t = self.host.tolerance()
        here = store.query(x - t, y - t, x + t, y + t, kind=None, exact=False)
        nearby = {a.uuid: a for a in here}
        for roi in (a for a in here if a.kind is Kind.ROI):
            nearby.update((a.uuid, a) for a in self.host.touching(roi.geometry, Kind.REGION))
        edit = editing.fill_at(x, y, list(nearby.values()), self.host.current_class,
                               self.host.author)
        if edit is None:
            self.host.message.emit("Nothing to fill here: click in a hole of an annotation or in "
                                   "the unannotated part of a correction ROI.")
            return True
        self.host.apply(edit)
        return True

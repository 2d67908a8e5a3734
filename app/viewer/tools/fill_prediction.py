"""Fill from prediction: click a region the model predicts; that connected region becomes an
annotation of its class (joining an annotation of that class it touches; what is already drawn in
other classes stays). One click, one undo step."""

from __future__ import annotations

from PySide6.QtCore import Qt

from app.state.accept import MAX_PIXELS
from app.viewer.tools.base import Tool
from engine.api import pending_tiles, prediction_component_at, vector_tolerances

NO_PREDICTION = "No prediction on this slide yet: run a model first (the Model panel)."


class PredictionFillTool(Tool):
    name = "fill_prediction"
    label = "Fill from prediction"
    shortcut = "Shift+G"
    tip = "Click a region the model predicts: it becomes an annotation of its class"
    cursor = Qt.CursorShape.PointingHandCursor

    def press(self, x: float, y: float, mods: Qt.KeyboardModifier) -> bool:
        host = self.host
        cache = host.prediction_cache()
        if cache is None:
            host.message.emit(NO_PREDICTION)
            return True
        geo = host.view.geometry_
        tol, _ = vector_tolerances((geo.mpp, geo.mpp) if geo is not None and geo.mpp else None)
        comp = prediction_component_at(cache, x, y, tol, MAX_PIXELS)
        if comp is None:
            if pending_tiles(cache, x, y, x + 1, y + 1):
                host.message.emit("The model has not predicted this spot yet: let the run reach it "
                                  "(Model panel), then click again.")
            else:
                host.message.emit(f"The model predicts no {' or '.join(cache.class_names)} here: "
                                  f"click inside a coloured region of the prediction.")
            return True
        name = cache.class_names[comp.class_index]
        polygons = [[comp.geometry] if k == comp.class_index else [] for k in range(cache.channels)]
        step = host.accept_prediction(polygons, cache, f"fill from prediction ({name})",
                                      f"This predicted {name} region is annotated already.",
                                      single=True)
        if step is not None:
            host.message.emit(f"The predicted {name} region is now an annotation (Ctrl+Z undoes).")
        return True

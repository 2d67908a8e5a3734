"""Correction ROI: the area a pathologist has reviewed (drawn dashed). Inside it, what is not
annotated counts as "not tumour" for training; outside every ROI nothing is known. Drag a rectangle
(ROI tool) or click/drag a polygon (ROI polygon tool)."""

from __future__ import annotations

from PySide6.QtCore import Qt

from app.viewer.tools.polygon import PolygonTool
from app.viewer.tools.rectangle import RectangleTool
from engine.api import Kind


class RoiTool(RectangleTool):
    name = "roi"
    label = "Correction ROI"
    shortcut = "O"
    tip = "Drag the rectangle you have reviewed: unannotated tissue inside it counts as not tumour"
    kind = Kind.ROI
    dash = Qt.PenStyle.DashLine


class RoiPolygonTool(PolygonTool):
    name = "roi_polygon"
    label = "Correction ROI (polygon)"
    shortcut = "Shift+O"
    tip = "Click or drag the outline you have reviewed; double-click or Enter closes"
    kind = Kind.ROI
    dash = Qt.PenStyle.DashLine

"""Annotation tools, one per file; each turns mouse and key input into one journalled edit."""

from app.viewer.tools.base import Tool
from app.viewer.tools.brush import BrushTool
from app.viewer.tools.delete import DeleteTool
from app.viewer.tools.eraser import EraserTool
from app.viewer.tools.fill import FillTool
from app.viewer.tools.fill_prediction import PredictionFillTool
from app.viewer.tools.merge import MergeTool
from app.viewer.tools.move import MoveTool
from app.viewer.tools.polygon import PolygonTool
from app.viewer.tools.reclass import ReclassTool
from app.viewer.tools.rectangle import RectangleTool
from app.viewer.tools.roi import RoiPolygonTool, RoiTool
from app.viewer.tools.select import SelectTool

#: In toolbar order.
TOOL_CLASSES: tuple[type[Tool], ...] = (
    SelectTool, BrushTool, EraserTool, PolygonTool, RectangleTool, FillTool, PredictionFillTool,
    MoveTool, MergeTool, ReclassTool, DeleteTool, RoiTool, RoiPolygonTool,
)

__all__ = ["TOOL_CLASSES", "Tool"]

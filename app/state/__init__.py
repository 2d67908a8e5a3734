"""Qt-free view state: viewport geometry, level choice, zoom and magnification math, tile plans.

Nothing here imports PySide6 (import-linter checks it), so it is tested without a display.
"""

from app.state.viewport import (
    MAGNIFICATION_PRESETS,
    ScaleBar,
    SlideGeometry,
    Viewport,
    available_presets,
    fit_viewport,
    format_magnification,
    format_position,
    nice_scale_bar,
)
from app.state.tiles import TilePlan, plan_tiles

__all__ = [
    "MAGNIFICATION_PRESETS",
    "ScaleBar",
    "SlideGeometry",
    "TilePlan",
    "Viewport",
    "available_presets",
    "fit_viewport",
    "format_magnification",
    "format_position",
    "nice_scale_bar",
    "plan_tiles",
]

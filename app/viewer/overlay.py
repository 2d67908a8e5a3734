"""The annotation layer moved to :mod:`app.viewer.layers.annotations` (its windowed skeleton to
:mod:`app.viewer.layers.base`); these names stay importable from here."""

from app.viewer.layers.annotations import (AnnotationOverlay, OverlayStats, RenderRequest,
                                           RenderResult)
from app.viewer.layers.base import MARGIN, answers, blit_window

__all__ = ["MARGIN", "AnnotationOverlay", "OverlayStats", "RenderRequest", "RenderResult",
           "answers", "blit_window"]

"""The prediction layer moved to :mod:`app.viewer.layers.predictions`; these names stay importable
from here."""

from app.viewer.layers.predictions import (PredictionImage, PredictionOverlay, PredictionRequest,
                                           screen_pixels, tissue_clip)

__all__ = ["PredictionImage", "PredictionOverlay", "PredictionRequest", "screen_pixels",
           "tissue_clip"]

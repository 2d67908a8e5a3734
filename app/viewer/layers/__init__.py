"""What the slide view paints over the slide's tiles, bottom to top: predictions, annotations, the
review box, the legend, the scale bar. One :class:`Layer` protocol; :class:`WindowedLayer` is the
base of the layers rendered off the GUI thread (request ids, one worker, stale results dropped, one
blit)."""

from app.viewer.layers.annotations import AnnotationOverlay
from app.viewer.layers.base import Layer, PaintedLayer, WindowedLayer
from app.viewer.layers.legend import LegendLayer
from app.viewer.layers.predictions import PredictionOverlay
from app.viewer.layers.review import ReviewBoxLayer

__all__ = ["AnnotationOverlay", "Layer", "LegendLayer", "PaintedLayer", "PredictionOverlay",
           "ReviewBoxLayer", "WindowedLayer"]

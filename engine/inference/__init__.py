"""Whole-slide inference: the model's card, tiled overlapped inference with seam-free blending,
the on-disk prediction pyramid (filled tile by tile, visible region first), polygons and areas.

Importing this package does not import torch: the viewer reads prediction caches through
:class:`PredictionCache` (``read_region``, ``done_tiles``) and model cards through
:func:`load_spec`. The network side lives in ``runner`` and ``pipeline`` (imported on use).
"""

from engine.inference.cache import CacheError, PredictionCache, slide_key
from engine.inference.geometry import PredictionGrid, make_grid
from engine.inference.spec import ModelError, ModelSpec, load_spec

__all__ = ["CacheError", "ModelError", "ModelSpec", "PredictionCache", "PredictionGrid",
           "load_spec", "make_grid", "slide_key"]

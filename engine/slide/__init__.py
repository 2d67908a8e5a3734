"""Whole-slide images: sources, region requests, tile grids and the byte-bounded tile cache.

No torch and no Qt here (import-linter checks it), so the viewer starts fast.
"""

from engine.errors import SlideError
from engine.slide.cache import ByteBoundedCache, default_cache_bytes
from engine.slide.request import RegionRequest, TileGrid, TileId, best_level_for_downsample
from engine.slide.source import OpenSlideSource, SlideInfo, SlideSource, argb_to_rgb, open_slide

__all__ = [
    "ByteBoundedCache",
    "OpenSlideSource",
    "RegionRequest",
    "SlideError",
    "SlideInfo",
    "SlideSource",
    "TileGrid",
    "TileId",
    "argb_to_rgb",
    "best_level_for_downsample",
    "default_cache_bytes",
    "open_slide",
]

"""The engine's facade for the app: the only engine module the GUI imports (import-linter checks).

It re-exports value types and entry points; heavy parts (torch) stay behind lazy imports so that
importing this module costs the viewer nothing at start-up.
"""

from __future__ import annotations

from engine.errors import CocoPathError, SlideError
from engine.slide import sample
from engine.slide.cache import ByteBoundedCache, default_cache_bytes
from engine.slide.pyramid import build_pyramid_tiff
from engine.slide.request import RegionRequest, TileGrid, TileId, best_level_for_downsample
from engine.slide.sample import SampleDownloadError, download_sample, local_sample
from engine.slide.source import OpenSlideSource, SlideInfo, SlideSource, open_slide
from engine.slide.tissue import TissueMask, detect_tissue

__all__ = [
    "ByteBoundedCache",
    "CocoPathError",
    "OpenSlideSource",
    "RegionRequest",
    "SampleDownloadError",
    "SlideError",
    "SlideInfo",
    "SlideSource",
    "TileGrid",
    "TileId",
    "TissueMask",
    "best_level_for_downsample",
    "build_pyramid_tiff",
    "default_cache_bytes",
    "detect_tissue",
    "download_sample",
    "local_sample",
    "open_slide",
    "sample",
]

"""What an inference run leaves beside the slide: a pyramidal label-mask TIFF and QuPath GeoJSON.

The mask TIFF has one page per cache level (level 0 at the prediction resolution, each next level
halved), tiled and deflate-compressed, with resolution tags (µm/px of each level), written tile by
tile from the cache: OpenSlide, ASAP and QuPath open it as a generic tiled TIFF. Pixel value = class
index (0 = background). The GeoJSON goes through the annotation engine's QuPath writer.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from shapely.geometry import Polygon

from engine.annotations.geojson_io import write_geojson
from engine.annotations.model import Annotation, AnnotationClass, Source
from engine.atomic import atomic_replace
from engine.inference.cache import PredictionCache
from engine.inference.spec import ModelSpec
from engine.inference.vectorize import labels_from_probs, mask_to_polygons, vector_level
from engine.oserrors import writing

log = logging.getLogger(__name__)

TIFF_TILE = 512


def write_mask_tiff(cache: PredictionCache, path: str | Path,
                    slide_mpp: tuple[float, float] | None) -> Path:
    """The cache's labels as a pyramidal TIFF (atomically; tile by tile, any size fits memory). A
    full disk or read-only folder raises :class:`~engine.oserrors.WriteError` naming ``path`` and
    leaves nothing behind (no temporary file; an older file at ``path`` stays as it was)."""
    import tifffile

    path = Path(path)
    t = TIFF_TILE

    def tiles(level: int, w: int, h: int) -> Iterator[np.ndarray]:
        ds = cache.level_downsample(level)
        for ty in range(0, h, t):
            for tx in range(0, w, t):
                yield labels_from_probs(cache.read_region(level, tx * ds, ty * ds, t, t))

    def write(tmp: Path) -> None:
        with tifffile.TiffWriter(tmp, bigtiff=True) as tif:
            for level, (w, h) in enumerate(cache.levels):
                kw = {}
                if slide_mpp:
                    ds = cache.level_downsample(level)
                    kw = {"resolution": (1e4 / (slide_mpp[0] * ds), 1e4 / (slide_mpp[1] * ds)),
                          "resolutionunit": "CENTIMETER"}
                tif.write(tiles(level, w, h), shape=(h, w), dtype=np.uint8, tile=(t, t),
                          photometric="minisblack", compression="zlib",
                          subfiletype=0 if level == 0 else 1, metadata=None, **kw)

    with writing(path):
        atomic_replace(path, write)
    return path


def prediction_polygons(cache: PredictionCache, tolerance: float, min_area: float,
                        max_pixels: int = 1 << 24) -> tuple[int, list[list[Polygon]]]:
    """(cache level used, polygons per foreground class) in slide level-0 pixels."""
    level = vector_level(cache, max_pixels, tolerance)
    w, h = cache.levels[level]
    labels = labels_from_probs(cache.read_region(level, 0, 0, w, h))
    ds = cache.level_downsample(level)
    out = [mask_to_polygons(labels == k + 1, ds, (0, 0), tolerance, min_area)
           for k in range(cache.channels)]
    return level, out


def write_prediction_geojson(path: str | Path, polygons: Sequence[Sequence[Polygon]], spec: ModelSpec,
                             mpp: tuple[float, float] | None) -> int:
    """QuPath GeoJSON: one annotation per polygon, classified and coloured by class; returns count."""
    classes = [AnnotationClass(name, spec.color(i)) for i, name in enumerate(spec.foreground)]
    anns = [Annotation(p, cls.name, source=Source.MODEL, author=f"{spec.name} {spec.version}")
            for cls, polys in zip(classes, polygons) for p in polys]
    write_geojson(path, anns, classes, mpp)
    return len(anns)

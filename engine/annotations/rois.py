"""Correction ROIs: the areas a pathologist has reviewed, and the partial labels they imply.

A correction ROI is an :class:`Annotation` of kind ``roi`` (no class), journalled like any other
edit. Its meaning for training (issue 6): inside a reviewed ROI, every pixel is labelled: by the
class of the annotation that covers it, else background ("not tumour"); outside every ROI nothing is
known, and the pixel gets :data:`IGNORE`, which the supervised loss skips. Annotations drawn outside
any ROI are ignored too unless ``label_outside_rois`` is set (a pathologist's outline is evidence
for its inside, but says nothing about the unannotated tissue around it).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import shapely

from engine.annotations.mask import label_table, rasterize
from engine.annotations.model import Annotation, AnnotationClass

#: Label of pixels outside every correction ROI: unknown, skipped by the supervised loss.
IGNORE = 255
BACKGROUND = 0


def partial_label_mask(annotations: Sequence[Annotation], classes: Sequence[AnnotationClass],
                       x0: float, y0: float, width: int, height: int, downsample: float = 1.0,
                       *, label_outside_rois: bool = False) -> np.ndarray:
    """A (height, width) uint8 training target for a window: class labels (1…), 0 for reviewed
    background, :data:`IGNORE` outside the correction ROIs. Labels follow :func:`label_table`."""
    labels = label_table(classes)
    rois = [a for a in annotations if a.is_roi]
    regions = [(a, labels[a.class_name]) for a in annotations
               if not a.is_roi and a.class_name in labels]
    out = np.full((height, width), IGNORE, dtype=np.uint8)
    if rois:
        reviewed = rasterize([(r, 1) for r in rois], x0, y0, width, height, downsample) > 0
        out[reviewed] = BACKGROUND
    else:
        reviewed = np.zeros((height, width), dtype=bool)
    painted = rasterize(regions, x0, y0, width, height, downsample)
    keep = painted > 0 if label_outside_rois else (painted > 0) & reviewed
    out[keep] = painted[keep]
    return out


def reviewed_area(annotations: Sequence[Annotation]) -> float:
    """Level-0 pixels² covered by correction ROIs (overlaps counted once)."""
    rois = [a.geometry for a in annotations if a.is_roi]
    return float(shapely.union_all(rois).area) if rois else 0.0

"""Which colours say "the model predicted this" and which "a pathologist drew this".

Corrections (annotations) are drawn in their class's colour, which the project keeps (the starter
classes: Tumour red, Stroma green, Necrosis purple, Other blue, see :mod:`app.state.session`). The
model's predictions used the same red for its first class as the Tumour annotation: the two could
not be told apart. Predictions are drawn in a family of their own instead, whatever colours the
model card suggests: a cool teal-green for the first class (the complement of both the Tumour red
and eosin pink, so it reads on tissue), then lime, orange and magenta. Each lies at least 30° of hue
from every starter class colour (tests/app/test_app_view_palette.py checks it).
"""

from __future__ import annotations

import colorsys
from dataclasses import replace

from app.state.predictions import PredictionStyle

RGB = tuple[int, int, int]

#: Prediction colours by foreground class (repeated beyond the fourth).
PREDICTION_COLORS: tuple[RGB, ...] = ((0, 210, 150), (190, 220, 0), (255, 130, 0), (230, 0, 210))


def prediction_color(index: int) -> RGB:
    """The colour predictions of foreground class ``index`` (0-based) are drawn in."""
    return PREDICTION_COLORS[index % len(PREDICTION_COLORS)]


def with_prediction_colors(style: PredictionStyle) -> PredictionStyle:
    """``style`` with each class's colour replaced by the prediction family's."""
    return replace(style, colors=tuple(prediction_color(i) for i in range(len(style.colors))))


def hue(rgb: tuple[float, float, float]) -> float:
    """The hue of an 8-bit RGB colour, in degrees (0–360)."""
    r, g, b = (min(max(float(c), 0.0), 255.0) / 255.0 for c in rgb)
    return colorsys.rgb_to_hsv(r, g, b)[0] * 360.0


def hue_distance(a: tuple[float, float, float], b: tuple[float, float, float]) -> float:
    """How far apart two colours' hues are around the colour wheel, in degrees (0–180)."""
    d = abs(hue(a) - hue(b)) % 360.0
    return min(d, 360.0 - d)

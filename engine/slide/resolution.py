"""The resolution guard: a slide much coarser than what a model reads gets a warning, never a
silent many-fold upsampling.

A model is trained at one µm/px (its card's ``input.mpp``); inference and fine-tuning read the
slide at that scale. When even the slide's finest level is more than ``factor`` times coarser, the
network would see pixels blown up many times over: its predictions (and anything learnt there) are
not meaningful. The viewer, ``cocopath-engine infer`` and a fine-tuning round all ask
:func:`resolution_problem` and show its one sentence.

Plain arithmetic: no torch, no Qt (the viewer imports it at start-up).
"""

from __future__ import annotations

import math

#: A slide up to this many times coarser than the model is read as it is (mild upsampling).
COARSER_FACTOR = 2.0


def format_mpp(value: float) -> str:
    """µm/px for a sentence: 0.25, 0.5, 1, 4.1, 29 (two significant figures below 10, whole
    numbers above)."""
    if value >= 10:
        return f"{value:.0f}"
    text = f"{value:.2g}"
    if "e" in text:  # very small values: plain decimals, never scientific notation
        text = f"{value:.6f}".rstrip("0").rstrip(".")
    return text


def resolution_problem(slide_mpp: float | None, model_mpp: float | None,
                       factor: float = COARSER_FACTOR) -> str | None:
    """The sentence to show when a slide whose finest level is ``slide_mpp`` µm/px is more than
    ``factor`` times coarser than a model that reads ``model_mpp`` µm/px; None when it is fine or
    when either is unknown (nothing can be said then).

    >>> resolution_problem(29.0, 1.0)
    'this slide is 29 µm/px; the model reads 1 µm/px: its predictions here are not meaningful'
    >>> resolution_problem(0.25, 1.0) is None
    True
    """
    if slide_mpp is None or model_mpp is None:
        return None
    s, m = float(slide_mpp), float(model_mpp)
    if not (math.isfinite(s) and math.isfinite(m)) or s <= 0 or m <= 0:
        return None
    if s <= factor * m:
        return None
    return (f"this slide is {format_mpp(s)} µm/px; the model reads {format_mpp(m)} µm/px: "
            f"its predictions here are not meaningful")

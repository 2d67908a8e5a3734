"""How much of a benign real slide's tissue a model calls tumour, run as the app runs it.

The ship gate (:func:`engine.training.ship.ship_student`, wired by the command line) refuses a new
default student that calls more of these slides tumour than the one it replaces: a pathologist's
first look at a slide without carcinoma must not get worse while the test split improves.
"""

from __future__ import annotations

import tempfile
from typing import Any

#: Real whole slides without carcinoma in the shared data (``slides/…``).
BENIGN_SLIDES = ("cmu-1-small-region.svs",)


def benign_slide_calls(model: Any, meta: dict[str, Any], slides: tuple[str, ...] = BENIGN_SLIDES) -> dict[str, float]:
    """The share of the tissue ``model`` (with its card ``meta``) calls tumour on each benign slide this
    machine has (``slides/<name>`` in the shared data; a missing one is left out): whole-slide
    inference at the card's µm/px, eager torch, outputs in a temporary folder."""
    from engine.inference.job import InferOptions, infer_slide
    from engine.inference.runner import TorchRunner
    from engine.inference.spec import spec_from_meta
    from engine.shared_data import SharedDataMissing, data_path

    spec = spec_from_meta(meta, "benign-check")
    runner = TorchRunner(model.float().eval(), spec)
    tumour = spec.foreground[0]
    calls: dict[str, float] = {}
    for name in slides:
        try:
            path = data_path("slides", name)
        except SharedDataMissing:
            continue
        with tempfile.TemporaryDirectory(prefix="cocopath-benign-") as tmp:
            summary = infer_slide(path, spec, runner, tmp, InferOptions())
        calls[name] = float(summary["measurements"]["classes"][tumour]["fraction_of_tissue"] or 0.0)
    return calls

"""How much of a benign real slide's tissue a model calls tumour, run as the app runs it.

The ship gate (:func:`engine.training.ship.ship_student`, wired by the command line) refuses a new
default student that calls more of these slides tumour than the one it replaces: a pathologist's
first look at a slide without carcinoma must not get worse while the test split improves.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

#: Real whole slides without carcinoma in the shared data (``slides/…``).
BENIGN_SLIDES = ("cmu-1-small-region.svs",)


def benign_slide_calls(model: Any, meta: dict[str, Any], slides: tuple[str, ...] = BENIGN_SLIDES) -> dict[str, float]:
    """The share of the tissue ``model`` (with its card ``meta``) calls tumour on each benign slide this
    machine has (``slides/<name>`` in the shared data; a missing one is left out): whole-slide
    inference at the card's µm/px, eager torch, outputs in a temporary folder."""
    from engine.shared_data import SharedDataMissing, data_path

    paths = {}
    for name in slides:
        try:
            paths[name] = data_path("slides", name)
        except SharedDataMissing:
            continue
    with tempfile.TemporaryDirectory(prefix="cocopath-benign-") as tmp:
        return tumour_calls(model, meta, paths, Path(tmp))


def tumour_calls(model: Any, meta: dict[str, Any], slides: dict[str, Path], out: Path) -> dict[str, float]:
    """The share of each slide's tissue ``model`` calls tumour (name → path in ``slides``), run as the
    app runs it: whole-slide at the card's µm/px (level 0 when the slide states none), eager torch;
    each slide's mask and summary are written under ``out/<name>/``."""
    from engine.inference.job import InferOptions, infer_slide
    from engine.inference.runner import TorchRunner
    from engine.inference.spec import spec_from_meta

    spec = spec_from_meta(meta, "tumour-calls")
    runner = TorchRunner(model.float().eval(), spec)
    tumour = spec.foreground[0]
    calls: dict[str, float] = {}
    for name, path in slides.items():
        summary = infer_slide(path, spec, runner, out / name, InferOptions())
        calls[name] = float(summary["measurements"]["classes"][tumour]["fraction_of_tissue"] or 0.0)
    return calls

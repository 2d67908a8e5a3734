"""What the Training panel says before a round starts, Qt-free: the slides by name with their
correction ROI counts, which of them are ticked, and how the project's classes map to the model's.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

#: The label index a class the round ignores maps to (engine.finetune.data.IGNORE).
IGNORED = 255


def slide_label(path: str | Path) -> str:
    """A slide as the pathologist knows it: its file name; a DICOM slide (a folder of .dcm files)
    by its folder and file ("folder/level-0.dcm"), the file OpenSlide reads (the first .dcm)."""
    p = Path(path)
    if p.suffix.lower() == ".dcm":
        return f"{p.parent.name}/{p.name}"
    if p.is_dir():
        try:
            dcm = sorted(p.glob("*.dcm")) or sorted(p.glob("*.DCM"))
        except OSError:
            dcm = []
        return f"{p.name}/{dcm[0].name}" if dcm else f"{p.name}/"
    return p.name


@dataclass(frozen=True)
class SlideRow:
    """One slide of the project in the round's list."""

    path: str  # as the project records it (a DICOM slide: its folder)
    name: str  # slide_label(path)
    rois: int  # correction ROIs drawn on it


def roi_text(row: SlideRow) -> str:
    return f"{row.name} — {row.rois} ROI{'s' if row.rois != 1 else ''}"


def ticked_after_switch(paths: Sequence[str], open_path: str | None,
                        by_hand: Mapping[str, bool]) -> set[str]:
    """The ticked slides once the view shows ``open_path``: the open slide, and those the user
    ticked by hand (``by_hand``: path → the state they set); the slides they unticked by hand stay
    unticked unless open."""
    ticked = {p for p in paths if by_hand.get(p)}
    if open_path is not None and open_path in paths:
        ticked.add(open_path)
    return ticked


def class_plan(project_classes: Sequence[str], model_classes: Sequence[str], used: Iterable[str],
               lut: Sequence[int], notes: Sequence[str]) -> str:
    """One paragraph: how each class drawn on the ticked slides trains the model. ``lut`` and
    ``notes`` are :func:`engine.api.class_lut`'s (``lut[i + 1]``: the model class of project class
    i, :data:`IGNORED` when ignored); a class it matched by name is said here, the rest are its
    notes as they are."""
    used = set(used)
    if not used:
        return ("Classes: no class is drawn on the ticked slides yet; inside a correction ROI, "
                "unannotated pixels are learnt as background.")
    parts = []
    for i, name in enumerate(project_classes):
        if name not in used or i + 1 >= len(lut) or any(repr(name) in n for n in notes):
            continue  # a class the notes speak of is said there
        target = int(lut[i + 1])
        if target != IGNORED and target < len(model_classes):
            parts.append(f"class {name!r} is the model's {model_classes[target]!r}")
    parts += list(notes)
    text = "; ".join(parts) if parts else "the classes drawn are learnt as they are"
    return f"Classes: {text}."

"""The Training panel before a round: the project's slides by name with their correction ROI counts
(kept current as ROIs are drawn, deleted, undone and redone), which slides are ticked (the open one,
after a slide switch, and any the user ticked by hand), how the classes drawn on them map to the
model's (the engine's :func:`~engine.api.class_lut` notes), and a warning line for a ticked slide
far coarser than the model reads (the engine's :func:`~engine.api.resolution_problem`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QObject, QTimer

from app.panels.training import TrainingPanel
from app.state.round_plan import SlideRow, class_plan, slide_label, ticked_after_switch
from engine.api import CocoPathError, Kind, class_lut, missing_classes, resolution_problem

if TYPE_CHECKING:
    from app.main_window import MainWindow

log = logging.getLogger(__name__)

PLAN_DEBOUNCE_MS = 400  # edits come in bursts (a brush stroke, undo held down): plan once after

#: The model a round would start from: (its class names, its µm/px), or None when there is none.
ModelCard = Callable[[], "tuple[list[str], float | None] | None"]


class RoundPlan(QObject):
    """Keeps ``panel``'s slide list, class plan and resolution warning true to the project."""

    def __init__(self, window: MainWindow, panel: TrainingPanel, model_card: ModelCard) -> None:
        super().__init__(window)
        self.window = window
        self.panel = panel
        self.model_card = model_card
        self.rows: list[SlideRow] = []
        self.mpp: dict[str, tuple[float, float] | None] = {}  # path → the slide's µm/px
        self.ticked: set[str] = set()
        self.by_hand: dict[str, bool] = {}  # path → the tick the user set
        self.open_path: str | None = None
        self.project: Any = None
        self.enabled = False  # off until the Training dock is ready (after the first frame)
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(PLAN_DEBOUNCE_MS)
        self._timer.timeout.connect(self.update_plan)
        panel.ticks_changed.connect(self._on_tick)
        panel.options_changed.connect(self._timer.start)
        window.view.annotator.document.changed.connect(self._on_annotations)

    def _open_record_path(self) -> str | None:
        store = self.window.view.annotator.store
        return str(store.slide.path) if store is not None else None

    def refresh(self) -> None:
        """Re-read the project's slides and their ROI counts; a new open slide (or project) moves
        the ticks to it."""
        if not self.enabled:
            return
        project = self.window.annotations.project
        if project is not self.project:
            self.project, self.by_hand, self.open_path = project, {}, None
        rows: list[SlideRow] = []
        self.mpp = {}
        if project is not None:
            try:
                for rec in project.slides():
                    rows.append(SlideRow(rec.path, slide_label(rec.path),
                                         project.store(rec).count(Kind.ROI)))
                    self.mpp[rec.path] = rec.mpp
            except CocoPathError as exc:
                log.warning("slides of the project not listed: %s", exc)
        self.rows = rows
        paths = [r.path for r in rows]
        open_path = self._open_record_path()
        if open_path != self.open_path:  # a slide switch: the open slide is the ticked one
            self.open_path = open_path
            self.ticked = ticked_after_switch(paths, open_path, self.by_hand)
        else:
            self.ticked &= set(paths)
        self.panel.set_slides(rows, self.ticked)
        self.update_plan()

    def chosen(self) -> list[str]:
        return [r.path for r in self.rows if r.path in self.ticked]

    def _on_tick(self, path: str, ticked: bool) -> None:
        self.by_hand[path] = ticked
        (self.ticked.add if ticked else self.ticked.discard)(path)
        self._timer.start()

    def _on_annotations(self, _step: object) -> None:
        """An edit, undo or redo on the open slide (or another slide shown): its ROI count now."""
        if not self.enabled:
            return
        path = self._open_record_path()
        if path is None:
            return
        if path != self.open_path or path not in self.mpp:
            self.refresh()
            return
        store = self.window.view.annotator.store
        try:
            n = store.count(Kind.ROI)
        except CocoPathError as exc:
            log.warning("ROIs not counted: %s", exc)
            return
        for i, row in enumerate(self.rows):
            if row.path == path and row.rois != n:
                self.rows[i] = SlideRow(row.path, row.name, n)
                self.panel.set_roi_count(self.rows[i])
        self._timer.start()  # a class drawn: the plan may change

    # -- the plan ----------------------------------------------------------------------------------

    def update_plan(self) -> None:
        """The class plan and the resolution warning for the ticked slides."""
        card = self.model_card()
        chosen = self.chosen()
        self.panel.set_warning(self._warning(chosen, card[1] if card else None))
        project = self.window.annotations.project
        if card is None or project is None or not chosen:
            self.panel.set_plan("")
            return
        try:
            used = self.used_classes(chosen)
            names = [c.name for c in project.classes()]
        except CocoPathError as exc:
            log.warning("class plan not made: %s", exc)
            self.panel.set_plan("")
            return
        new = self.new_classes(card[0], names, used)
        lut, notes = class_lut(names, card[0], used, new)
        self.panel.set_plan(class_plan(names, card[0], used, [int(v) for v in lut], notes))

    def used_classes(self, chosen: list[str]) -> set[str]:
        """The classes drawn on those of the ``chosen`` slides that have correction ROIs (the
        slides a round reads)."""
        project = self.window.annotations.project
        used: set[str] = set()
        for path in chosen:
            store = project.store(path)
            if store.count(Kind.ROI):
                used |= {a.class_name for a in store.annotations(Kind.REGION) if a.class_name}
        return used

    def new_classes(self, model_classes: list[str], names: list[str], used: set[str]) -> list[str]:
        """The drawn classes a round adds as new output classes: those the model lacks, when the
        panel says so; none otherwise."""
        if not self.panel.learns_new_classes():
            return []
        return missing_classes(model_classes, [n for n in names if n in used])

    def round_new_classes(self) -> tuple[str, ...]:
        """What :meth:`new_classes` says for the round about to start (the ticked slides)."""
        card, project = self.model_card(), self.window.annotations.project
        if card is None or project is None or not self.panel.learns_new_classes():
            return ()
        names = [c.name for c in project.classes()]
        return tuple(self.new_classes(card[0], names, self.used_classes(self.chosen())))

    def _warning(self, chosen: list[str], model_mpp: float | None) -> str:
        """One line: the first ticked slide too coarse for the model (and how many more)."""
        problems = []
        for path in chosen:
            mpp = self.mpp.get(path)
            problem = resolution_problem(mpp[0] if mpp else None, model_mpp)
            if problem is not None:
                problems.append(f"{slide_label(path)}: {problem}")
        if not problems:
            return ""
        more = f" (and {len(problems) - 1} more slide{'s' if len(problems) > 2 else ''})" \
            if len(problems) > 1 else ""
        return f"{problems[0]}{more}. A round refuses it: untick it."


def card_model(card: dict[str, Any] | None) -> tuple[list[str], float | None] | None:
    """(classes, µm/px) from a model card (``classes``, ``input.mpp``), or None without classes."""
    if not card or not card.get("classes"):
        return None
    mpp = (card.get("input") or {}).get("mpp")
    try:
        mpp = float(mpp) if mpp is not None else None
    except (TypeError, ValueError):
        mpp = None
    return [str(c) for c in card["classes"]], mpp

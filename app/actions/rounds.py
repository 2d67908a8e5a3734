"""The Training dock: a fine-tuning round of the project's active model on its correction ROIs.

The round runs in a subprocess (``engine.api.finetune_argv``, driven by
:class:`~app.finetune_bridge.FinetuneProcess`: the GUI thread only reads its output lines); its
events draw the curves; its result offers Accept (the new version becomes active; one worse than
its parent on the held-out ROIs or the replay sample asks first, both figures shown) or Keep old
(the version it started from). Before a round the panel lists the slides with their ROI counts,
the class plan and a warning for a slide too coarse for the model (:mod:`app.actions.round_plan`).

Reads the project's model registry through the engine API (which version a round starts from, an
empty registry seeded); what the Models dock must do is asked through its signals
(:mod:`app.actions.training` wires them to :mod:`app.actions.registry`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QObject, Qt, Signal
from PySide6.QtWidgets import QScrollArea, QWidget

from app.actions.round_plan import RoundPlan, card_model
from app.finetune_bridge import FinetuneProcess
from app.panels.training import TrainingPanel
from app.state.training import RoundEnd
from engine.api import CocoPathError

if TYPE_CHECKING:
    from app.main_window import MainWindow

log = logging.getLogger(__name__)

MIN_DOCK_HEIGHT = 24  # the docks' own minimum: a third group in the column costs the window little


class RoundActions(QObject):
    """Starts, follows and ends rounds for :attr:`panel` (shown in :attr:`area`, a scroll area)."""

    running_changed = Signal(bool)  # a round started (True) or ended (False)
    ended = Signal(object)  # RoundEnd, once the panel shows it
    choose_requested = Signal(str, str)  # (version to activate, the one to keep if it is worse)
    show_requested = Signal(str)  # a version whose mask to show on the slide, not made active
    versions_changed = Signal()  # a round seeded the registry with its first version

    def __init__(self, window: MainWindow) -> None:
        super().__init__(window)
        self.window = window
        self.last_end: RoundEnd | None = None
        self.round_project: Path | None = None  # the project the last round trained in
        self.process = FinetuneProcess(self)
        self.panel = TrainingPanel()
        self.area = scrolled(self.panel)  # the column of docks never raises the window's height
        self.plan = RoundPlan(window, self.panel, self._round_model)
        self.panel.finetune_requested.connect(self.finetune)
        self.panel.cancel_requested.connect(self.cancel)
        self.panel.accept_requested.connect(self.accept)
        self.panel.keep_old_requested.connect(self.keep_old)
        self.panel.show_new_requested.connect(self.show_new)
        self.process.event.connect(self._on_event)
        self.process.ended.connect(self._on_ended)
        self.ready = False
        self._update_enabled()

    def start(self) -> None:
        """Make the plots and the slide list (deferred until the first slide frame)."""
        if self.ready:
            return
        self.ready = True
        self.plan.enabled = True
        self.panel.ensure_plots()
        self.refresh_slides()

    def close(self) -> None:
        """The window closes: stop a running round (the registry stays as it was)."""
        self.process.shutdown()

    # -- the project's registry, through the engine API ------------------------------------------

    def _registry(self) -> Any:
        project = self.window.annotations.project
        if project is None:
            return None
        from engine.api import ModelRegistry

        return ModelRegistry.of_project(Path(project.folder))

    def _active(self, registry: Any) -> Any:
        try:
            return registry.active() if registry is not None else None
        except CocoPathError as exc:
            log.warning("active model version unknown: %s", exc)
            return None

    def _round_model(self) -> tuple[list[str], float | None] | None:
        """The classes and µm/px of the model a round would start from: the active version, else
        the Model panel's model."""
        active = self._active(self._registry())
        if active is not None:
            found = card_model(active.card)
            if found is not None:
                return found
        spec = self.window.predictions.spec
        return (list(spec.classes), spec.mpp) if spec is not None else None

    def refresh_slides(self) -> None:
        """The project's slides with their correction ROI counts, for the round's settings."""
        self.plan.refresh()
        self._update_enabled()

    def set_active_sentence(self, sentence: str) -> None:
        self.panel.set_active(sentence)

    # -- a round -----------------------------------------------------------------------------------

    def finetune(self) -> bool:
        """Start a round on the chosen slides' correction ROIs; False (with a message) if it cannot."""
        self.start()
        if self.process.running:
            return False
        project = self.window.annotations.project or self.window.annotations.ensure_project()
        if project is None:
            self._round_error("Open a slide first: fine-tuning learns from a project's corrections.")
            return False
        registry = self._registry()
        if self._active(registry) is None and not self._seed(registry):
            return False
        self.refresh_slides()
        slides = self.plan.chosen()
        if not slides:
            self._round_error("Tick at least one slide: the round learns from its correction ROIs.")
            return False
        try:
            from engine.api import RoundSettings, finetune_argv

            # "auto" (0) leaves the budget out: the round's process takes its device's default
            budget = self.panel.budget.value()
            distil = self.panel.teacher.isChecked()  # CoCo distillation from the teacher, else anchored
            settings = RoundSettings(budget_s=float(budget) if budget else None, slides=tuple(slides),
                                     method="coco-full" if distil else "anchored", use_teacher=distil,
                                     new_classes=self.plan.round_new_classes(),
                                     check_first=self._viewed_last(project))
            argv = finetune_argv(project.folder, settings, explicit=("budget_s",) if budget else ())
        except CocoPathError as exc:
            self._round_error(str(exc))
            return False
        self.last_end = None
        self.round_project = Path(project.folder)
        self.panel.started()
        self.process.start(argv)
        self._update_enabled()
        self.running_changed.emit(True)
        return True

    def _viewed_last(self, project: Any) -> tuple[str, ...]:
        """The ids of the project's slides the pathologist viewed last, the open one first: a round
        checks the masks of a few slides nobody corrected, and these first."""
        source = self.window.source
        paths = ([str(source.info.path)] if source is not None else []) + self.window.recent_files()
        try:
            ids = {str(Path(rec.path).resolve()): str(rec.id) for rec in project.slides()}
        except CocoPathError:
            return ()
        order = [ids.get(str(Path(p).resolve())) for p in paths]
        return tuple(dict.fromkeys(i for i in order if i is not None))

    def _seed(self, registry: Any) -> bool:
        """An empty registry gets the Model panel's model (else the shipped default) as its first
        version, so the round has a model to start from."""
        spec = self.window.predictions.spec
        try:
            if spec is not None and spec.checkpoint:
                v = registry.import_model(Path(spec.checkpoint),
                                          note=f"from the Model panel ({Path(spec.checkpoint).name})")
                registry.activate(v.version)
            else:
                from engine.api import default_model_path

                default = default_model_path()
                if default is None:
                    self._round_error("Choose a model in the Model panel first: fine-tuning "
                                      "trains a new version of a model.")
                    return False
                registry.ensure_seeded(default)
        except CocoPathError as exc:
            self._round_error(str(exc))
            return False
        self.versions_changed.emit()
        return self._active(registry) is not None

    def _round_error(self, message: str) -> None:
        self.panel.show_error(message)
        self.window.show_error(message)

    def cancel(self) -> None:
        if self.process.running:
            self.process.cancel()
            self.panel.status.setText("Cancelling…")

    def _on_event(self, ev: Any) -> None:
        if ev.kind == "error":
            self.panel.show_error(str(ev.data.get("message") or "the round failed"))
        else:
            self.panel.add_event(ev.kind, ev.data)

    def _on_ended(self, end: RoundEnd) -> None:
        self.last_end = end
        self.panel.finished(end)
        self.area.verticalScrollBar().setValue(0)  # the verdict and the choice at the top, in sight
        self._update_enabled()
        self.running_changed.emit(False)
        self.refresh_slides()
        self.ended.emit(end)  # the Models dock lists (and uses) the new version
        if end.status == "failed":
            self.window.show_error(end.message)
        elif end.status != "done" or end.result is None:
            self.window.statusBar().showMessage(end.message, 8000)
        else:
            self.window.statusBar().showMessage(f"Fine-tuning finished: {end.result.get('version')}",
                                                8000)

    # -- the choice after a round ------------------------------------------------------------------

    def _same_project(self) -> bool:
        """Whether the last round's versions belong to the open project (File ▸ Open project may
        have switched meanwhile)."""
        project = self.window.annotations.project
        folder = Path(project.folder) if project is not None else None
        if self.round_project is not None and self.round_project != folder:
            self._round_error(f"That round's versions belong to the project "
                              f"{self.round_project.name}: open it to choose between them.")
            return False
        return True

    def _result(self, key: str) -> str | None:
        end = self.last_end
        if end is None or end.result is None or not end.result.get(key):
            return None
        return str(end.result[key])

    def accept(self) -> None:
        """Accept: the round's new version becomes active (the Models dock asks first when it is
        worse than its parent; answering "keep" is Keep old)."""
        version = self._result("version")
        if version is not None and self._same_project():
            self.choose_requested.emit(version, self._result("parent") or "")

    def keep_old(self) -> None:
        """Keep old: the version the round started from stays (or becomes again) active."""
        parent = self._result("parent")
        if parent is not None and self._same_project():
            self.choose_requested.emit(parent, "")

    def show_new(self) -> None:
        """Show on slide: the round's new version predicts the open slide; the active one stays."""
        version = self._result("version")
        if version is not None and self._same_project():
            self.show_requested.emit(version)

    def on_choice_made(self, version: str) -> None:
        """The Models dock made ``version`` active for the round's choice."""
        if version in (self._result("version"), self._result("parent")):
            self.panel.choice_made()

    def _update_enabled(self) -> None:
        self.panel.set_running(self.process.running, self.window.annotations.project is not None)


def scrolled(widget: QWidget) -> QScrollArea:
    """``widget`` in a frameless scroll area that fits it to the column's width: a tall panel never
    raises the window's minimum height."""
    area = QScrollArea()
    area.setWidget(widget)
    area.setWidgetResizable(True)
    area.setFrameShape(QScrollArea.Shape.NoFrame)
    # the panel's text wraps; a column narrower than its narrowest layout scrolls, never cuts it
    area.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAsNeeded)
    area.setMinimumHeight(MIN_DOCK_HEIGHT)
    return area

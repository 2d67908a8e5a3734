"""The main window's learning loop: the Training, Models and Review next docks.

* Training: a fine-tuning round of the project's active model on its correction ROIs runs in a
  subprocess (``engine.api.finetune_argv``, driven by :class:`~app.finetune_bridge.FinetuneProcess`:
  the GUI thread only reads its output lines); its events draw the curves; its result offers Accept
  (activate the new version; a version worse than its parent on the held-out ROIs or the replay
  sample asks first, both figures shown) or Keep old (activate the version it started from).
  Before a round the panel lists the slides with their ROI counts, the class plan and a warning for
  a slide too coarse for the model (:mod:`app.actions.round_plan`).
* Models: the project's model registry (``<project>/models``); Activate, Rollback, Export, Import.
  Whenever the active version changes here, the Model panel's model becomes that version and the
  open slide is re-predicted, visible region first (prediction caches are per model version, so a
  version that predicted this slide before shows its predictions at once).
* Review next (:mod:`app.actions.review`): regions of the open slide to correct first; a click
  takes the view there and outlines the region.
* Which version is active is said in one sentence (:func:`app.state.versions.active_sentence`),
  the same in the Training, Models and Model panels.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QObject, Qt, QTimer, Signal
from PySide6.QtWidgets import QScrollArea, QWidget

from app.actions import model_files
from app.finetune_bridge import FinetuneProcess
from app.panels.models import ModelsPanel, ask_worse
from app.panels.review import ReviewPanel
from app.panels.training import TrainingPanel
from app.actions.review import ReviewActions
from app.actions.round_plan import RoundPlan, card_model
from app.state.training import RoundEnd, card_text, model_rows, result_comparisons
from app.state.versions import (Comparison, active_sentence, checkpoint_of,
                                comparisons_from_metrics, is_worse)
from engine.api import CocoPathError

if TYPE_CHECKING:
    from app.main_window import MainWindow

log = logging.getLogger(__name__)

PROJECT_POLL_MS = 1000  # File ▸ Open project has no signal: the project is compared this often
MIN_DOCK_HEIGHT = 24  # the docks' own minimum: a third group in the column costs the window little
TRAINING_DOCK_HEIGHT = 560  # of the right-hand column, below the slide info / model tabs
STARTUP_DELAY_MS = 1500  # with no slide frame by then, the docks get ready anyway


class TrainingActions(QObject):
    """Builds the training, models and review docks into ``window``."""

    active_changed = Signal(str)  # the registry's active version, after the app switched to it

    def __init__(self, window: MainWindow) -> None:
        super().__init__(window)
        self.window = window
        self.registry: Any = None
        self.project_folder: Path | None = None
        self.last_end: RoundEnd | None = None
        self.round_project: Path | None = None  # the project the last round trained in
        self.process = FinetuneProcess(self)
        self.panel = TrainingPanel()
        self.models = ModelsPanel()
        self.review = ReviewPanel()
        self.training_dock = window._dock("Training", "training", _scrolled(self.panel))
        # in scroll areas: the column of docks never raises the window's minimum height
        self.models_dock = window._dock("Models", "models", _scrolled(self.models))
        self.review_dock = window._dock("Review next", "review-next", _scrolled(self.review))
        window.tabifyDockWidget(self.training_dock, self.models_dock)
        window.tabifyDockWidget(self.training_dock, self.review_dock)
        self.training_dock.raise_()
        window.resizeDocks([self.training_dock], [TRAINING_DOCK_HEIGHT], Qt.Orientation.Vertical)
        for dock, panel in ((self.training_dock, self.panel), (self.models_dock, self.models)):
            dock.dockLocationChanged.connect(
                lambda area, p=panel: p.set_wide(area in (Qt.DockWidgetArea.TopDockWidgetArea,
                                                          Qt.DockWidgetArea.BottomDockWidgetArea)))
        window.view_menu.addSeparator()
        for dock in (self.training_dock, self.models_dock, self.review_dock):
            window.view_menu.addAction(dock.toggleViewAction())
        # training
        self.panel.finetune_requested.connect(self.finetune)
        self.panel.cancel_requested.connect(self.cancel)
        self.panel.accept_requested.connect(self.accept)
        self.panel.keep_old_requested.connect(self.keep_old)
        self.process.event.connect(self._on_event)
        self.process.ended.connect(self._on_ended)
        # models
        self.models.activate_requested.connect(self.activate)
        self.models.rollback_requested.connect(self.rollback)
        self.models.export_requested.connect(self.export_dialog)
        self.models.import_requested.connect(self.import_dialog)
        self.models.selected.connect(self._show_card)
        # review next, the round's plan
        self.reviewing = ReviewActions(window, self.review, self)
        self.reviewing.set_dock(self.review_dock)
        self.plan = RoundPlan(window, self.panel, self._round_model)
        self._rerun_after_measure = False
        self._sentence_key: tuple | None = None  # what the active sentence was made from
        pa = window.predictions
        pa.bridge.finished.connect(self._on_prediction_finished)
        window.slide_opened.connect(self._on_slide)
        self._poll = QTimer(self)
        self._poll.setInterval(PROJECT_POLL_MS)
        self._poll.timeout.connect(self._poll_changes)
        self._stamp: tuple[int, int] | None = None  # the registry folder's and active.json's mtimes
        # The registry (and pyqtgraph, ~0.4 s to import) wait until the first slide frame is on
        # screen, or a moment after start-up when no slide is opened: the viewer starts as fast.
        self.ready = False
        window.view.painted.connect(self._first_frame)
        QTimer.singleShot(STARTUP_DELAY_MS, self, self.become_ready)
        self._update_enabled()

    def _first_frame(self, _record: object = None) -> None:
        self.window.view.painted.disconnect(self._first_frame)
        QTimer.singleShot(0, self, self.become_ready)

    def become_ready(self) -> None:
        """Open the project's registry, make the plots, start following the project."""
        if self.ready:
            return
        self.ready = True
        self.plan.enabled = True
        self.panel.ensure_plots()
        self._on_slide("")
        self._poll.start()

    # -- project and registry --------------------------------------------------------------------

    def sync_project(self) -> bool:
        """Follow the window's current project: open its model registry (and make the Model
        panel's model its active version, if it has one). True when the project changed."""
        if not self.ready:
            return False
        project = self.window.annotations.project
        folder = Path(project.folder) if project is not None else None
        if folder == self.project_folder:
            return False
        self.project_folder = folder
        self.registry = None
        if folder is not None:
            try:
                from engine.api import ModelRegistry

                self.registry = ModelRegistry.of_project(folder)
            except CocoPathError as exc:
                self.window.show_error(f"Model versions are off for this project: {exc}")
            except Exception as exc:  # noqa: BLE001 - the GUI never shows a traceback
                log.exception("opening the model registry of %s failed", folder)
                self.window.show_error(f"{folder}: the model registry could not be read "
                                       f"({type(exc).__name__}: {exc}).")
        self.refresh_models()
        self.refresh_slides()
        active = self._active()
        if active is not None:
            self._use_version(active, predict=False, quiet=True)
        return True

    def _registry_stamp(self) -> tuple[int, int] | None:
        if self.registry is None:
            return None
        root = Path(self.registry.root)
        out = []
        for p in (root, root / "active.json"):
            try:
                out.append(p.stat().st_mtime_ns)
            except OSError:
                out.append(0)
        return out[0], out[1]

    def _poll_changes(self) -> None:
        """Follow a project switch, and versions added or activated by another process (the
        command line's ``finetune``): the table is re-read and the active version used."""
        if self.sync_project() or self.process.running:
            return
        stamp = self._registry_stamp()
        if stamp == self._stamp:
            self._update_sentence()  # the Model panel may hold another model now
            return
        self.refresh_models()
        active = self._active()
        pa = self.window.predictions
        if active is not None and (pa.spec is None or Path(pa.spec.checkpoint).resolve()
                                   != checkpoint_of(active).resolve()):
            self._use_version(active, predict=False, quiet=True)

    def _active(self) -> Any:
        if self.registry is None:
            return None
        try:
            return self.registry.active()
        except CocoPathError as exc:
            log.warning("active model version unknown: %s", exc)
            return None

    def refresh_models(self) -> None:
        """Re-read the registry into the models table."""
        self._stamp = self._registry_stamp()
        if self.registry is None:
            self.models.set_rows([], None)
            return
        try:
            versions = self.registry.versions()
            active = self._active()
        except CocoPathError as exc:
            self.window.show_error(str(exc))
            versions, active = [], None
        name = self.project_folder.name if self.project_folder is not None else None
        self.models.set_rows(model_rows(versions, active.version if active is not None else None),
                             name, can_edit=not self.process.running)
        self._sentence_key = None
        self._update_sentence()

    def _update_sentence(self) -> None:
        """Say which version is active, in the same words in the Training, Models and Model panels."""
        if self.registry is None:
            self._sentence_key = None
            self.panel.set_active("")
            self.models.set_sentence("")
            return
        active = self._active()
        spec = self.window.predictions.spec
        shown = None
        if active is not None and spec is not None:
            try:
                same = Path(spec.checkpoint).resolve() == checkpoint_of(active).resolve()
            except CocoPathError:
                same = False
            shown = None if same else spec.name
        key = (active.version if active else None, active.parent if active else None, shown)
        if key == self._sentence_key:
            return
        self._sentence_key = key
        sentence = active_sentence(*key)
        self.panel.set_active(sentence)
        self.models.set_sentence(sentence)
        if active is not None and shown is None:
            self.window.predictions.panel.status.setText(sentence)

    def refresh_slides(self) -> None:
        """The project's slides with their correction ROI counts, for the round's settings."""
        self.plan.refresh()
        self._update_enabled()

    def _round_model(self) -> tuple[list[str], float | None] | None:
        """The classes and µm/px of the model a round would start from: the active version, else
        the Model panel's model."""
        active = self._active()
        if active is not None:
            found = card_model(active.card)
            if found is not None:
                return found
        spec = self.window.predictions.spec
        return (list(spec.classes), spec.mpp) if spec is not None else None

    def _show_card(self, version: str) -> None:
        if self.registry is None:
            return
        try:
            self.models.show_card(card_text(self.registry.get(version)))
        except CocoPathError as exc:
            self.models.show_card(str(exc))

    # -- the active version ------------------------------------------------------------------------

    def activate(self, version: str, ask: bool = True) -> bool:
        """Make ``version`` the project's active model; the slide is re-predicted with it. With
        ``ask``, a version worse than its parent (held-out ROIs or replay sample) asks first; the
        answer "keep" leaves the active version as it is (False)."""
        if self.registry is None:
            return False
        if ask and not self._confirm(version):
            return False
        try:
            self.registry.activate(version)
        except CocoPathError as exc:
            self.window.show_error(str(exc))
            return False
        return self._activated()

    def rollback(self) -> bool:
        """Activate the active version's parent (one step back)."""
        if self.registry is None:
            return False
        try:
            self.registry.rollback()
        except CocoPathError as exc:
            self.window.show_error(str(exc))
            return False
        return self._activated()

    def _comparisons(self, version: str) -> tuple[str | None, list[Comparison]]:
        """``version``'s parent and how it compares with it: the last round's guard for the version
        that round made, else the registry's metrics."""
        end = self.last_end
        if end is not None and end.result is not None and end.result.get("version") == version:
            return end.result.get("parent"), result_comparisons(end.result)
        try:
            v = self.registry.get(version)
        except CocoPathError:
            return None, []
        return v.parent, comparisons_from_metrics(v.metrics)

    def _confirm(self, version: str) -> bool:
        """True to go on: ``version`` is not worse than its parent, is active already, or the user
        chose to use it anyway."""
        active = self._active()
        if active is not None and active.version == version:
            return True
        parent, comps = self._comparisons(version)
        if not is_worse(comps):
            return True
        return self.ask_worse(version, parent, comps)

    def ask_worse(self, version: str, parent: str | None, comps: Sequence[Comparison]) -> bool:
        """The question before a worse version becomes active; keeping the old one is the default."""
        return ask_worse(self.window, version, parent, comps)

    def _activated(self) -> bool:
        self.refresh_models()
        active = self._active()
        if active is None:
            return False
        self.window.statusBar().showMessage(f"Active model: {active.version}", 6000)
        return self._use_version(active, predict=True)

    def _use_version(self, version: Any, predict: bool, quiet: bool = False) -> bool:
        """Make ``version`` the Model panel's model; ``predict``: re-predict the open slide with it
        (an earlier run's predictions of this version are shown at once)."""
        pa = self.window.predictions
        try:
            path = checkpoint_of(version)
        except CocoPathError as exc:
            if not quiet:
                self.window.show_error(str(exc))
            return False
        current = pa.spec.checkpoint if pa.spec is not None else ""
        if not current or Path(current).resolve() != path.resolve():
            if not pa.load_model(str(path), quiet=quiet):
                return False
        self.active_changed.emit(version.version)
        self.reviewing.dirty = True
        self.reviewing.update_other()
        self._sentence_key = None
        self._update_sentence()
        if predict and self.window.source is not None:
            self._predict()
        return True

    def _predict(self) -> None:
        """Run the active model on the open slide, unless an earlier run is being measured (its
        cache is shown; if that cache is incomplete the run follows once measured)."""
        pa = self.window.predictions
        if pa.bridge.running:
            self._rerun_after_measure = True
            return
        overlay = self.window.view.predictions
        cache = overlay.cache
        if cache is not None and cache.complete:
            return
        pa.run()

    def _on_prediction_finished(self, end: Any) -> None:
        if self._rerun_after_measure and end.status == "measured":
            self._rerun_after_measure = False
            cache = self.window.view.predictions.cache
            if cache is None or not cache.complete:
                QTimer.singleShot(0, self.window.predictions.run)
        else:
            self._rerun_after_measure = False
        self.reviewing.changed()

    # -- a round -----------------------------------------------------------------------------------

    def finetune(self) -> bool:
        """Start a round on the chosen slides' correction ROIs; False (with a message) if it cannot."""
        self.become_ready()
        self.sync_project()
        if self.process.running:
            return False
        project = self.window.annotations.project or self.window.annotations.ensure_project()
        if project is None:
            self._round_error("Open a slide first: fine-tuning learns from a project's corrections.")
            return False
        self.sync_project()
        if self.registry is None:
            self._round_error("This project has no usable model registry (see the message above).")
            return False
        if self._active() is None and not self._seed():
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
                                     new_classes=self.plan.round_new_classes())
            argv = finetune_argv(project.folder, settings, explicit=("budget_s",) if budget else ())
        except CocoPathError as exc:
            self._round_error(str(exc))
            return False
        self.last_end = None
        self.round_project = Path(project.folder)
        self.panel.started()
        self.process.start(argv)
        self._update_enabled()
        return True

    def _seed(self) -> bool:
        """An empty registry gets the Model panel's model (else the shipped default) as its first
        version, so the round has a model to start from."""
        pa = self.window.predictions
        try:
            if pa.spec is not None and pa.spec.checkpoint:
                v = self.registry.import_model(Path(pa.spec.checkpoint),
                                               note=f"from the Model panel ({Path(pa.spec.checkpoint).name})")
                self.registry.activate(v.version)
            else:
                from engine.api import default_model_path

                default = default_model_path()
                if default is None:
                    self._round_error("Choose a model in the Model panel first: fine-tuning "
                                      "trains a new version of a model.")
                    return False
                self.registry.ensure_seeded(default)
        except CocoPathError as exc:
            self._round_error(str(exc))
            return False
        self.refresh_models()
        return self._active() is not None

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
        area = self.training_dock.widget()
        if isinstance(area, QScrollArea):  # the verdict and the choice at the top, in sight
            area.verticalScrollBar().setValue(0)
        self._update_enabled()
        self.refresh_models()
        self.refresh_slides()
        if end.status == "failed":
            self.window.show_error(end.message)
            return
        if end.status != "done" or end.result is None:
            self.window.statusBar().showMessage(end.message, 8000)
            return
        r = end.result
        self.window.statusBar().showMessage(f"Fine-tuning finished: {r.get('version')}", 8000)
        if r.get("version"):
            self.models.select_version(str(r["version"]))
        active = self._active()
        if active is not None:  # the engine activates a version that is not worse
            self._use_version(active, predict=True)

    def _same_project(self) -> bool:
        """Whether the last round's versions belong to the open project (File ▸ Open project may
        have switched meanwhile)."""
        self.sync_project()
        if self.round_project is not None and self.round_project != self.project_folder:
            self._round_error(f"That round's versions belong to the project "
                              f"{self.round_project.name}: open it to choose between them.")
            return False
        return True

    def accept(self) -> bool:
        """Accept: the round's new version becomes active (asking first when it is worse than its
        parent; answering "keep" is Keep old)."""
        end = self.last_end
        if end is None or end.result is None or not end.result.get("version"):
            return False
        if not self._same_project():
            return False
        if not self._confirm(str(end.result["version"])):
            return self.keep_old()
        return self._choose("version")

    def keep_old(self) -> bool:
        """Keep old: the version the round started from stays (or becomes again) active."""
        return self._choose("parent")

    def _choose(self, key: str) -> bool:
        """Activate the last round's ``key`` version ("version": the new one, "parent": the old)."""
        end = self.last_end
        if end is None or end.result is None or not end.result.get(key):
            return False
        if not self._same_project():
            return False
        ok = self.activate(str(end.result[key]), ask=False)
        if ok:
            self.panel.choice_made()
        return ok

    # -- import / export (app.actions.model_files) ---------------------------------------------------------

    def import_dialog(self) -> None:
        model_files.import_dialog(self)

    def import_model(self, path: str | Path) -> str | None:
        """Add a .safetensors model to the project's versions (not activated); its version."""
        return model_files.import_model(self, path)

    def export_dialog(self, version: str) -> None:
        model_files.export_dialog(self, version)

    def export_model(self, version: str, dest: str | Path) -> bool:
        return model_files.export_model(self, version, dest)

    # -- review next (app.actions.review) ------------------------------------------------------------

    def refresh_review(self) -> None:
        self.reviewing.refresh()

    def go_to_region(self, region: Any) -> None:
        self.reviewing.go_to_region(region)

    # -- slide, window -----------------------------------------------------------------------------

    def _on_slide(self, _path: str) -> None:
        if not self.ready:
            return  # become_ready() follows the first frame of this slide
        self.sync_project()
        self.refresh_slides()
        self.reviewing.update_other()
        self.reviewing.changed()

    def _update_enabled(self) -> None:
        running = self.process.running
        self.panel.set_running(running, self.window.annotations.project is not None)
        self.models.set_enabled(not running and self.registry is not None)

    def close(self) -> None:
        """The window closes: stop a running round (the registry stays as it was)."""
        self._poll.stop()
        self.process.shutdown()


def _scrolled(widget: QWidget) -> QScrollArea:
    area = QScrollArea()
    area.setWidget(widget)
    area.setWidgetResizable(True)
    area.setFrameShape(QScrollArea.Shape.NoFrame)
    area.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)  # the panel wraps
    area.setMinimumHeight(MIN_DOCK_HEIGHT)
    return area

"""The Models dock: the project's model registry (``<project>/models``); Activate, Show on slide,
Rollback, Export, Import, and the choice a round's Accept / Keep old asks for.

Whenever the active version changes here, the Model panel's model becomes that version and the open
slide is re-predicted, visible region first (prediction caches are per model version, so a version
that predicted this slide before shows its predictions at once). Show on slide does the same with
any version but leaves the active one as it is: the pathologist looks at a held-back version's mask
(on the slide a round named, say) before choosing it, and the next round still starts from the
active version. Versions added or activated by
another process (the command line's ``finetune``) are followed by polling the registry folder.
Which version is active is said in one sentence (:func:`app.state.versions.active_sentence`), the
same in the Training, Models and Model panels.

Talks to the other parts of the learning loop through its signals (see :mod:`app.actions.training`
for the wiring) and to the Model panel through :class:`~app.actions.predictions.PredictionActions`'
public methods.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QObject, QTimer, Signal

from app.actions import model_files
from app.panels.models import ModelsPanel, ask_worse
from app.state.training import RoundEnd, card_text, model_rows, result_comparisons
from app.state.versions import (Comparison, active_sentence, checkpoint_of,
                                comparisons_from_metrics, is_worse)
from engine.api import CocoPathError

if TYPE_CHECKING:
    from app.main_window import MainWindow

log = logging.getLogger(__name__)

PROJECT_POLL_MS = 1000  # File ▸ Open project has no signal: the project is compared this often


class RegistryActions(QObject):
    """The project's model versions, shown in :attr:`panel` (a :class:`ModelsPanel`)."""

    #: the active ModelVersion (or None) and its parent's (or None), after the app switched to it
    active_changed = Signal(object, object)
    sentence_changed = Signal(str)  # which version is active, in words ("" without a registry)
    project_changed = Signal()  # the window's project (and so the registry) is another one
    choice_made = Signal(str)  # choose() made this version active (a round's Accept / Keep old)

    def __init__(self, window: MainWindow) -> None:
        super().__init__(window)
        self.window = window
        self.registry: Any = None
        self.project_folder: Path | None = None
        self.panel = ModelsPanel()
        self.ready = False
        self._round_running = False
        self._round_result: Mapping[str, Any] | None = None  # the last round's result, its guard
        self._sentence_key: tuple | None = None  # what the active sentence was made from
        self._stamp: tuple[int, int] | None = None  # the registry folder's and active.json's mtimes
        self._named: tuple[tuple, str | None] | None = None  # (checkpoint, stamp) → its version
        self._poll = QTimer(self)
        self._poll.setInterval(PROJECT_POLL_MS)
        self._poll.timeout.connect(self._poll_changes)
        self.panel.activate_requested.connect(self.activate)
        self.panel.show_requested.connect(self.show_version)
        self.panel.rollback_requested.connect(self.rollback)
        self.panel.export_requested.connect(self.export_dialog)
        self.panel.import_requested.connect(self.import_dialog)
        self.panel.selected.connect(self._show_card)
        self._update_enabled()

    def start(self) -> None:
        """Open the project's registry and follow the project from now on."""
        if self.ready:
            return
        self.ready = True
        self.sync_project()
        self._poll.start()

    def close(self) -> None:
        self._poll.stop()

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
        self.project_changed.emit()
        active = self.active()
        if active is not None:
            self._use_version(active, predict=False, quiet=True)
        else:
            self.active_changed.emit(None, None)
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
        if self.sync_project() or self._round_running:
            return
        stamp = self._registry_stamp()
        if stamp == self._stamp:
            self._update_sentence()  # the Model panel may hold another model now
            return
        self.refresh_models()
        active = self.active()
        spec = self.window.predictions.spec
        if active is not None and (spec is None or Path(spec.checkpoint).resolve()
                                   != checkpoint_of(active).resolve()):
            self._use_version(active, predict=False, quiet=True)

    def active(self) -> Any:
        """The registry's active ModelVersion, or None."""
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
        self._update_enabled()
        if self.registry is None:
            self.panel.set_rows([], None)
            self._sentence_key = None
            self._update_sentence()
            return
        try:
            versions = self.registry.versions()
            active = self.active()
        except CocoPathError as exc:
            self.window.show_error(str(exc))
            versions, active = [], None
        name = self.project_folder.name if self.project_folder is not None else None
        self.panel.set_rows(model_rows(versions, active.version if active is not None else None),
                            name, can_edit=not self._round_running)
        self._sentence_key = None
        self._update_sentence()

    def _update_sentence(self) -> None:
        """Say which version is active (and whether the Model panel shows another model)."""
        if self.registry is None:
            self._sentence_key = None
            self.sentence_changed.emit("")
            self.panel.set_sentence("")
            return
        active = self.active()
        spec = self.window.predictions.spec
        shown = None
        if active is not None and spec is not None:
            try:
                same = Path(spec.checkpoint).resolve() == checkpoint_of(active).resolve()
            except CocoPathError:
                same = False
            shown = None if same else self._version_named(spec.checkpoint) or spec.name
        self.panel.set_shown(shown)
        key = (active.version if active else None, active.parent if active else None, shown)
        if key == self._sentence_key:
            return
        self._sentence_key = key
        sentence = active_sentence(*key)
        self.sentence_changed.emit(sentence)
        self.panel.set_sentence(sentence)
        if active is not None and shown is None:
            self.window.predictions.show_status(sentence)
        elif active is not None:  # the Model panel's own line would call the shown model active
            self.window.predictions.show_status(f"Shown: {shown}. Active version: {active.version} (the "
                                                f"next round starts from it).")

    def _version_named(self, checkpoint: str | Path) -> str | None:
        """The registry version whose file ``checkpoint`` is, or None (a model chosen elsewhere);
        read again only when the checkpoint or the registry changed (this runs on every poll)."""
        key = (str(checkpoint), self._stamp)
        if self._named is not None and self._named[0] == key:
            return self._named[1]
        try:
            path = Path(checkpoint).resolve()
            name = next((v.version for v in self.registry.versions() if checkpoint_of(v).resolve() == path),
                        None)
        except (CocoPathError, OSError):
            name = None
        self._named = (key, name)
        return name

    def _show_card(self, version: str) -> None:
        if self.registry is None:
            return
        try:
            self.panel.show_card(card_text(self.registry.get(version)))
        except CocoPathError as exc:
            self.panel.show_card(str(exc))

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

    def show_version(self, version: str) -> bool:
        """Show ``version``'s mask on the open slide without making it active: the Model panel holds
        it and predicts with it (at once from its cache when it predicted this slide before); the
        registry's active version, which the next round starts from, stays."""
        if self.registry is None:
            return False
        try:
            chosen = self.registry.get(version)
        except CocoPathError as exc:
            self.window.show_error(str(exc))
            return False
        if not self._load(chosen):
            return False
        self._sentence_key = None
        self._update_sentence()
        active = self.active()
        if active is not None and active.version != version:
            self.window.statusBar().showMessage(
                f"Showing {version}'s mask; {active.version} stays active (Activate makes {version} the "
                f"active model)", 8000)
        self._predict()
        return True

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

    def choose(self, version: str, fallback: str = "") -> bool:
        """A round's choice: activate ``version``; with a ``fallback`` (Accept: the version the round
        started from), a ``version`` worse than its parent asks first and the answer "keep"
        activates ``fallback`` instead. Emits :attr:`choice_made` with what became active."""
        self.sync_project()
        chosen = version if not fallback or self._confirm(version) else fallback
        ok = self.activate(chosen, ask=False)
        if ok:
            self.choice_made.emit(chosen)
        return ok

    def _comparisons(self, version: str) -> tuple[str | None, list[Comparison]]:
        """``version``'s parent and how it compares with it: the last round's guard for the version
        that round made, else the registry's metrics."""
        r = self._round_result
        if r is not None and r.get("version") == version:
            return r.get("parent"), result_comparisons(r)
        try:
            v = self.registry.get(version)
        except CocoPathError:
            return None, []
        return v.parent, comparisons_from_metrics(v.metrics)

    def _confirm(self, version: str) -> bool:
        """True to go on: ``version`` is not worse than its parent, is active already, or the user
        chose to use it anyway."""
        active = self.active()
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
        active = self.active()
        if active is None:
            return False
        self.window.statusBar().showMessage(f"Active model: {active.version}", 6000)
        return self._use_version(active, predict=True)

    def _parent_of(self, version: Any) -> Any:
        if not version.parent or self.registry is None:
            return None
        try:
            return self.registry.get(version.parent)
        except CocoPathError:
            return None

    def _use_version(self, version: Any, predict: bool, quiet: bool = False) -> bool:
        """Make ``version`` the Model panel's model; ``predict``: re-predict the open slide with it
        (an earlier run's predictions of this version are shown at once)."""
        if not self._load(version, quiet):
            return False
        self.active_changed.emit(version, self._parent_of(version))
        self._sentence_key = None
        self._update_sentence()
        if predict:
            self._predict()
        return True

    def _load(self, version: Any, quiet: bool = False) -> bool:
        """Make ``version`` the Model panel's model (nothing to do when it is already)."""
        pa = self.window.predictions
        try:
            path = checkpoint_of(version)
        except CocoPathError as exc:
            if not quiet:
                self.window.show_error(str(exc))
            return False
        current = pa.spec.checkpoint if pa.spec is not None else ""
        if current and Path(current).resolve() == path.resolve():
            return True
        return pa.load_model(str(path), quiet=quiet)

    def _predict(self) -> None:
        """Predict the open slide with the Model panel's model, unless its predictions are shown."""
        if self.window.source is not None:
            self.window.predictions.predict_unless_shown()

    # -- what a round tells ----------------------------------------------------------------------

    def set_round_running(self, running: bool) -> None:
        """A round started or ended: the table cannot be edited meanwhile."""
        self._round_running = running
        if running:
            self.start()
        self._update_enabled()

    def round_ended(self, end: RoundEnd) -> None:
        """A round ended: its versions in the table, its new version selected and (when the round
        activated it, as it does with a version that is not worse) used."""
        self._round_result = end.result
        self.refresh_models()
        if end.status != "done" or end.result is None:
            return
        if end.result.get("version"):
            self.panel.select_version(str(end.result["version"]))
        active = self.active()
        if active is not None:
            self._use_version(active, predict=True)

    def _update_enabled(self) -> None:
        self.panel.set_enabled(not self._round_running and self.registry is not None)

    # -- import / export (app.actions.model_files) -------------------------------------------------

    def import_dialog(self) -> None:
        model_files.import_dialog(self)

    def import_model(self, path: str | Path) -> str | None:
        """Add a .safetensors model to the project's versions (not activated); its version."""
        return model_files.import_model(self, path)

    def export_dialog(self, version: str) -> None:
        model_files.export_dialog(self, version)

    def export_model(self, version: str, dest: str | Path) -> bool:
        return model_files.export_model(self, version, dest)

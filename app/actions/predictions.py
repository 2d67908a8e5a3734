"""The main window's prediction features: the model dock, the summary dock, the overlay's key (H).

Keeps the active model (its card, read without torch; remembered in the settings), starts and
cancels runs on the open slide through :class:`~app.engine_bridge.InferenceBridge`, hands the run's
viewport to it as the user pans (visible region first), refreshes the overlay as tiles complete
(at most four times a second) and shows the measurements when a run ends.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from PySide6.QtCore import QObject, QTimer, Signal
from PySide6.QtWidgets import QFileDialog, QScrollArea, QWidget

from app.engine_bridge import InferenceBridge
from app.panels.model import ModelPanel
from app.actions.prediction_accept import PredictionAccept
from app.panels.summary import SummaryPanel
from app.state.inference_run import RunFinished, RunStarted, open_existing, wait_for_trial
from app.state.predictions import (MEASURING, NOT_RUN, PredictionStyle, level_choices, level_note,
                                   summary_csv)
from app.state.viewport import Viewport
from engine.api import (CocoPathError, ModelSpec, PredictionCache, Progress, default_level,
                        load_spec, needs_level, resolution_problem)

if TYPE_CHECKING:
    from app.main_window import MainWindow

log = logging.getLogger(__name__)

PRELOAD_DELAY_MS = 1500  # after a model is chosen: the window and the slide draw first

MODEL_FILTER = "CoCoPath models (*.safetensors);;All files (*)"
REFRESH_MS = 250  # the overlay re-reads the cache at most this often while tiles come in


class PredictionActions(QObject):
    """Builds the prediction docks and actions into ``window``."""

    run_finished = Signal(object)  # RunFinished, once the panels show how the run ended
    tiles_added = Signal()  # the run on the open slide predicted more of it

    def __init__(self, window: MainWindow) -> None:
        super().__init__(window)
        self.window = window
        self.overlay = window.view.predictions
        self.spec: ModelSpec | None = None
        self._closed = False  # the window closed: nothing more is started
        self.bridge = InferenceBridge(self)
        self.last_finished: RunFinished | None = None
        self._rerun_after_measure = False  # predict_unless_shown() while an earlier run is measured
        self._run_slide: str | None = None  # the slide the current (or last) run is on
        self._run_version: str | None = None  # and the model version it runs
        self._measure_after = False  # the open slide's earlier run waits for the bridge
        self._tissue: tuple[str, object] | None = None  # (slide path, its TissueMask) once found
        self.panel = ModelPanel()
        self.model_dock = window.add_dock("Model", "model", _scrolled(self.panel))
        self.summary = SummaryPanel()
        self.summary_dock = window.add_dock("Prediction summary", "prediction-summary", self.summary)
        window.tabifyDockWidget(window.info_dock, self.model_dock)
        window.tabifyDockWidget(window.info_dock, self.summary_dock)
        self.act_toggle = window.make_action("Show &predictions", self.set_overlay_visible, "H",
                                         tip="Show or hide the model's prediction overlay")
        self.act_toggle.setCheckable(True)
        self.act_toggle.setChecked(True)
        window.view_menu.addSeparator()
        window.view_menu.addAction(self.act_toggle)
        window.view_menu.addAction(self.model_dock.toggleViewAction())
        window.view_menu.addAction(self.summary_dock.toggleViewAction())
        self.accept = PredictionAccept(window, window.annotations.tools_menu,
                                       window.annotations.toolbar)  # A / Shift+A
        self._refresh = QTimer(self)
        self._refresh.setSingleShot(True)
        self._refresh.setInterval(REFRESH_MS)
        self._refresh.timeout.connect(self._reload_overlay)
        self.panel.choose_requested.connect(self.choose_dialog)
        self.panel.run_requested.connect(self.run)
        self.panel.cancel_requested.connect(self.cancel)
        self.panel.style_changed.connect(self._set_style)
        self.summary.export_requested.connect(self.export_dialog)
        self.bridge.started.connect(self._on_started)
        self.bridge.progress.connect(self._on_progress)
        self.bridge.tile_done.connect(self._on_tile)
        self.bridge.finished.connect(self._on_finished)
        self.bridge.tissue.connect(self._on_tissue)
        self.bridge.preview.connect(self._on_preview)
        self.bridge.backend.connect(self._on_backend)
        window.slide_opened.connect(self._on_slide)
        window.view.viewport_changed.connect(self._on_viewport)
        remembered = str(window.settings.value("model/path", "") or "")
        if not (remembered and Path(remembered).is_file() and self.load_model(remembered, quiet=True)):
            self.load_default_model()
        self._update_enabled()

    # -- model -----------------------------------------------------------------------------------

    def choose_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self.window, "Choose a model", "", MODEL_FILTER)
        if path:
            self.load_model(path)

    def load_default_model(self) -> bool:
        """Make CoCoPath's default student the active model, when one is installed (the engine's
        :func:`~engine.api.default_model_path` finds it); False when there is none."""
        from engine.api import default_model_path  # looked up when called (tests replace it)

        path = default_model_path()
        if path is None:
            return False
        if not self.load_model(str(path), quiet=True, remember=False):
            self.panel.status.setText(f"CoCoPath's default model ({path}) could not be read: choose "
                                      f"a model file (.safetensors) trained with CoCoPath.")
            return False
        self.panel.status.setText(f"Active model: {self.spec.name} (CoCoPath's default model)")  # type: ignore[union-attr]
        return True

    def load_model(self, path: str, quiet: bool = False, remember: bool = True) -> bool:
        """Make the checkpoint at ``path`` the active model (its card only: no torch yet);
        ``remember``: it is the model next time too (the default model is found afresh instead)."""
        if Path(path).suffix.lower() != ".safetensors":
            self._error(f"{Path(path).name}: not a model file. CoCoPath models are .safetensors "
                        f"checkpoints (pickled .pt/.pth files are refused for safety).", quiet)
            return False
        try:
            spec = load_spec(path)
        except CocoPathError as exc:
            self._error(str(exc), quiet)
            return False
        except Exception as exc:  # noqa: BLE001 - the GUI never shows a traceback
            log.exception("reading %s failed", path)
            self._error(f"{path}: not a usable model ({type(exc).__name__}: {exc}).", quiet)
            return False
        self.cancel()
        self.spec = spec
        self.panel.set_spec(spec)
        if remember:
            self.window.settings.setValue("model/path", str(path))
        self._show_existing()
        self._update_levels()
        self._update_enabled()
        # the network loads in the background once the window has drawn, while the slide is
        # looked at: Run then starts with it (the first run's load is about 2 s on a CPU)
        QTimer.singleShot(PRELOAD_DELAY_MS, self, lambda: self._preload(spec))
        return True

    def _preload(self, spec: ModelSpec) -> None:
        if self.spec is spec and not self._closed:
            self.bridge.preload(spec)

    def _error(self, message: str, quiet: bool) -> None:
        if quiet:
            log.warning("%s", message)
        else:
            self.window.show_error(message)

    # -- running ---------------------------------------------------------------------------------

    def run(self, trial_first: bool = False) -> bool:
        """Run the active model on the open slide (visible region first); False if it cannot.
        ``trial_first``: the back-end trial before the first window (the benchmark's baseline)."""
        source = self.window.source
        if self.spec is None or source is None or self.bridge.running:
            return False
        vp = self.window.view.viewport
        path = source.info.path  # type: ignore[attr-defined]
        started = self.bridge.start(path, self.spec, _rect(vp) if vp is not None else None,
                                    level=self.panel.chosen_level(), trial_first=trial_first)
        if started:
            self._run_slide, self._run_version = path, self.spec.version
            self.last_finished = None
            self.panel.set_running(True)
            self.panel.set_progress(0, 0, "Loading the model and finding tissue…")
        return started

    def predict_unless_shown(self) -> None:
        """Run the active model on the open slide unless its predictions are shown complete; while
        an earlier run's cache is being measured, run once it is (when that cache is incomplete)."""
        if self.bridge.running:
            self._rerun_after_measure = True
            return
        cache = self.overlay.cache
        if cache is not None and cache.complete:
            return
        self.run()

    @property
    def cache(self) -> PredictionCache | None:
        """The prediction cache shown over the open slide (None when there is none)."""
        return self.overlay.cache

    def show_status(self, text: str) -> None:
        """The Model panel's first line (which model is active, and whence)."""
        self.panel.status.setText(text)

    def cancel(self) -> None:
        if self.bridge.running:
            self.bridge.cancel()
            self.panel.progress_label.setText("Cancelling…")

    def _shows_run(self) -> bool:
        """Whether the run is of the open slide and the active model (the user may have switched
        either meanwhile: then the panels describe what is open, not that run)."""
        source = self.window.source
        return (source is not None and source.info.path == self._run_slide  # type: ignore[attr-defined]
                and self.spec is not None and self.spec.version == self._run_version)

    def _on_started(self, info: RunStarted) -> None:
        if not self._shows_run():
            return
        self.panel.fields["device"].setText(f"{info.device}, {info.backend}")
        self.panel.set_progress(info.tiles_done, info.tiles_total, info.note)
        try:
            self.overlay.set_cache(PredictionCache(info.cache_root), self._slide_tissue(),
                                   wait_for_tissue=True)
        except CocoPathError as exc:
            log.warning("prediction cache not shown: %s", exc)

    def _slide_tissue(self) -> object | None:
        """The open slide's tissue mask, when a run on it has found it."""
        source = self.window.source
        if self._tissue is None or source is None:
            return None
        path, mask = self._tissue
        return mask if path == source.info.path else None  # type: ignore[attr-defined]

    def _on_tissue(self, mask: object) -> None:
        """The run found the slide's tissue: the overlay draws within it (nothing on glass)."""
        if self._run_slide is None:
            return
        self._tissue = (self._run_slide, mask)
        if self._shows_run():
            self.overlay.set_tissue(mask)

    def _on_preview(self, preview: object) -> None:
        """A coarse prediction of the visible field: shown where the run's tiles are not in yet."""
        if self._shows_run():
            self.overlay.set_preview(preview)

    def _on_backend(self, name: str) -> None:
        if self._shows_run():
            device = self.panel.fields["device"].text().split(",")[0] or "CPU"
            self.panel.fields["device"].setText(f"{device}, {name} (measured)")

    def _on_progress(self, p: Progress) -> None:
        if not self._shows_run():
            return
        self.panel.set_progress(p.step, p.total, f"{p.step} of {p.total} tiles of tissue")

    def _on_tile(self, _col: int, _row: int) -> None:
        if not self._shows_run():
            return
        if not self._refresh.isActive():
            self._refresh.start()
        self.tiles_added.emit()

    def _reload_overlay(self) -> None:
        cache = self.overlay.cache
        if cache is not None:
            cache.refresh()  # the run writes through its own handle: forget remembered tiles
            self.overlay.invalidate()

    def _on_finished(self, end: RunFinished) -> None:
        self._show_end(end)
        measure, self._measure_after = self._measure_after, False
        if measure and self.overlay.cache is not None and self.window.source is not None \
                and self.spec is not None:
            self._measure(self.overlay.cache)  # the open slide's earlier run, now the bridge is free
        else:
            rerun, self._rerun_after_measure = self._rerun_after_measure, False
            if rerun and end.status == "measured":
                cache = self.overlay.cache
                if cache is None or not cache.complete:
                    QTimer.singleShot(0, self.run)
        self.run_finished.emit(end)

    def _show_end(self, end: RunFinished) -> None:
        self.last_finished = end
        self._refresh.stop()
        if self.overlay.waiting_for_tissue:  # the run ended without finding it: draw unclipped
            self.overlay.set_tissue(None)
        self.panel.set_running(False, self.window.source is not None)
        if not self._shows_run():  # a run on a slide (or of a model) since left: not described
            return
        self._reload_overlay()
        words = {"done": "Finished", "cancelled": "Cancelled", "failed": "Failed",
                 "measured": "Predictions of an earlier run"}
        self.panel.progress_label.setText(words.get(end.status, end.status) + (
            f": {end.message}" if end.message else ""))
        if end.summary is not None or self.summary.summary is None:
            self.summary.set_summary(end.summary)  # none: "Measuring…" is over, say what to do
        if end.status == "failed":
            self.window.show_error(end.message)
        elif end.status != "measured":
            self.window.statusBar().showMessage(f"Prediction {end.status}", 5000)

    # -- slide, viewport, display ----------------------------------------------------------------

    def _on_slide(self, _path: str) -> None:
        self.cancel()
        self._show_existing()
        self._update_levels()
        self._update_enabled()

    def slide_closed(self) -> None:
        """The window closed its slide: stop a run on it, clear the overlay and the summary."""
        self.cancel()
        self.overlay.set_cache(None)
        self.summary.set_summary(None)
        self.panel.set_progress(0, 0, "")
        self.panel.set_levels([], 0, "")
        self.panel.set_warning("")
        self._update_enabled()

    def _show_existing(self) -> None:
        """The open slide as it stands for the active model, in the overlay, the Model panel's run
        line and the summary alike: an earlier run's predictions (drawn, then measured for the
        summary), or none yet."""
        self._measure_after = False
        self.summary.set_summary(None)
        source, spec = self.window.source, self.spec
        cache = open_existing(source.info.path, spec) \
            if source is not None and spec is not None else None  # type: ignore[attr-defined]
        # drawn once the measuring run below has found the tissue (nothing painted on glass)
        self.overlay.set_cache(cache, self._slide_tissue(), wait_for_tissue=True)
        if source is None or spec is None:
            self.panel.set_progress(0, 0, "")
        elif cache is None:
            self.panel.set_progress(0, 0, NOT_RUN)
        else:
            self._measure(cache)

    def _measure(self, cache: PredictionCache) -> None:
        """Measure the open slide's earlier run (its summary; no network), at once, or once the
        bridge has ended what it runs (a run on the slide before)."""
        self.panel.set_progress(len(cache.done_tiles()), cache.tissue_tiles, MEASURING)
        self.summary.set_note(MEASURING)
        path = self.window.source.info.path  # type: ignore[union-attr]
        if self.bridge.start(path, self.spec, measure_only=True):
            self._run_slide, self._run_version = path, self.spec.version  # type: ignore[union-attr]
            self.panel.set_running(True)
        else:
            self._measure_after = True

    def _update_levels(self) -> None:
        """The Model panel's level picker: shown when the slide or the model's card lacks µm/px
        (the run cannot match the model's resolution), with the earlier run's level or the
        engine's default selected."""
        source, spec = self.window.source, self.spec
        info = source.info if source is not None else None  # type: ignore[attr-defined]
        self.panel.set_warning(warning_text(info.mpp if info is not None else None,
                                            spec.mpp if spec is not None else None))
        if info is None or spec is None or not needs_level(info, spec.mpp):
            self.panel.set_levels([], 0, "")
            return
        cache = self.overlay.cache
        earlier = cache is not None and cache.version == spec.version \
            and 0 <= cache.grid.read_level < info.level_count
        level = cache.grid.read_level if earlier else default_level(info, spec.mpp)  # type: ignore[union-attr]
        self.panel.set_levels(level_choices(info), level, level_note(info, spec.mpp, level, earlier))

    def _on_viewport(self, vp: Viewport) -> None:
        self.bridge.set_viewport(_rect(vp))

    def _set_style(self, style: PredictionStyle) -> None:
        self.overlay.set_style(style, self.window.view.viewport)  # on screen at the next frame

    def set_overlay_visible(self, visible: bool) -> None:
        self.overlay.set_visible(bool(visible))
        self.act_toggle.setChecked(bool(visible))

    def _update_enabled(self) -> None:
        self.panel.set_running(self.bridge.running, self.window.source is not None)

    # -- export ----------------------------------------------------------------------------------

    def export_dialog(self) -> None:
        s = self.summary.summary
        if s is None:
            return
        path, _ = QFileDialog.getSaveFileName(self.window, "Export the summary",
                                              f"{Path(s.slide).stem}-prediction.csv",
                                              "CSV (*.csv)")
        if path:
            self.export_csv(path)

    def export_csv(self, path: str | Path) -> bool:
        s = self.summary.summary
        if s is None:
            return False
        try:
            Path(path).write_text(summary_csv(s), encoding="utf-8")
        except OSError as exc:
            self.window.show_error(f"{path}: could not be written ({exc.strerror or exc}).")
            return False
        self.window.statusBar().showMessage(f"Summary exported to {path}", 5000)
        return True

    def close(self) -> None:
        """The window closes: stop a run and wait for it (its threads hold the slide)."""
        self._closed = True
        self.bridge.shut_down(30)
        wait_for_trial(60)  # a back-end trial in the background: a few seconds


def _scrolled(widget: QWidget) -> QScrollArea:
    """The widget in a scroll area: a tall panel does not set the window's minimum height."""
    area = QScrollArea()
    area.setWidget(widget)
    area.setWidgetResizable(True)
    area.setFrameShape(QScrollArea.Shape.NoFrame)
    return area


def warning_text(slide_mpp: tuple[float, float] | float | None, model_mpp: float | None) -> str:
    """The resolution guard's sentence for the panels ("This slide is 29 µm/px; …."), or "" when
    the slide's finest level is fine for the model (or either pixel size is unknown)."""
    if isinstance(slide_mpp, tuple):
        slide_mpp = slide_mpp[0]
    problem = resolution_problem(slide_mpp, model_mpp)
    return "" if problem is None else f"{problem[0].upper()}{problem[1:]}."


def _rect(vp: Viewport) -> tuple[float, float, float, float]:
    x0, y0, x1, y1 = vp.visible_rect()
    return (x0, y0, x1 - x0, y1 - y0)


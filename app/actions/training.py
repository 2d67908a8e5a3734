"""The main window's learning loop: the Training, Models and Review next docks.

Three parts, each with its own panel, that talk through Qt signals (wired here) and the engine API,
never through one another's attributes:

* :class:`~app.actions.rounds.RoundActions` (Training): start, follow, cancel and end a fine-tuning
  round in a subprocess; Accept / Keep old ask the Models dock to choose a version;
* :class:`~app.actions.registry.RegistryActions` (Models): the project's model versions; activate,
  roll back, import, export; the Model panel follows the active version;
* :class:`~app.actions.review.ReviewActions` (Review next): regions of the open slide to correct
  first; a click takes the view there and outlines the region.

The registry (and pyqtgraph, ~0.4 s to import) wait until the first slide frame is on screen, or a
moment after start-up when no slide is opened: the viewer starts as fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from PySide6.QtCore import QObject, Qt, QTimer

from app.actions.registry import RegistryActions
from app.actions.review import ReviewActions
from app.actions.rounds import RoundActions, scrolled

if TYPE_CHECKING:
    from app.main_window import MainWindow

TRAINING_DOCK_HEIGHT = 560  # of the right-hand column, below the slide info / model tabs
STARTUP_DELAY_MS = 1500  # with no slide frame by then, the docks get ready anyway


class TrainingActions(QObject):
    """Builds the training, models and review docks into ``window`` and wires their parts."""

    def __init__(self, window: MainWindow) -> None:
        super().__init__(window)
        self.window = window
        self.rounds = RoundActions(window)
        self.versions = RegistryActions(window)
        self.reviewing = ReviewActions(window)
        self.training_dock = window.add_dock("Training", "training", self.rounds.area)
        # in scroll areas: the column of docks never raises the window's minimum height
        self.models_dock = window.add_dock("Models", "models", scrolled(self.versions.panel))
        self.review_dock = window.add_dock("Review next", "review-next",
                                           scrolled(self.reviewing.panel))
        window.tabifyDockWidget(self.training_dock, self.models_dock)
        window.tabifyDockWidget(self.training_dock, self.review_dock)
        self.training_dock.raise_()
        window.resizeDocks([self.training_dock], [TRAINING_DOCK_HEIGHT], Qt.Orientation.Vertical)
        for dock, panel in ((self.training_dock, self.rounds.panel),
                            (self.models_dock, self.versions.panel)):
            dock.dockLocationChanged.connect(
                lambda area, p=panel: p.set_wide(area in (Qt.DockWidgetArea.TopDockWidgetArea,
                                                          Qt.DockWidgetArea.BottomDockWidgetArea)))
        window.view_menu.addSeparator()
        for dock in (self.training_dock, self.models_dock, self.review_dock):
            window.view_menu.addAction(dock.toggleViewAction())
        self.reviewing.set_dock(self.review_dock)
        self._wire()
        window.slide_opened.connect(self._on_slide)
        self.ready = False
        window.view.painted.connect(self._first_frame)
        QTimer.singleShot(STARTUP_DELAY_MS, self, self.become_ready)

    def _wire(self) -> None:
        rounds, versions, reviewing = self.rounds, self.versions, self.reviewing
        rounds.running_changed.connect(versions.set_round_running)
        rounds.ended.connect(versions.round_ended)
        rounds.choose_requested.connect(versions.choose)
        rounds.show_requested.connect(versions.show_version)
        rounds.versions_changed.connect(versions.refresh_models)
        versions.sentence_changed.connect(rounds.set_active_sentence)
        versions.choice_made.connect(rounds.on_choice_made)
        versions.project_changed.connect(rounds.refresh_slides)
        versions.active_changed.connect(reviewing.set_versions)

    def _first_frame(self, _record: object = None) -> None:
        self.window.view.painted.disconnect(self._first_frame)
        QTimer.singleShot(0, self, self.become_ready)

    def become_ready(self) -> None:
        """Open the project's registry, make the plots, start following the project."""
        if self.ready:
            return
        self.ready = True
        self.rounds.start()
        self.versions.start()
        self._on_slide("")

    def _on_slide(self, _path: str) -> None:
        if not self.ready:
            return  # become_ready() follows the first frame of this slide
        self.versions.sync_project()
        self.rounds.refresh_slides()
        self.reviewing.update_other()
        self.reviewing.changed()

    def close(self) -> None:
        """The window closes: stop a running round (the registry stays as it was) and a ranking."""
        self.versions.close()
        self.rounds.close()
        self.reviewing.close()

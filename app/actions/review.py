"""The "Review next" dock: regions of the open slide where the active model is least sure (or
disagrees most with the version it came from), ranked off the GUI thread (the app's
:class:`~app.workers.Worker`; a newer request supersedes an older one) from the prediction cache,
reviewed regions (correction ROIs) left out. A click takes the view there and outlines the region
(the slide view's review box) until the next jump, or until a new ranking no longer lists it.

Which version is active, and its parent, come from the Models dock's ``active_changed`` signal;
the predictions from :class:`~app.actions.predictions.PredictionActions`' public signals.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QObject, QTimer

from app.panels.review import ReviewPanel
from app.state.predictions import prediction_folder
from app.state.training import review_viewport
from app.state.versions import checkpoint_of
from app.workers import Job, Worker
from engine.api import CocoPathError

if TYPE_CHECKING:
    from app.main_window import MainWindow

log = logging.getLogger(__name__)

REVIEW_REGIONS = 10
REVIEW_DEBOUNCE_MS = 3000  # while a run fills the cache, "Review next" re-ranks at most this often


def _mpp(source: Any) -> float | None:
    info = source.info if source is not None else None
    if info is None:
        return None
    return info.mpp[0] if isinstance(info.mpp, tuple) else info.mpp


class ReviewActions(QObject):
    """Ranks the open slide's regions for :attr:`panel` and moves ``window``'s view to the chosen one."""

    def __init__(self, window: MainWindow) -> None:
        super().__init__(window)
        self.window = window
        self.panel = ReviewPanel()
        self.dock: Any = None
        self._id = 0
        self.dirty = True
        self._parent_version: Any = None  # the active version's parent (ModelVersion), if any
        self.worker = Worker("review-rank", self)
        self.worker.finished.connect(self._on_ranked)
        self.timer = QTimer(self)
        self.timer.setSingleShot(True)
        self.timer.setInterval(REVIEW_DEBOUNCE_MS)
        self.timer.timeout.connect(self.changed)
        self.panel.refresh_requested.connect(self.refresh)
        self.panel.region_chosen.connect(self.go_to_region)
        pa = window.predictions
        pa.tiles_added.connect(lambda: self.timer.isActive() or self.timer.start())
        pa.run_finished.connect(lambda _end: self.changed())
        window.view.annotator.document.changed.connect(lambda _step: self.timer.start())

    def close(self) -> None:
        """The window closes: a ranking still running reports nothing any more."""
        self.worker.shutdown(5)

    def set_dock(self, dock: Any) -> None:
        self.dock = dock
        dock.visibilityChanged.connect(self._visible)

    def _visible(self, visible: bool) -> None:
        if visible and self.dirty:
            self.refresh()

    def changed(self) -> None:
        """Something the ranking depends on changed: rank again now if the dock is seen, else when
        it is."""
        self.dirty = True
        if self.dock is not None and self.dock.isVisible() and not self.dock.visibleRegion().isEmpty():
            self.refresh()

    def set_versions(self, _active: Any, parent: Any) -> None:
        """The Models dock switched the active version (``parent``: its parent's ModelVersion)."""
        self._parent_version = parent
        self.dirty = True
        self.update_other()

    def update_other(self) -> None:
        """Offer "disagreement" when the active version's parent has predicted this slide too."""
        self.panel.set_other(self._other_root()[1])

    def _other_root(self) -> tuple[Path | None, str | None]:
        source, parent = self.window.source, self._parent_version
        if source is None or parent is None:
            return None, None
        try:
            from engine.api import load_spec

            spec = load_spec(checkpoint_of(parent))
        except CocoPathError:
            return None, None
        root = prediction_folder(source.info.path, spec.version)  # type: ignore[attr-defined]
        return (root, parent.version) if (root / "cache.json").is_file() else (None, None)

    def refresh(self) -> None:
        """Rank the open slide's regions in a worker thread (newer requests supersede older)."""
        self.dirty = False
        self._id += 1
        cache = self.window.predictions.cache
        source = self.window.source
        if cache is None or source is None:
            self._show([], None)
            return
        mpp = _mpp(source)
        self.panel.set_units(bool(mpp))
        region_px = round(self.panel.size.value() / mpp) if mpp else self.panel.size.value()
        store = self.window.view.annotator.store
        exclude = []
        if store is not None:
            for roi in store.rois():
                x0, y0, x1, y1 = roi.geometry.bounds
                exclude.append((int(x0), int(y0), int(x1 - x0) + 1, int(y1 - y0) + 1))
        other = self._other_root()[0] if self.panel.mode() == "disagreement" else None
        self.panel.set_busy("Ranking regions…")
        rid, root, exclude_ = self._id, Path(cache.root), tuple(exclude)
        self.worker.submit(lambda job: _rank(job, rid, root, region_px, exclude_, other))

    def _on_ranked(self, ranked: tuple[int, list, str]) -> None:
        rid, regions, error = ranked
        if rid != self._id:
            return  # the slide or the cache changed meanwhile
        self._show(regions, _mpp(self.window.source), error)

    def _show(self, regions: list, mpp: float | None, error: str = "") -> None:
        """List ``regions``; the outlined region stays only while the list still holds it."""
        self.panel.set_regions(regions, mpp, error)
        box = self.window.view.review_box
        if box is not None and box not in {_rect(r) for r in regions}:
            self.window.view.set_review_box(None)

    def go_to_region(self, region: Any) -> None:
        """Centre the view on ``region``, magnified so that it fills most of the view, and outline it."""
        view = self.window.view
        vp = view.viewport
        if vp is not None:
            view.set_review_box(_rect(region))
            view.set_viewport(review_viewport(region, vp))


def _rank(_job: Job, rid: int, root: Path, region_px: int, exclude: tuple,
          other: Path | None) -> tuple[int, list, str]:
    """(``rid``, the regions, "" or why there are none), in the ranking worker's thread."""
    try:
        from engine.api import PredictionCache, rank_regions

        other_cache = PredictionCache(other) if other is not None else None
        regions = rank_regions(PredictionCache(root), region_px, n=REVIEW_REGIONS,
                               exclude=exclude, other=other_cache)
        return rid, list(regions), ""
    except CocoPathError as exc:
        return rid, [], str(exc)
    except Exception as exc:  # noqa: BLE001 - said in the panel, logged in full
        log.exception("ranking review regions failed")
        return rid, [], f"Regions could not be ranked ({type(exc).__name__}: {exc})."


def _rect(region: Any) -> tuple[float, float, float, float]:
    return (float(region.x), float(region.y), float(region.w), float(region.h))

"""The "Review next" dock: regions of the open slide where the active model is least sure (or
disagrees most with the version it came from), ranked off the GUI thread from the prediction cache,
reviewed regions (correction ROIs) left out. A click takes the view there and outlines the region
(the slide view's review box) until the next jump, or until a new ranking no longer lists it.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QObject, QTimer, Signal

from app.panels.review import ReviewPanel
from app.state.predictions import prediction_folder
from app.state.training import review_viewport
from app.state.versions import checkpoint_of
from engine.api import CocoPathError

if TYPE_CHECKING:
    from app.main_window import MainWindow

log = logging.getLogger(__name__)

REVIEW_REGIONS = 10
REVIEW_DEBOUNCE_MS = 3000  # while a run fills the cache, "Review next" re-ranks at most this often


class _ReviewSignals(QObject):
    done = Signal(int, object, str)  # request id, regions, error message ("" when fine)


def _mpp(source: Any) -> float | None:
    info = source.info if source is not None else None
    if info is None:
        return None
    return info.mpp[0] if isinstance(info.mpp, tuple) else info.mpp


class ReviewActions(QObject):
    """Ranks the open slide's regions for ``panel`` and moves ``window``'s view to the chosen one.
    ``versions`` gives the active registry version and its parent's model (for "disagreement")."""

    def __init__(self, window: MainWindow, panel: ReviewPanel, versions: Any) -> None:
        super().__init__(window)
        self.window = window
        self.panel = panel
        self.versions = versions  # TrainingActions: registry and active version
        self.dock: Any = None
        self._id = 0
        self.dirty = True
        self._signals = _ReviewSignals(self)
        self._signals.done.connect(self._on_ranked)
        self.timer = QTimer(self)
        self.timer.setSingleShot(True)
        self.timer.setInterval(REVIEW_DEBOUNCE_MS)
        self.timer.timeout.connect(self.changed)
        panel.refresh_requested.connect(self.refresh)
        panel.region_chosen.connect(self.go_to_region)
        pa = window.predictions
        pa.bridge.tile_done.connect(lambda *_: self.timer.isActive() or self.timer.start())
        window.view.annotator.document.changed.connect(lambda _step: self.timer.start())

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

    def update_other(self) -> None:
        """Offer "disagreement" when the active version's parent has predicted this slide too."""
        self.panel.set_other(self._other_root()[1])

    def _other_root(self) -> tuple[Path | None, str | None]:
        source, active = self.window.source, self.versions._active()
        registry = self.versions.registry
        if source is None or active is None or not active.parent or registry is None:
            return None, None
        try:
            from engine.api import load_spec

            parent = registry.get(active.parent)
            spec = load_spec(checkpoint_of(parent))
        except CocoPathError:
            return None, None
        root = prediction_folder(source.info.path, spec.version)  # type: ignore[attr-defined]
        return (root, parent.version) if (root / "cache.json").is_file() else (None, None)

    def refresh(self) -> None:
        """Rank the open slide's regions in a worker thread (newer requests supersede older)."""
        self.dirty = False
        self._id += 1
        cache = self.window.view.predictions.cache
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
        rid, root = self._id, Path(cache.root)
        threading.Thread(target=self._rank, args=(rid, root, region_px, tuple(exclude), other),
                         name="review-rank", daemon=True).start()

    def _rank(self, rid: int, root: Path, region_px: int, exclude: tuple, other: Path | None) -> None:
        try:
            from engine.api import PredictionCache, rank_regions

            other_cache = PredictionCache(other) if other is not None else None
            regions = rank_regions(PredictionCache(root), region_px, n=REVIEW_REGIONS,
                                   exclude=exclude, other=other_cache)
            self._signals.done.emit(rid, regions, "")
        except CocoPathError as exc:
            self._signals.done.emit(rid, [], str(exc))
        except Exception as exc:  # noqa: BLE001 - said in the panel, logged in full
            log.exception("ranking review regions failed")
            self._signals.done.emit(rid, [], f"Regions could not be ranked "
                                             f"({type(exc).__name__}: {exc}).")

    def _on_ranked(self, rid: int, regions: list, error: str) -> None:
        if rid != self._id:
            return  # a newer ranking is on its way
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


def _rect(region: Any) -> tuple[float, float, float, float]:
    return (float(region.x), float(region.y), float(region.w), float(region.h))

"""Tools ▸ Accept prediction in view (A) / in the selected correction ROI (Shift+A).

The model's predicted regions inside the view (or the selected ROIs) become annotations of the
matching classes, as one undo step: the shapes come from the engine
(:func:`engine.api.prediction_in_region`, at the finest cache level that fits, simplified at 1 µm,
islands under 200 µm² dropped, as the CLI's GeoJSON), what they become is decided in
:mod:`app.state.accept`. Every case where nothing can be accepted says why in the status bar.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import shapely
from PySide6.QtCore import QObject, Qt
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import QMenu, QToolBar, QToolButton
from shapely.geometry import box
from shapely.geometry.base import BaseGeometry

from app.state.accept import MAX_PIXELS, accepted_counts
from app.viewer.tools.fill_prediction import NO_PREDICTION
from engine.api import Kind, PredictionCache, Step, prediction_in_region, vector_tolerances

if TYPE_CHECKING:
    from app.main_window import MainWindow


class PredictionAccept(QObject):
    """The two accept actions, added to the Tools menu and the Annotate toolbar."""

    def __init__(self, window: MainWindow, menu: QMenu, toolbar: QToolBar) -> None:
        super().__init__(window)
        self.window = window
        self.annotator = window.view.annotator
        self.act_view = window.make_action(
            "&Accept prediction in view", self.accept_in_view, "A", "fa5s.check",
            "Turn the model's predicted regions in the view into annotations (one undo step)")
        self.act_roi = window.make_action(
            "Accept prediction in selected &ROI", self.accept_in_roi, "Shift+A", "fa5s.check-square",
            "Turn the model's predicted regions inside the selected correction ROI into annotations")
        self.act_view.setIconText("Accept in view")
        self.act_roi.setIconText("Accept in ROI")
        for act in (self.act_view, self.act_roi):
            act.setShortcutContext(Qt.ShortcutContext.WindowShortcut)
        menu.addSeparator()
        menu.addActions([self.act_view, self.act_roi])
        toolbar.addSeparator()
        toolbar.addActions([self.act_view, self.act_roi])
        for act in (self.act_view, self.act_roi):  # the icon alone would not say what it accepts
            button = toolbar.widgetForAction(act)
            if isinstance(button, QToolButton):
                button.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)

    def _say(self, text: str) -> None:
        self.annotator.message.emit(text)

    def _ready(self) -> PredictionCache | None:
        if self.window.source is None or self.annotator.store is None:
            self._say("Open a slide first: predictions are accepted into a slide's annotations.")
            return None
        cache = self.annotator.prediction_cache()
        if cache is None:
            self._say(NO_PREDICTION)
        return cache

    def accept_in_view(self) -> Step | None:
        """Accept the prediction inside the visible part of the slide."""
        cache = self._ready()
        view = self.window.view
        vp, geo = view.viewport, view.geometry_
        if cache is None or vp is None or geo is None:
            return None
        x0, y0, x1, y1 = vp.visible_rect()
        region = box(max(0.0, x0), max(0.0, y0), min(float(geo.width), x1), min(float(geo.height), y1))
        return self._accept(cache, region, "the view", "accept prediction (view)")

    def accept_in_roi(self) -> Step | None:
        """Accept the prediction inside the selected correction ROI(s)."""
        cache = self._ready()
        if cache is None:
            return None
        rois = [a for a in self.annotator.selected_annotations() if a.kind is Kind.ROI]
        if not rois:
            self._say("Select a correction ROI first: the Select tool (S), then click its dashed "
                      "outline; or use Accept prediction in view (A).")
            return None
        region = shapely.union_all([a.geometry for a in rois])
        where = "the selected ROI" if len(rois) == 1 else f"the {len(rois)} selected ROIs"
        return self._accept(cache, region, where, "accept prediction (ROI)")

    def _accept(self, cache: PredictionCache, region: BaseGeometry, where: str,
                label: str) -> Step | None:
        geo = self.window.view.geometry_
        tol, min_area = vector_tolerances((geo.mpp, geo.mpp) if geo is not None and geo.mpp else None)
        QGuiApplication.setOverrideCursor(Qt.CursorShape.WaitCursor)
        try:
            got = prediction_in_region(cache, region, tol, min_area, MAX_PIXELS)
            names = " or ".join(cache.class_names)
            if got.count == 0:
                self._say(f"The model has not predicted {where} yet ({got.pending} tiles of tissue "
                          f"to go): run it, or wait until the run has been there." if got.pending
                          else f"The model predicts no {names} in {where}: nothing to accept.")
                return None
            step = self.annotator.accept_prediction(
                got.polygons, cache, label, f"The prediction in {where} is annotated already.")
        finally:
            QGuiApplication.restoreOverrideCursor()
        if step is not None:
            new, grown = accepted_counts([(c.before, c.after) for c in step.changes])
            text = f"Accepted the prediction in {where}: {new} new annotation(s)"
            text += f", {grown} of yours extended" if grown else ""
            text += f"; {got.pending} tiles there are not predicted yet" if got.pending else ""
            self._say(text + " (Ctrl+Z undoes it all).")
        return step

"""The annotation side of the slide view: the current tool, class and selection, and the edits.

The annotator owns the overlay and the tools, hands the view's mouse and key events to the current
tool, and commits what tools compute through the :class:`~app.commands.AnnotationDocument` (one
journalled step and one undo command per edit).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import shapely
from PySide6.QtCore import QObject, Qt, Signal
from PySide6.QtGui import QKeyEvent, QPainter
from shapely.geometry import Point, box
from shapely.geometry.base import BaseGeometry

from app.commands import AnnotationDocument
from app.state import accept, editing
from app.state.viewport import Viewport
from app.viewer.layers.annotations import AnnotationOverlay
from app.viewer.tools import TOOL_CLASSES
from app.viewer.tools.base import Tool
from engine.api import (PALETTE, Annotation, AnnotationClass, AnnotationStore, Kind, PredictionCache,
                        Step)

log = logging.getLogger(__name__)

DEFAULT_BRUSH_UM = 40.0  # brush diameter; on a slide without a pixel size the same number of pixels
HIT_TOLERANCE_PX = 4.0  # screen pixels around a click that still hit an outline


class Annotator(QObject):
    """Tools, class palette state and selection for one slide view."""

    tool_changed = Signal(str)
    class_changed = Signal(str)
    classes_changed = Signal()
    selection_changed = Signal()
    brush_changed = Signal(float)
    message = Signal(str)  # something the status bar should say (an edit that did nothing …)

    def __init__(self, view: object, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.view = view
        self.document = AnnotationDocument(self)
        self.overlay = AnnotationOverlay(self)  # one of the view's layers: the view paints it
        self.classes: list[AnnotationClass] = []
        self.current_class: str | None = None
        self.selection: list[str] = []
        self.brush_um = DEFAULT_BRUSH_UM
        self.tools: dict[str, Tool] = {cls.name: cls(self) for cls in TOOL_CLASSES}
        self.tool: Tool | None = None  # None: navigate (drag pans)
        self.document.changed.connect(self._on_changed)
        self.document.error.connect(self.message)

    # -- state ---------------------------------------------------------------------------------------

    @property
    def store(self) -> AnnotationStore | None:
        return self.document.store

    @property
    def author(self) -> str:
        return self.store.project.author if self.store is not None else ""

    def set_store(self, store: AnnotationStore | None) -> None:
        if self.tool is not None:
            self.tool.cancel()
        self.overlay.set_store(store)
        self.set_selection([])
        self.document.set_store(store)  # its change signal reloads the classes

    def reload_classes(self) -> None:
        store = self.store
        self.classes = store.project.classes() if store is not None else []
        self.overlay.set_colors({c.name: c.color for c in self.classes})
        names = [c.name for c in self.classes]
        if self.current_class not in names:
            self.set_class(names[0] if names else None)
        self.classes_changed.emit()
        self.update()

    def set_class(self, name: str | None) -> None:
        self.current_class = name
        self.class_changed.emit(name or "")

    def choose_class(self, name: str) -> None:
        """The palette's choice (click or number key): the current class, and the selection's."""
        self.set_class(name)
        if self.selection:
            self.apply(editing.reclass(self.selected_annotations(), name))

    def set_tool(self, name: str | None) -> None:
        if self.tool is not None:
            self.tool.cancel()
        self.tool = self.tools[name] if name else None
        if self.tool is not None:
            self.tool.activate()
            self.view.setCursor(self.tool.cursor)  # type: ignore[attr-defined]
        else:
            self.view.unsetCursor()  # type: ignore[attr-defined]
        self.tool_changed.emit(name or "")
        self.update()

    def set_brush_um(self, diameter: float) -> None:
        self.brush_um = min(max(float(diameter), 1.0), 5000.0)
        self.brush_changed.emit(self.brush_um)
        self.update()

    def brush_radius_px(self) -> float:
        """Half the brush diameter, in level-0 pixels."""
        mpp = self.view.geometry_.mpp if self.view.geometry_ is not None else None  # type: ignore[attr-defined]
        return self.brush_um / (2 * mpp) if mpp else self.brush_um / 2

    def set_selection(self, uuids: list[str]) -> None:
        self.selection = list(dict.fromkeys(uuids))
        self.overlay.selected = set(self.selection)
        self.selection_changed.emit()
        self.update()

    def selected_annotations(self) -> list[Annotation]:
        if self.store is None:
            return []
        found = (self.store.find(u) for u in self.selection)
        return [a for a in found if a is not None]

    # -- queries -------------------------------------------------------------------------------------

    def tolerance(self) -> float:
        vp = self.view.viewport  # type: ignore[attr-defined]
        return HIT_TOLERANCE_PX * (vp.downsample if vp is not None else 1.0)

    def annotation_at(self, x: float, y: float, kind: Kind | None = Kind.REGION) -> Annotation | None:
        if self.store is None:
            return None
        t = self.tolerance()
        return editing.hit(self.store.query(x - t, y - t, x + t, y + t, kind=kind), x, y, t, kind)

    def roi_at(self, x: float, y: float) -> Annotation | None:
        """The correction ROI whose outline passes nearest (x, y), within the hit tolerance: a ROI
        is picked by its border only, so a click inside one (on tissue being reviewed) never
        selects, moves or deletes the whole reviewed area by accident."""
        if self.store is None:
            return None
        t, pt = self.tolerance(), Point(x, y)
        near = [(a.geometry.boundary.distance(pt), i, a) for i, a in
                enumerate(self.store.query(x - t, y - t, x + t, y + t, kind=Kind.ROI))]
        hits = [n for n in near if n[0] <= t]
        return min(hits)[2] if hits else None

    def picked(self, x: float, y: float) -> Annotation | None:
        """What a click at (x, y) picks: the region under it, else a ROI by its border."""
        return self.annotation_at(x, y, Kind.REGION) or self.roi_at(x, y)

    def touching(self, geom: BaseGeometry, kind: Kind | None = None) -> list[Annotation]:
        if self.store is None:
            return []
        x0, y0, x1, y1 = geom.bounds
        return self.store.query(x0, y0, x1, y1, kind=kind)

    # -- edits ---------------------------------------------------------------------------------------

    def apply(self, edit: editing.Edit | None, quiet: bool = False) -> Step | None:
        if self.store is None:
            self.message.emit("Open a slide first: annotations belong to a slide.")
            return None
        if edit is not None:
            edit = self._within_slide(edit)
        if edit is None:
            if not quiet:
                self.message.emit("Nothing to change there.")
            return None
        step = self.document.apply(edit)
        if step is not None and edit.classes:
            self.reload_classes()  # the step created classes (an accepted prediction's)
        return step

    def prediction_cache(self) -> PredictionCache | None:
        """The prediction cache the view shows (None: no model has run on this slide)."""
        return self.view.predictions.cache  # type: ignore[attr-defined]

    def accept_prediction(self, polygons: Sequence[Sequence[BaseGeometry]], cache: PredictionCache,
                          label: str, nothing: str, single: bool = False) -> Step | None:
        """Accept predicted ``polygons`` (per foreground class of ``cache``) as annotations of the
        matching classes, as one step (see :mod:`app.state.accept`); ``nothing`` is said when all
        of it is annotated already."""
        if self.store is None:
            self.message.emit("Open a slide first: annotations belong to a slide.")
            return None
        names, new = accept.target_classes(cache.class_names, self.classes, PALETTE)
        shapes = [(names[k], polys) for k, polys in enumerate(polygons) if polys]
        if not shapes:
            self.message.emit(nothing)
            return None
        x0, y0, x1, y1 = shapely.union_all([g for _, ps in shapes for g in ps]).bounds
        edit = accept.accept_shapes(shapes, self.store.query(x0, y0, x1, y1, kind=Kind.REGION),
                                    accept.model_label(cache.meta, cache.version), label, new,
                                    single)
        if edit is None:
            self.message.emit(nothing)
            return None
        return self.apply(edit)

    def _within_slide(self, edit: editing.Edit) -> editing.Edit | None:
        """``edit`` with new outlines cut to the slide's rectangle (nothing is drawn off the glass)."""
        geo = self.view.geometry_  # type: ignore[attr-defined]
        if geo is None:
            return edit
        return editing.clip_edit(edit, box(0, 0, geo.width, geo.height))

    def delete_selection(self) -> None:
        self.apply(editing.delete(self.selected_annotations()))
        self.set_selection([])

    def merge_selection(self) -> None:
        self.apply(editing.merge(self.selected_annotations()))
        self.set_selection(self.selection[:1])

    def _on_changed(self, step: Step | None) -> None:
        if step is None:
            self.reload_classes()
        self.overlay.apply_step(step)
        if self.store is not None and self.selection:
            live = [u for u in self.selection if self.store.find(u) is not None]
            if live != self.selection:
                self.set_selection(live)
        self.update()

    def shutdown(self) -> None:
        self.overlay.shutdown()

    def update(self) -> None:
        self.view.update()  # type: ignore[attr-defined]

    # -- the view's hooks ----------------------------------------------------------------------------

    def paint(self, p: QPainter, vp: Viewport) -> None:
        """The current tool's gesture in progress (the view paints the overlay among its layers)."""
        if self.tool is not None:
            self.tool.paint(p, vp)

    def press(self, x: float, y: float, mods: Qt.KeyboardModifier) -> bool:
        return self.tool is not None and self.store is not None and self.tool.press(x, y, mods)

    def move(self, x: float, y: float, mods: Qt.KeyboardModifier, dragging: bool) -> bool:
        return self.tool is not None and self.tool.move(x, y, mods, dragging)

    def release(self, x: float, y: float, mods: Qt.KeyboardModifier) -> bool:
        return self.tool is not None and self.tool.release(x, y, mods)

    def double_click(self, x: float, y: float) -> bool:
        return self.tool is not None and self.tool.double_click(x, y)

    def key(self, event: QKeyEvent) -> bool:
        if self.tool is not None and self.tool.key(event):
            return True
        k = event.key()
        if k == Qt.Key.Key_BracketLeft:
            self.set_brush_um(self.brush_um / 1.25)
            return True
        if k == Qt.Key.Key_BracketRight:
            self.set_brush_um(self.brush_um * 1.25)
            return True
        return False

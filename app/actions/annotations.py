"""The main window's annotation menus: projects, import/export, undo/redo, tools, class keys.

Projects: a slide opened without a project goes into the default project (see
:mod:`app.state.session`); File ▸ New project / Open project switch to another folder, and the open
slide moves along (it is added to the new project, which then shows that project's outlines of it).
Every edit is committed the moment it is made; there is nothing to save.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from PySide6.QtCore import QObject, Qt
from PySide6.QtGui import QAction, QActionGroup, QKeySequence
from PySide6.QtWidgets import QFileDialog, QLabel, QMenu, QMessageBox

from app.panels.classes import ClassPalette
from app.state import session
from engine.api import (CocoPathError, ImportResult, Project, annotation_formats, export_file,
                        import_file)

if TYPE_CHECKING:
    from app.main_window import MainWindow

log = logging.getLogger(__name__)


def _globs(extensions: tuple[str, ...]) -> str:
    return " ".join(f"*{e}" for e in extensions)


def _import_filter() -> str:
    """Every format read, then one entry per set of endings (formats that share one, joined)."""
    by_endings: dict[tuple[str, ...], list[str]] = {}
    for f in annotation_formats("import"):
        by_endings.setdefault(f.extensions, []).append(f.title)
    every = tuple(dict.fromkeys(e for ends in by_endings for e in ends))
    each = [f"{' or '.join(titles)} ({_globs(ends)})" for ends, titles in by_endings.items()]
    return ";;".join([f"Annotations ({_globs(every)})", *each, "All files (*)"])


# The file dialogs' filters come from the engine's table of formats (outlines only: the GUI does not
# export label masks). Export: filter → (format name, ending added when the name has none).
IMPORT_FILTER = _import_filter()
EXPORT_FILTERS = {f"{f.title} (*{f.extensions[0]})": (f.name, f.extensions[0])
                  for f in annotation_formats("export") if f.capabilities.outlines}


EXPORT_MESSAGE_MS = 15000


def export_message(count: int, path: str | Path, notes: tuple[str, ...] | list[str]) -> str:
    """The status bar's line after an export: what was written, and what the format does not keep
    (a note, not a question: the file is written; no dialog interrupts the work)."""
    text = f"Exported {count} annotation(s) to {Path(path).name}."
    if notes:
        text += " Note: " + "; ".join(n.rstrip(".") for n in notes) + "."
    return text


class AnnotationActions(QObject):
    """Builds the annotation actions into ``window`` and keeps project, slide and store together."""

    def __init__(self, window: MainWindow) -> None:
        super().__init__(window)
        self.window = window
        self.annotator = window.view.annotator
        self.project: Project | None = None
        self.class_actions: list[QAction] = []
        self.tool_actions: dict[str, QAction] = {}
        self.palette = ClassPalette(self.annotator)
        self.palette_dock = window.add_dock("Classes", "classes", self.palette)
        window.tabifyDockWidget(window.info_dock, self.palette_dock)  # the window's height stays
        self.palette_dock.raise_()
        self.project_label = QLabel("")
        window.statusBar().addPermanentWidget(self.project_label)
        self._build()
        self.annotator.classes_changed.connect(self._rebuild_class_keys)
        self.annotator.message.connect(self._message)
        self.annotator.document.error.connect(self._edit_error)
        window.slide_opened.connect(self.attach_slide)

    # -- construction --------------------------------------------------------------------------------

    def _build(self) -> None:
        w = self.window
        self.act_new_project = w.make_action("&New project…", self.new_project_dialog, None,
                                         "fa5s.folder-plus", "Create a project folder for annotations")
        self.act_open_project = w.make_action("Open pro&ject…", self.open_project_dialog, None,
                                          "fa5s.folder", "Open a project folder")
        self.act_import = w.make_action("&Import annotations…", self.import_dialog, None,
                                    "fa5s.file-import", "Import QuPath GeoJSON, ASAP or ImageScope XML")
        self.act_export = w.make_action("&Export annotations…", self.export_dialog, None,
                                    "fa5s.file-export", "Export as QuPath GeoJSON or ASAP XML")
        stack = self.annotator.document.undo_stack
        self.act_undo = stack.createUndoAction(w, "&Undo")
        self.act_undo.setShortcuts([QKeySequence(QKeySequence.StandardKey.Undo)])
        self.act_redo = stack.createRedoAction(w, "&Redo")
        self.act_redo.setShortcuts([QKeySequence("Ctrl+Shift+Z"), QKeySequence("Ctrl+Y")])
        self.act_delete = w.make_action("&Delete selected", self.annotator.delete_selection,
                                    QKeySequence(QKeySequence.StandardKey.Delete))
        self.act_merge = w.make_action("&Merge selected", self.annotator.merge_selection, "Ctrl+M")
        first = w.act_close
        w.file_menu.insertActions(first, [self.act_new_project, self.act_open_project])
        w.file_menu.insertSeparator(first)
        w.file_menu.insertActions(first, [self.act_import, self.act_export])
        w.file_menu.insertSeparator(first)
        edit = QMenu("&Edit", w)
        w.menuBar().insertMenu(w.view_menu.menuAction(), edit)
        edit.addActions([self.act_undo, self.act_redo])
        edit.addSeparator()
        edit.addActions([self.act_delete, self.act_merge])
        self._build_tools()
        w.view_menu.addAction(self.palette_dock.toggleViewAction())
        self._update()

    def _build_tools(self) -> None:
        w = self.window
        group = QActionGroup(self)
        tools_menu = QMenu("&Tools", w)
        w.menuBar().insertMenu(w.view_menu.menuAction(), tools_menu)
        bar = w.addToolBar("Annotate")
        bar.setObjectName("annotate-toolbar")
        self.tools_menu, self.toolbar = tools_menu, bar  # the prediction's accept actions join them
        nav = w.make_action("&Navigate", lambda: self.annotator.set_tool(None), "N", "fa5s.hand-paper",
                        "Drag pans the slide (no tool)")
        self.tool_actions[""] = nav
        for name, tool in self.annotator.tools.items():
            act = w.make_action(tool.label, lambda _=False, n=name: self.annotator.set_tool(n),
                            tool.shortcut or None, None, tool.tip)
            self.tool_actions[name] = act
        for act in self.tool_actions.values():
            act.setCheckable(True)
            act.setShortcutContext(Qt.ShortcutContext.WindowShortcut)
            group.addAction(act)
            tools_menu.addAction(act)
            bar.addAction(act)
        nav.setChecked(True)
        self.annotator.tool_changed.connect(lambda n: self.tool_actions[n].setChecked(True))

    def _rebuild_class_keys(self) -> None:
        for act in self.class_actions:
            self.window.removeAction(act)
            act.deleteLater()
        self.class_actions = []
        for cls in self.annotator.classes:
            if not cls.shortcut:
                continue
            act = QAction(f"Class {cls.name}", self.window)
            act.setShortcut(QKeySequence(cls.shortcut))
            act.setShortcutContext(Qt.ShortcutContext.WindowShortcut)
            act.triggered.connect(lambda _=False, n=cls.name: self.annotator.choose_class(n))
            self.window.addAction(act)
            self.class_actions.append(act)

    def _update(self) -> None:
        has_store = self.annotator.store is not None
        for act in (self.act_import, self.act_export):
            act.setEnabled(has_store)
        name = self.project.folder.name if self.project is not None else "—"
        self.project_label.setText(f"Project: {name}")
        if self.project is not None:
            self.project_label.setToolTip(str(self.project.folder))

    # -- projects ------------------------------------------------------------------------------------

    def use_project(self, project: Project) -> None:
        """Make ``project`` current (the previous one is closed); the open slide follows."""
        old, self.project = self.project, project
        self.annotator.set_store(None)
        if old is not None and old is not project:
            old.close()
        if self.window.remember:
            self.window.settings.setValue("project/last", str(project.folder))
        if self.window.source is not None:
            self.attach_slide(self.window.source.info.path)  # type: ignore[attr-defined]
        self._update()

    def ensure_project(self) -> Project | None:
        if self.project is not None:
            return self.project
        last = self.window.settings.value("project/last") if self.window.remember else None
        folder = Path(str(last)) if last and Path(str(last)).is_dir() else \
            session.default_project_folder()
        try:
            self.project = session.open_or_create(folder)
        except CocoPathError as exc:
            self.window.show_error(f"Annotations are off: {exc}")
            return None
        self._update()
        return self.project

    def attach_slide(self, path: str) -> None:
        """Show the current project's annotations of the slide at ``path`` (added if new)."""
        project = self.ensure_project()
        if project is None:
            return
        try:
            store = project.store(project.add_slide(path))
        except CocoPathError as exc:
            self.window.show_error(f"Annotations are off for this slide: {exc}")
            store = None
        self.annotator.set_store(store)
        self._update()

    def detach_slide(self) -> None:
        self.annotator.set_store(None)
        self._update()

    def new_project(self, folder: str | Path) -> bool:
        return self._switch_project(session.create_project, folder)

    def open_project(self, folder: str | Path) -> bool:
        return self._switch_project(Project.open, folder)

    def _switch_project(self, make: Callable[[str | Path], Project], folder: str | Path) -> bool:
        """Use the project ``make(folder)`` gives; its error (one sentence) in a message box."""
        try:
            project = make(folder)
        except CocoPathError as exc:
            self.window.show_error(str(exc))
            return False
        self.use_project(project)
        return True

    def new_project_dialog(self) -> None:
        folder = QFileDialog.getExistingDirectory(self.window, "New project: choose an empty folder")
        if folder:
            self.new_project(folder)

    def open_project_dialog(self) -> None:
        folder = QFileDialog.getExistingDirectory(self.window, "Open project folder")
        if folder:
            self.open_project(folder)

    def close(self) -> None:
        self.annotator.set_store(None)
        if self.project is not None:
            self.project.close()
            self.project = None

    # -- import / export -----------------------------------------------------------------------------

    def import_annotations(self, path: str | Path) -> ImportResult | None:
        """Import a file into the open slide as one undoable step; errors become a message."""
        store = self.annotator.store
        if store is None:
            self.window.show_error("Open a slide first: annotations are imported into a slide.")
            return None
        try:
            result = import_file(store, path)
        except CocoPathError as exc:
            self.window.show_error(str(exc))
            return None
        if result.step_id is not None:
            self.annotator.document.adopt(result.step_id, f"import {Path(path).name}")
        text = f"Imported {result.count} annotation(s) from {Path(path).name}."
        self.window.statusBar().showMessage(text, 10000)
        if result.warnings:
            self._info(text + "\n\n" + "\n".join(f"• {w}" for w in result.warnings))
        return result

    def export_annotations(self, path: str | Path, fmt: str) -> bool:
        store = self.annotator.store
        if store is None:
            return False
        try:
            result = export_file(store, path, fmt)
        except CocoPathError as exc:
            self.window.show_error(str(exc))
            return False
        self.window.statusBar().showMessage(export_message(result.count, path, result.warnings),
                                            EXPORT_MESSAGE_MS)
        return True

    def import_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self.window, "Import annotations", "", IMPORT_FILTER)
        if path:
            self.import_annotations(path)

    def export_dialog(self) -> None:
        path, chosen = QFileDialog.getSaveFileName(self.window, "Export annotations", "",
                                                   ";;".join(EXPORT_FILTERS))
        if not path:
            return
        fmt, suffix = EXPORT_FILTERS.get(chosen, ("geojson", ".geojson"))
        if not Path(path).suffix:
            path += suffix
        self.export_annotations(path, fmt)

    # -- messages ------------------------------------------------------------------------------------

    def _message(self, text: str) -> None:
        self.window.statusBar().showMessage(text, 6000)

    def _edit_error(self, text: str) -> None:
        self.window.show_error(text)

    def _info(self, text: str) -> None:
        log.info("%s", text)
        if not self.window.interactive_errors:
            return
        box = QMessageBox(QMessageBox.Icon.Information, "CoCoPath", text,
                          QMessageBox.StandardButton.Ok, self.window)
        box.open()
        self.window.error_box = box

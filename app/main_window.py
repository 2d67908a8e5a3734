"""The main window: the slide view in the middle, overview, slide info and class docks, menus, status bar."""

from __future__ import annotations

import logging
from pathlib import Path

from PySide6.QtCore import QByteArray, QSettings, Qt, QTimer, QUrl, Signal
from PySide6.QtGui import (QAction, QCloseEvent, QDragEnterEvent, QDropEvent, QIcon, QImage,
                           QKeySequence)
from PySide6.QtWidgets import (QDockWidget, QFileDialog, QLabel, QMainWindow, QMessageBox, QWidget)

from app.actions.annotations import AnnotationActions
from app.actions.predictions import PredictionActions
from app.actions.training import TrainingActions
from app.panels.slide_info import SlideInfoPanel, rgb_to_qimage
from app.state.viewport import (MAGNIFICATION_PRESETS, Viewport, format_magnification,
                                format_position)
from app.viewer.overview import OverviewWidget
from app.viewer.slide_view import SlideView
from engine.api import CocoPathError, SlideError
from engine.api import ByteBoundedCache
from engine.api import open_slide

log = logging.getLogger(__name__)

MAX_RECENT = 10
DOCK_SHARE = 1 / 3  # of the window's width, at most, for the docks of one side (1/4 with two)
MIN_DOCK_WIDTH = 300  # never narrower: the Training panel's narrowest layout (~280 px) and its bar fit
SLIDE_FILTER = ("Slides (*.svs *.tif *.tiff *.ndpi *.vms *.vmu *.scn *.mrxs *.svslide *.bif *.czi "
                "*.dcm);;All files (*)")
CONTROLS_HELP = Path(__file__).with_name("CONTROLS.md")


def icon(name: str) -> QIcon:
    """A qtawesome icon, or an empty one if the icon font cannot load (never fatal)."""
    try:
        import qtawesome as qta

        return qta.icon(name, color="#404040")
    except Exception:  # noqa: BLE001 - icons are decoration
        return QIcon()


class MainWindow(QMainWindow):
    """CoCoPath's window. ``interactive_errors=False`` logs errors instead of showing message boxes;
    ``remember=False`` keeps the recent-files list and the saved layout untouched."""

    slide_opened = Signal(str)

    def __init__(self, settings: QSettings | None = None, cache: ByteBoundedCache | None = None,
                 interactive_errors: bool = True, remember: bool = True) -> None:
        super().__init__()
        self.setWindowTitle("CoCoPath")
        self.settings = settings or QSettings("CoCoPath", "CoCoPath")
        self.interactive_errors = interactive_errors
        self.remember = remember  # False (screenshots, benchmarks): leave recent files and layout alone
        self.error_box: QMessageBox | None = None
        self.last_error = ""
        self.source: object | None = None
        self.downloader: object | None = None
        self.view = SlideView(cache or ByteBoundedCache(), self)
        self.setCentralWidget(self.view)
        self.setAcceptDrops(True)

        self.overview = OverviewWidget()
        self.overview_dock = self.add_dock("Overview", "overview", self.overview)
        self.info_panel = SlideInfoPanel()
        self.info_dock = self.add_dock("Slide info", "slide-info", self.info_panel)
        self.overview.navigate.connect(self.view.center_on)
        self.view.viewport_changed.connect(self._on_viewport)
        self.view.cursor_moved.connect(self._on_cursor)
        self.view.tile_error.connect(self._on_tile_error)
        self._tile_error_shown = False

        self.mag_label = QLabel("—")
        self.level_label = QLabel("")
        self.pos_label = QLabel("")
        for w in (self.pos_label, self.level_label, self.mag_label):
            self.statusBar().addPermanentWidget(w)

        self._icon_names: dict[QAction, str] = {}
        self._icons_installed = False
        self._dock_widths: dict[Qt.DockWidgetArea, int] = {}  # a column's width before a cap
        self._build_actions()
        self._build_menus()
        self.annotations = AnnotationActions(self)  # projects, tools, classes, undo, import/export
        self.predictions = PredictionActions(self)  # model and summary docks, the overlay (H)
        self.training = TrainingActions(self)  # training, models and review-next docks
        self._tabify_docks()
        self.view.painted.connect(self._after_first_frame)
        self.resizeDocks([self.overview_dock], [320], Qt.Orientation.Horizontal)
        if remember:
            self._restore_layout()
        else:
            self.resize(1400, 900)
        self._update_actions()

    # -- construction --------------------------------------------------------------------------------

    def _tabify_docks(self) -> None:
        """Related docks share a place as tabs: stacked one under another, their minimum heights
        added up to a window taller than a laptop screen."""
        groups = ((self.annotations.palette_dock, self.info_dock),
                  (self.predictions.model_dock, self.predictions.summary_dock),
                  (self.training.training_dock, self.training.models_dock, self.training.review_dock))
        for first, *rest in groups:
            for dock in rest:
                self.tabifyDockWidget(first, dock)
            first.raise_()

    def add_dock(self, title: str, name: str, widget: QWidget) -> QDockWidget:
        """A dock showing ``widget`` on the right (``name``: its key in the saved layout); the
        action modules build their docks with it."""
        dock = QDockWidget(title, self)
        dock.setObjectName(name)
        dock.setWidget(widget)
        self.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, dock)
        return dock

    def make_action(self, text: str, slot: object, shortcut: object = None, icon_name: str | None = None,
                    tip: str = "") -> QAction:
        """An action of this window calling ``slot`` (its icon loads after the first frame)."""
        act = QAction(text, self)
        if icon_name:
            self._icon_names[act] = icon_name  # icons load after the first frame (qtawesome: ~0.5 s)
        if shortcut is not None:
            act.setShortcuts(shortcut if isinstance(shortcut, list) else [QKeySequence(shortcut)])
        act.setStatusTip(tip or text.replace("&", "").rstrip("…"))
        act.triggered.connect(slot)
        return act

    def _build_actions(self) -> None:
        S = QKeySequence.StandardKey
        self.act_open = self.make_action("&Open slide…", self.open_dialog, S.Open, "fa5s.folder-open")
        self.act_sample = self.make_action("Open &sample slide", self.open_sample, None, "fa5s.download",
                                       "Open OpenSlide's public CMU-1-Small-Region test slide")
        self.act_close = self.make_action("&Close slide", self.close_slide, S.Close, "fa5s.times")
        self.act_quit = self.make_action("&Quit", self.close, S.Quit, "fa5s.sign-out-alt")
        self.act_zoom_in = self.make_action("Zoom &in", lambda: self.view.zoom_by(1.5),
                                        [QKeySequence(S.ZoomIn), QKeySequence("+")], "fa5s.search-plus")
        self.act_zoom_out = self.make_action("Zoom &out", lambda: self.view.zoom_by(1 / 1.5),
                                         [QKeySequence(S.ZoomOut), QKeySequence("-")], "fa5s.search-minus")
        self.act_fit = self.make_action("Zoom to &fit", self.view.zoom_to_fit,
                                    [QKeySequence("F"), QKeySequence("0")], "fa5s.expand")
        self.preset_actions: dict[float, QAction] = {}
        for i, mag in enumerate(MAGNIFICATION_PRESETS):
            act = self.make_action(f"{mag:g}×", lambda _=False, m=mag: self.view.set_magnification(m),
                               QKeySequence(f"Alt+{i + 1}"), tip=f"Show the slide at {mag:g}× magnification")
            self.preset_actions[mag] = act
        self.act_controls = self.make_action("&Controls", self.show_controls, S.HelpContents, "fa5s.keyboard")
        self.act_about = self.make_action("&About CoCoPath", self.show_about, None, "fa5s.info-circle")
        for act in (self.act_zoom_in, self.act_zoom_out, self.act_fit, *self.preset_actions.values()):
            act.setShortcutContext(Qt.ShortcutContext.WindowShortcut)

    def _build_menus(self) -> None:
        mb = self.menuBar()
        m = self.file_menu = mb.addMenu("&File")
        m.addAction(self.act_open)
        self.recent_menu = m.addMenu("Open &recent")
        m.addAction(self.act_sample)
        m.addSeparator()
        m.addAction(self.act_close)
        m.addSeparator()
        m.addAction(self.act_quit)
        v = self.view_menu = mb.addMenu("&View")
        v.addActions([self.act_zoom_in, self.act_zoom_out, self.act_fit])
        mags = v.addMenu("&Magnification")
        mags.addActions(list(self.preset_actions.values()))
        v.addSeparator()
        v.addAction(self.overview_dock.toggleViewAction())
        v.addAction(self.info_dock.toggleViewAction())
        h = mb.addMenu("&Help")
        h.addActions([self.act_controls, self.act_about])
        tb = self.addToolBar("Main")
        tb.setObjectName("main-toolbar")
        tb.addActions([self.act_open, self.act_zoom_in, self.act_zoom_out, self.act_fit])
        tb.addSeparator()
        tb.addActions(list(self.preset_actions.values()))
        self._rebuild_recent_menu()

    def _after_first_frame(self, _record: object = None) -> None:
        self.view.painted.disconnect(self._after_first_frame)
        QTimer.singleShot(0, self, self.install_icons)

    def install_icons(self) -> None:
        """Give actions their qtawesome icons (deferred so the first slide frame comes sooner)."""
        if self._icons_installed:
            return
        self._icons_installed = True
        for act, name in self._icon_names.items():
            act.setIcon(icon(name))
        self.recent_menu.setIcon(icon("fa5s.history"))

    def resizeEvent(self, event: object) -> None:  # noqa: N802
        super().resizeEvent(event)  # type: ignore[arg-type]
        self.fit_docks()

    def fit_docks(self) -> None:
        """Keep the slide the largest thing in the window: each side's column of docks is at most
        :data:`DOCK_SHARE` of the window's width (a quarter each with docks on both sides), never
        under :data:`MIN_DOCK_WIDTH`; a column narrowed for a small window widens again, up to
        the width it had, when the window grows."""
        areas = {}
        for dock in self.findChildren(QDockWidget):
            area = self.dockWidgetArea(dock)
            if not dock.isFloating() and area in (Qt.DockWidgetArea.LeftDockWidgetArea,
                                                  Qt.DockWidgetArea.RightDockWidgetArea):
                areas.setdefault(area, []).append(dock)
        shown = [a for a, docks in areas.items() if any(d.isVisible() for d in docks)]
        share = DOCK_SHARE if len(shown) < 2 else 1 / 4
        cap = max(MIN_DOCK_WIDTH, int(self.width() * share))
        grow = []
        for area, docks in areas.items():
            visible = [d for d in docks if d.isVisible() and not d.visibleRegion().isEmpty()]
            now = max((d.width() for d in visible), default=0)  # before the cap shrinks them
            for dock in docks:
                dock.setMaximumWidth(cap)
            wanted = self._dock_widths.get(area, 0)
            if now > cap:
                self._dock_widths[area] = max(wanted, now)  # the width it had before it was capped
            elif visible and wanted > now:
                grow.append((visible, min(wanted, cap)))
        if grow:  # once the layout has taken the new size
            QTimer.singleShot(0, self, lambda: self._widen(grow))

    def _widen(self, grow: list) -> None:
        for docks, width in grow:
            docks = [d for d in docks if d.isVisible() and d.width() < width]
            if docks:
                self.resizeDocks(docks, [width] * len(docks), Qt.Orientation.Horizontal)

    def showEvent(self, event: object) -> None:  # noqa: N802
        super().showEvent(event)  # type: ignore[arg-type]
        if self.source is None:  # nothing to paint first: icons now
            QTimer.singleShot(0, self, self.install_icons)

    def _restore_layout(self) -> None:
        geom = self.settings.value("window/geometry")
        state = self.settings.value("window/state")
        if isinstance(geom, QByteArray):
            self.restoreGeometry(geom)
        else:
            self.resize(1400, 900)
        if isinstance(state, QByteArray):
            self.restoreState(state)

    def _update_actions(self) -> None:
        has = self.source is not None
        presets = self.view.presets()
        for mag, act in self.preset_actions.items():
            act.setEnabled(has and mag in presets)
        for act in (self.act_close, self.act_zoom_in, self.act_zoom_out, self.act_fit):
            act.setEnabled(has)

    # -- opening -------------------------------------------------------------------------------------

    def open_dialog(self) -> None:
        start = str(Path(self.recent_files()[0]).parent) if self.recent_files() else ""
        path, _ = QFileDialog.getOpenFileName(self, "Open slide", start, SLIDE_FILTER)
        if path:
            self.open_path(path)

    def open_path(self, path: str | Path) -> bool:
        """Open a slide; on failure show the error's one sentence and keep the current slide."""
        try:
            source = open_slide(path)
            thumb = self._thumbnail(source)
        except SlideError as exc:
            self.show_error(str(exc))
            return False
        except Exception as exc:  # noqa: BLE001 - the GUI never shows a traceback
            log.exception("opening %s failed", path)
            self.show_error(f"{path}: could not be opened ({type(exc).__name__}: {exc}).")
            return False
        self.source = source
        self._tile_error_shown = False
        self.view.set_source(source, thumb)  # the view's loader closes the previous slide when idle
        info = source.info
        self.overview.set_slide(thumb, info.dimensions)
        if self.view.viewport is not None:
            self.overview.set_viewport(self.view.viewport)
        self.info_panel.set_slide(source)
        self.setWindowTitle(f"{Path(info.path).name} — CoCoPath")
        if info.mpp is None:
            self.statusBar().showMessage("This slide has no pixel size: positions are in pixels and "
                                         "the scale bar is hidden.", 8000)
        if self.remember:
            self.add_recent(info.path)
        self._update_actions()
        self.slide_opened.emit(info.path)
        return True

    @staticmethod
    def _thumbnail(source: object) -> QImage | None:
        try:
            return rgb_to_qimage(source.thumbnail(512))  # type: ignore[attr-defined]
        except CocoPathError as exc:
            log.warning("no thumbnail: %s", exc)
            return None

    def close_slide(self) -> None:
        self.annotations.detach_slide()
        self.source = None
        self.predictions.slide_closed()
        self.view.set_source(None)
        self.overview.set_slide(None, None)
        self.info_panel.clear()
        self.setWindowTitle("CoCoPath")
        self.mag_label.setText("—")
        self.level_label.setText("")
        self.pos_label.setText("")
        self._update_actions()

    def open_sample(self, url: str | None = None) -> None:
        """Open the sample slide: the local one if there is one, else download it (with progress)."""
        from app.sample_download import SampleDownloader, sample_path_or_none

        local = sample_path_or_none() if not url else None
        if local is not None:
            self.open_path(local)
            return
        if self.downloader is not None:
            return
        dl = SampleDownloader(self, url, show_errors=self.interactive_errors)
        dl.finished_path.connect(self.open_path)
        dl.failed.connect(self._remember_error)
        dl.worker.ended.connect(self._download_done)
        self.downloader = dl
        dl.start()

    def _download_done(self) -> None:
        self.downloader = None

    def offer_sample_download(self) -> None:
        """Ask once whether to download the sample slide (start-up with nothing to show)."""
        box = QMessageBox(QMessageBox.Icon.Question, "Welcome to CoCoPath",
                          "No slide was given. Download OpenSlide's public sample slide "
                          "(CMU-1-Small-Region, 1.9 MB) and open it?",
                          QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No, self)
        box.accepted.connect(self.open_sample)
        box.open()
        self.error_box = box

    # -- errors --------------------------------------------------------------------------------------

    def _on_tile_error(self, message: str) -> None:
        """Parts of the slide cannot be read: say so once per slide (stand-ins stay on screen)."""
        self.statusBar().showMessage(message, 10000)
        if not self._tile_error_shown:
            self._tile_error_shown = True
            self.show_error(message)

    def _remember_error(self, message: str) -> None:
        self.last_error = message

    def show_error(self, message: str) -> None:
        """The one-sentence message of an error, in a message box (never a traceback)."""
        self.last_error = message
        log.warning("%s", message)
        if not self.interactive_errors:
            return
        self.error_box = QMessageBox(QMessageBox.Icon.Warning, "CoCoPath", message,
                                     QMessageBox.StandardButton.Ok, self)
        self.error_box.open()

    # -- recent files --------------------------------------------------------------------------------

    def recent_files(self) -> list[str]:
        value = self.settings.value("recent", [])
        if isinstance(value, str):
            value = [value]
        return [str(v) for v in (value or [])]

    def add_recent(self, path: str) -> None:
        files = [path] + [p for p in self.recent_files() if p != path]
        self.settings.setValue("recent", files[:MAX_RECENT])
        self._rebuild_recent_menu()

    def _rebuild_recent_menu(self) -> None:
        self.recent_menu.clear()
        files = self.recent_files()
        for i, path in enumerate(files):
            act = self.recent_menu.addAction(f"&{(i + 1) % 10} {Path(path).name}")
            act.setToolTip(path)
            act.setStatusTip(path)
            act.triggered.connect(lambda _=False, p=path: self.open_path(p))
        if files:
            self.recent_menu.addSeparator()
            self.recent_menu.addAction("Clear list", self._clear_recent)
        self.recent_menu.setEnabled(bool(files))

    def _clear_recent(self) -> None:
        self.settings.setValue("recent", [])
        self._rebuild_recent_menu()

    # -- status --------------------------------------------------------------------------------------

    def _on_viewport(self, vp: Viewport) -> None:
        self.overview.set_viewport(vp)
        geo = self.view.geometry_
        if geo is None:
            return
        mag = vp.magnification(geo)
        self.mag_label.setText(format_magnification(mag, vp.downsample))
        plan = self.view.plan
        level = plan.level if plan is not None else vp.level(geo)
        if level >= 0:
            text = f"level {level} (÷{geo.level_downsamples[level]:.3g})"
        else:  # zoomed out past the pyramid: the area-averaged overview image is drawn
            thumb = self.view.thumbnail
            text = f"overview image (÷{geo.width / thumb.width():.3g})" if thumb else "overview image"
        self.level_label.setText(text)

    def _on_cursor(self, x: float, y: float) -> None:
        geo = self.view.geometry_
        if geo is not None:
            self.pos_label.setText(format_position(x, y, geo.mpp))

    # -- help ----------------------------------------------------------------------------------------

    def show_controls(self) -> None:
        text = CONTROLS_HELP.read_text(encoding="utf-8") if CONTROLS_HELP.exists() else ""
        box = QMessageBox(QMessageBox.Icon.Information, "Controls", text, QMessageBox.StandardButton.Ok, self)
        box.setTextFormat(Qt.TextFormat.MarkdownText)
        box.open()
        self.error_box = box

    def show_about(self) -> None:
        QMessageBox.about(self, "About CoCoPath",
                          "CoCoPath: a whole-slide viewer with a compact, distilled tumour-segmentation "
                          "network you can correct and fine-tune.")

    # -- drag and drop, closing ---------------------------------------------------------------------

    def dragEnterEvent(self, event: QDragEnterEvent) -> None:  # noqa: N802
        if event.mimeData().hasUrls() and any(u.isLocalFile() for u in event.mimeData().urls()):
            event.acceptProposedAction()

    def dropEvent(self, event: QDropEvent) -> None:  # noqa: N802
        urls: list[QUrl] = [u for u in event.mimeData().urls() if u.isLocalFile()]
        if urls:
            event.acceptProposedAction()
            self.open_path(urls[0].toLocalFile())

    def closeEvent(self, event: QCloseEvent) -> None:  # noqa: N802
        if self.remember:
            self.settings.setValue("window/geometry", self.saveGeometry())
            self.settings.setValue("window/state", self.saveState())
            self.settings.sync()
        if self.downloader is not None:
            self.downloader.shutdown()  # type: ignore[attr-defined]
        self.view.loader.shutdown()  # closes the slide once no reader uses it
        self.training.close()  # a running round is stopped (the registry stays as it was)
        self.annotations.close()
        self.predictions.close()
        for layer in self.view.layers:  # their render workers
            layer.shutdown()
        self.source = None
        super().closeEvent(event)

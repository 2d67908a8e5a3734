"""The training dock: which model version is active (one sentence), a round's result (verdict,
Accept / Keep old, before / after on the held-out ROIs and the replay sample) at the top where it is
seen without scrolling, the round's settings (time budget, teacher, ticked slides with their ROI
counts, how the classes map, a warning for a slide too coarse for the model), Fine-tune / Cancel,
progress and time left, live curves (pyqtgraph), and errors with the process's stderr under
"Details".

A thin widget: :mod:`app.actions.training` starts the round and feeds it the round's events.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (QBoxLayout, QCheckBox, QFormLayout, QGridLayout, QGroupBox,
                               QHBoxLayout, QHeaderView, QLabel, QListWidget, QListWidgetItem,
                               QPlainTextEdit, QProgressBar, QPushButton, QSpinBox, QTableWidget,
                               QTableWidgetItem, QToolButton, QVBoxLayout, QWidget)

from app.panels.model import WARNING_STYLE
from app.state.round_plan import SlideRow, roi_text
from app.state.training import (RoundCurves, RoundEnd, format_change, format_score, result_rows,
                                verdict)

#: Curve colours, in turn (the held-out mIoU is drawn in black).
CURVE_COLORS = ("#d62728", "#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2",
                "#17becf")
IDLE = ("Trains a new version of the model on your corrections inside correction ROIs (O), in "
        "the background: keep working meanwhile.")


def _plot(title: str, left: str) -> Any:
    import pyqtgraph as pg

    w = pg.PlotWidget(background="w")
    w.setTitle(title, color="#303030", size="9pt")
    w.setLabel("left", left)
    w.setLabel("bottom", "training step (stages in turn)")
    w.getAxis("left").enableAutoSIPrefix(False)
    w.showGrid(x=True, y=True, alpha=0.25)
    w.setMinimumHeight(100)
    w.setMouseEnabled(x=False, y=False)
    w.hideButtons()
    return w


BUDGET_TIP = ("The round's wall-clock time, in seconds: it measures how long a training step takes "
              "and trains as many steps as fit. auto: 60 s on a CPU, 20 s on a GPU")


class TrainingPanel(QWidget):
    finetune_requested = Signal()
    cancel_requested = Signal()
    accept_requested = Signal()
    keep_old_requested = Signal()
    show_new_requested = Signal()  # show the new version's mask on the open slide, not made active
    ticks_changed = Signal(str, bool)  # a slide's path, ticked: the user ticked or unticked it
    options_changed = Signal()  # a setting that changes the class plan

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.curves = RoundCurves()
        self._lines: dict[str, Any] = {}  # curve label → pyqtgraph PlotDataItem
        self.result: Mapping[str, Any] | None = None
        self.intro = QLabel(IDLE)
        self.intro.setWordWrap(True)
        self.active_label = QLabel("")  # the one sentence about the active version
        self.active_label.setWordWrap(True)
        self.active_label.setStyleSheet("font-weight: bold")
        # settings
        self.budget = QSpinBox()
        self.budget.setRange(0, 3600)
        self.budget.setSingleStep(10)
        self.budget.setSpecialValueText("auto")
        self.budget.setSuffix(" s")
        self.budget.setValue(0)
        self.budget.setToolTip(BUDGET_TIP)
        self.teacher = QCheckBox("Distil from the teacher")  # short: the column may be narrow
        self.teacher.setChecked(False)
        self.teacher.setToolTip("Off (default): the round learns your corrections within its time budget, "
                                "keeping the current version's answers everywhere you did not correct. "
                                "On: CoCo distillation instead: the shipped teacher is adapted to your "
                                "corrections, then the student learns from both for a fixed number of "
                                "steps (minutes on a CPU; the time budget does not apply)")
        self.new_classes = QCheckBox("Learn classes it lacks as new classes")
        self.new_classes.setChecked(False)
        self.new_classes.setToolTip("Off (default): a class you draw that the model does not have (Stroma, "
                                    "Necrosis, …) is learnt as not tumour. On: each such class becomes a "
                                    "class of its own that the new version predicts and shows in its own "
                                    "colour (learnt from your corrections alone; the time budget applies)")
        self.new_classes.toggled.connect(lambda _on: self.options_changed.emit())
        self.teacher.toggled.connect(self._teacher_toggled)
        self.slides = QListWidget()
        self.slides.setMaximumHeight(84)
        self.slides.setWordWrap(True)  # a long name (a DICOM folder and file) wraps, its count shown
        self.slides.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.slides.setToolTip("The slides whose correction ROIs the round learns from: the open "
                               "one is ticked; tick others to learn from them too")
        self.slides.itemChanged.connect(self._ticked)
        self.plan = QLabel("")  # how the classes drawn map to the model's
        self.plan.setWordWrap(True)
        self.plan.setStyleSheet("color: #404040")
        self.warning = QLabel("")  # a ticked slide too coarse for the model (shown at the top)
        self.warning.setWordWrap(True)
        self.warning.setStyleSheet(WARNING_STYLE)
        self.warning.setVisible(False)
        settings = QGroupBox("Round")
        form = QFormLayout(settings)
        form.setContentsMargins(6, 4, 6, 4)
        form.addRow("Time budget", self.budget)
        form.addRow(self.teacher)
        form.addRow(self.new_classes)
        form.addRow("Slides", self.slides)
        form.addRow(self.plan)
        self.finetune_button = QPushButton("Fine-tune")
        self.finetune_button.setToolTip("Train a new version of the active model on the corrections")
        self.cancel_button = QPushButton("Cancel")
        buttons = QHBoxLayout()
        buttons.addWidget(self.finetune_button, 1)
        buttons.addWidget(self.cancel_button)
        self.finetune_button.clicked.connect(self.finetune_requested)
        self.cancel_button.clicked.connect(self.cancel_requested)
        # progress and curves
        self.progress = QProgressBar()
        self.progress.setFormat("%p %")
        self.status = QLabel("")
        self.status.setWordWrap(True)
        # the plots are made by ensure_plots() (importing pyqtgraph takes ~0.4 s: not at start-up)
        self.loss_plot: Any = None
        self.miou_plot: Any = None
        self.miou_line: Any = None
        self.plots = QWidget()
        self.plots_layout = QVBoxLayout(self.plots)
        self.plots_layout.setContentsMargins(0, 0, 0, 0)
        self.plots.setMinimumHeight(240)
        self.plots.setMinimumWidth(240)
        # result: the verdict and the choice first, the figures under them
        self.result_box = QGroupBox("The round's new version")
        self.table = QTableWidget(len(result_rows({})), 4)
        self.table.setHorizontalHeaderLabels(["", "Before", "After", "Change"])
        self.table.verticalHeader().setVisible(False)
        self.table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().setDefaultSectionSize(self.fontMetrics().height() + 6)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        self.table.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.table.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.verdict = QLabel("")
        self.verdict.setWordWrap(True)
        self.accept_button = QPushButton("Accept new version")
        self.accept_button.setToolTip("Make the new version the active model")
        self.keep_button = QPushButton("Keep old")
        self.keep_button.setToolTip("Keep the version the round started from active "
                                    "(the new one stays in the Models panel)")
        self.show_button = QPushButton("Show on slide")
        self.show_button.setToolTip("Show the new version's mask on the open slide without making it "
                                    "active (open another slide to see it there too); Accept or Keep "
                                    "old chooses")
        self.accept_button.clicked.connect(self.accept_requested)
        self.keep_button.clicked.connect(self.keep_old_requested)
        self.show_button.clicked.connect(self.show_new_requested)
        choice = QGridLayout()  # two columns: fits the narrow side dock
        choice.addWidget(self.accept_button, 0, 0)
        choice.addWidget(self.keep_button, 0, 1)
        choice.addWidget(self.show_button, 1, 0, 1, 2)
        rl = QVBoxLayout(self.result_box)
        rl.setContentsMargins(6, 4, 6, 4)
        rl.addWidget(self.verdict)
        rl.addLayout(choice)
        rl.addWidget(self.table)
        # errors
        self.error = QLabel("")
        self.error.setWordWrap(True)
        self.error.setStyleSheet("color: #b00020; font-weight: bold")
        self.error.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.details = QPlainTextEdit()
        self.details.setReadOnly(True)
        self.details.setMaximumHeight(110)
        self.details.setPlaceholderText("The fine-tuning process's messages")
        self.details_button = QToolButton()
        self.details_button.setText("Details")
        self.details_button.setCheckable(True)
        self.details_button.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.details_button.setArrowType(Qt.ArrowType.RightArrow)
        self.details_button.setAutoRaise(True)
        self.details_button.toggled.connect(self._show_details)
        controls = QWidget()
        cl = QVBoxLayout(controls)
        cl.setContentsMargins(0, 0, 0, 0)
        for w in (self.intro, settings):
            cl.addWidget(w)
        cl.addLayout(buttons)
        for w in (self.progress, self.status, self.error, self.details_button, self.details):
            cl.addWidget(w)
        cl.addStretch(0)
        self.controls = controls
        head = QWidget()  # the active version and the round's verdict: seen without scrolling
        hl = QVBoxLayout(head)
        hl.setContentsMargins(0, 0, 0, 0)
        hl.addWidget(self.active_label)
        hl.addWidget(self.warning)
        hl.addWidget(self.result_box)
        self.head = head
        # stacked in a side dock; head | controls | curves side by side at the top or bottom
        self.box = QBoxLayout(QBoxLayout.Direction.TopToBottom, self)
        self.box.addWidget(head)
        self.box.addWidget(controls)
        self.box.addWidget(self.plots, 3)
        self.reset()
        self.set_running(False)

    def set_wide(self, wide: bool) -> None:
        """Side by side (a dock at the top or bottom of the window) or stacked (at a side)."""
        self.box.setDirection(QBoxLayout.Direction.LeftToRight if wide
                              else QBoxLayout.Direction.TopToBottom)
        self.controls.setMaximumWidth(360 if wide else 16777215)
        self.head.setMaximumWidth(320 if wide else 16777215)

    # -- settings ------------------------------------------------------------------------------

    def set_slides(self, rows: Sequence[SlideRow], ticked: set[str]) -> None:
        """The project's slides by name with their ROI counts; those in ``ticked`` checked."""
        self.slides.blockSignals(True)
        self.slides.clear()
        for row in rows:
            item = QListWidgetItem(roi_text(row))
            item.setData(Qt.ItemDataRole.UserRole, row.path)
            item.setToolTip(row.path)
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            item.setCheckState(Qt.CheckState.Checked if row.path in ticked else Qt.CheckState.Unchecked)
            self.slides.addItem(item)
        self.slides.blockSignals(False)

    def set_roi_count(self, row: SlideRow) -> bool:
        """Show ``row``'s ROI count (a correction ROI drawn, deleted, undone); False when the slide
        is not listed."""
        for i in range(self.slides.count()):
            item = self.slides.item(i)
            if item.data(Qt.ItemDataRole.UserRole) == row.path:
                self.slides.blockSignals(True)
                item.setText(roi_text(row))
                self.slides.blockSignals(False)
                return True
        return False

    def slide_texts(self) -> list[str]:
        return [self.slides.item(i).text() for i in range(self.slides.count())]

    def chosen_slides(self) -> list[str]:
        return [self.slides.item(i).data(Qt.ItemDataRole.UserRole) for i in range(self.slides.count())
                if self.slides.item(i).checkState() == Qt.CheckState.Checked]

    def _ticked(self, item: QListWidgetItem) -> None:
        self.ticks_changed.emit(str(item.data(Qt.ItemDataRole.UserRole)),
                                item.checkState() == Qt.CheckState.Checked)

    def set_plan(self, text: str) -> None:
        self.plan.setText(text)
        self.plan.setVisible(bool(text))

    def set_warning(self, text: str) -> None:
        """A one-line warning in the panel (a ticked slide too coarse for the model); "" hides it."""
        self.warning.setText(text)
        self.warning.setVisible(bool(text))

    def set_active(self, sentence: str) -> None:
        """The one sentence about the active version ("" hides it: no project)."""
        self.active_label.setText(sentence)
        self.active_label.setVisible(bool(sentence))

    def set_running(self, running: bool, can_start: bool = True) -> None:
        self.finetune_button.setEnabled(not running and can_start)
        self.cancel_button.setEnabled(running)
        for w in (self.budget, self.teacher, self.slides):
            w.setEnabled(not running)
        self.new_classes.setEnabled(not running and not self.teacher.isChecked())

    def _teacher_toggled(self, distil: bool) -> None:
        """Distillation cannot add classes: the teacher knows only the model's own."""
        if distil:
            self.new_classes.setChecked(False)
        self.new_classes.setEnabled(not distil)
        self.options_changed.emit()

    def learns_new_classes(self) -> bool:
        return self.new_classes.isChecked() and not self.teacher.isChecked()

    # -- a round -------------------------------------------------------------------------------

    def reset(self) -> None:
        """A new round: empty curves, no result, no error."""
        self.curves.clear()
        self._clear_losses()
        if self.miou_line is not None:
            self.miou_line.setData([], [])
        self.progress.setRange(0, 100)
        self.progress.setValue(0)
        self.progress.setVisible(False)  # shown while a round runs, and with its outcome
        self.status.setText("")
        self.result = None
        self.result_box.setVisible(False)
        self.error.setText("")
        self.error.setVisible(False)
        self.details.clear()
        self.details_button.setChecked(False)
        self.details_button.setVisible(False)
        self._show_details(False)

    def started(self) -> None:
        self.ensure_plots()
        self.reset()
        self.progress.setRange(0, 0)  # busy until the first step
        self.progress.setVisible(True)
        self.status.setText(self.curves.progress_text())
        self.set_running(True)

    def add_event(self, kind: str, data: Mapping[str, Any]) -> None:
        """One event of the round: progress and eval move the curves; log lines go to Details."""
        if kind == "progress":
            self.curves.add_progress(data)
            c = self.curves
            if c.total:
                self.progress.setRange(0, c.total)
                self.progress.setValue(min(c.step, c.total))
            self.status.setText(c.progress_text())
            self._redraw_losses()
        elif kind == "eval":
            self.curves.add_eval(data)
            self._redraw_heldout()
        elif kind == "log":
            self.details.appendPlainText(str(data.get("message") or data))
            self.details_button.setVisible(True)

    def ensure_plots(self) -> None:
        """Make the two plots (first use of pyqtgraph) and draw what the round has sent so far."""
        if self.loss_plot is not None:
            return
        import pyqtgraph as pg

        self.loss_plot = _plot("Training losses", "loss")
        self.loss_plot.addLegend(offset=(-2, 2), labelTextSize="7pt", colCount=2,
                                 brush=(255, 255, 255, 210), verSpacing=-6,
                                 labelTextColor="#303030")
        self.miou_plot = _plot("Held-out mIoU", "mIoU")
        self.miou_line = self.miou_plot.plot([], [], pen=pg.mkPen("#202020", width=2), symbol="o",
                                             symbolSize=5, symbolBrush="#202020")
        self.plots_layout.addWidget(self.loss_plot, 2)
        self.plots_layout.addWidget(self.miou_plot, 1)
        self._redraw_losses()
        self._redraw_heldout()

    def _clear_losses(self) -> None:
        self._lines = {}
        if self.loss_plot is None:
            return
        self.loss_plot.clear()
        legend = self.loss_plot.plotItem.legend
        if legend is not None:
            legend.clear()

    def _redraw_losses(self) -> None:
        if self.loss_plot is None:
            return
        if set(self._lines) - set(self.curves.losses):  # a stage renamed the curves: start over
            self._clear_losses()
        import pyqtgraph as pg

        for name, points in self.curves.losses.items():
            line = self._lines.get(name)
            if line is None:
                color = CURVE_COLORS[len(self._lines) % len(CURVE_COLORS)]
                line = self.loss_plot.plot([], [], pen=pg.mkPen(color, width=1.5), name=name)
                self._lines[name] = line
            xs, ys = zip(*points)
            line.setData(list(xs), list(ys))

    def _redraw_heldout(self) -> None:
        if self.miou_line is not None:
            xs, ys = zip(*self.curves.heldout) if self.curves.heldout else ((), ())
            self.miou_line.setData(list(xs), list(ys))

    def point_counts(self) -> dict[str, int]:
        """Points drawn per curve (the held-out mIoU under "heldout_miou")."""
        def n(line: Any) -> int:
            xs = line.getData()[0] if line is not None else None
            return 0 if xs is None else len(xs)

        counts = {name: n(line) for name, line in self._lines.items()}
        counts["heldout_miou"] = n(self.miou_line)
        return counts

    def finished(self, end: RoundEnd) -> None:
        self.set_running(False)
        self.progress.setRange(0, 100)
        if end.status == "done" and end.result is not None:
            self.progress.setValue(100)
            self.status.setText(f"Finished in {float(end.result.get('seconds') or 0):.0f} s.")
            self.show_result(end.result)
        elif end.status == "cancelled":
            self.progress.setVisible(False)
            self.status.setText(end.message)
        else:
            self.progress.setVisible(False)
            self.status.setText("The round failed.")
            self.show_error(end.message, end.stderr_tail)

    def show_result(self, result: Mapping[str, Any]) -> None:
        self.result = result
        rows = result_rows(result)
        self.table.setRowCount(len(rows))
        for i, row in enumerate(rows):
            cells = (row.name, format_score(row.before), format_score(row.after),
                     format_change(row.change))
            for j, text in enumerate(cells):
                item = QTableWidgetItem(text)
                if j:
                    item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                self.table.setItem(i, j, item)
        self.table.setFixedHeight(self.table.horizontalHeader().sizeHint().height()
                                  + sum(self.table.rowHeight(i) for i in range(len(rows)))
                                  + 2 * self.table.frameWidth())
        self.verdict.setText(verdict(result))
        data = result.get("data")
        notes = data.get("notes") if isinstance(data, Mapping) else None
        self.verdict.setToolTip("\n".join(map(str, notes)) if notes else "")
        if notes:  # what the round chose and noticed, under Details
            self.details.appendPlainText("Notes: " + "; ".join(map(str, notes)))
            self.details_button.setVisible(True)
        has_new = bool(result.get("version"))
        self.accept_button.setEnabled(has_new)
        self.keep_button.setEnabled(has_new and bool(result.get("parent")))
        self.show_button.setEnabled(has_new)
        self.result_box.setVisible(True)

    def choice_made(self) -> None:
        """Accept or Keep old was applied (the active sentence says which): disable both buttons."""
        self.accept_button.setEnabled(False)
        self.keep_button.setEnabled(False)

    def _show_details(self, shown: bool) -> None:
        self.details.setVisible(shown)
        self.details_button.setArrowType(Qt.ArrowType.DownArrow if shown else Qt.ArrowType.RightArrow)

    def show_error(self, message: str, details: str = "") -> None:
        self.error.setText(message)
        self.error.setVisible(bool(message))
        if details.strip():
            self.details.setPlainText(details.strip())
            self.details_button.setVisible(True)
            self.details_button.setChecked(True)  # an error opens the process's messages

    def cell(self, row: int, col: int) -> str:
        item = self.table.item(row, col)
        return item.text() if item is not None else ""

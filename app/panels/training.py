"""The training dock: a fine-tuning round's settings, Fine-tune / Cancel, live curves (pyqtgraph),
progress and time left, the result (before / after on held-out ROIs) with Accept / Keep old, and
errors with the process's stderr under "Details".

A thin widget: :mod:`app.training_actions` starts the round and feeds it the round's events.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (QBoxLayout, QCheckBox, QFormLayout, QGroupBox, QHBoxLayout, QLabel,
                               QListWidget, QListWidgetItem, QPlainTextEdit, QProgressBar,
                               QPushButton, QSpinBox, QTableWidget, QTableWidgetItem, QToolButton,
                               QVBoxLayout, QWidget)

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


class TrainingPanel(QWidget):
    finetune_requested = Signal()
    cancel_requested = Signal()
    accept_requested = Signal()
    keep_old_requested = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.curves = RoundCurves()
        self._lines: dict[str, Any] = {}  # curve label → pyqtgraph PlotDataItem
        self.result: Mapping[str, Any] | None = None
        self.intro = QLabel(IDLE)
        self.intro.setWordWrap(True)
        # settings
        self.steps = QSpinBox()
        self.steps.setRange(0, 20000)
        self.steps.setSingleStep(50)
        self.steps.setSpecialValueText("auto")
        self.steps.setValue(0)
        self.steps.setToolTip("Training steps of the student (the round takes longer with more). "
                              "auto: sized for where it runs, a few minutes on a CPU")
        self.teacher = QCheckBox("Distil from the teacher")
        self.teacher.setChecked(True)
        self.teacher.setToolTip("On: the teacher is adapted to your corrections first, then the "
                                "student learns from both. Off: the student learns from your "
                                "corrections and from its current self's predictions")
        self.slides = QListWidget()
        self.slides.setMaximumHeight(64)
        self.slides.setToolTip("The slides whose correction ROIs the round learns from")
        settings = QGroupBox("Round")
        form = QFormLayout(settings)
        form.setContentsMargins(6, 4, 6, 4)
        top = QHBoxLayout()
        top.addWidget(self.steps)
        top.addWidget(self.teacher)
        form.addRow("Steps", top)
        form.addRow("Slides", self.slides)
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
        # result
        self.result_box = QGroupBox("Result on the held-out ROIs")
        self.table = QTableWidget(len(result_rows({})), 4)
        self.table.setHorizontalHeaderLabels(["", "Before", "After", "Change"])
        self.table.verticalHeader().setVisible(False)
        self.table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.table.setMaximumHeight(90)
        self.verdict = QLabel("")
        self.verdict.setWordWrap(True)
        self.accept_button = QPushButton("Accept new version")
        self.accept_button.setToolTip("Make the new version the active model")
        self.keep_button = QPushButton("Keep old")
        self.keep_button.setToolTip("Keep the version the round started from active "
                                    "(the new one stays in the Models panel)")
        self.accept_button.clicked.connect(self.accept_requested)
        self.keep_button.clicked.connect(self.keep_old_requested)
        choice = QHBoxLayout()
        choice.addWidget(self.accept_button)
        choice.addWidget(self.keep_button)
        rl = QVBoxLayout(self.result_box)
        rl.addWidget(self.table)
        rl.addWidget(self.verdict)
        rl.addLayout(choice)
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
        # vertical in a side dock; controls | curves | result side by side at the top or bottom
        self.box = QBoxLayout(QBoxLayout.Direction.TopToBottom, self)
        self.box.addWidget(controls)
        self.box.addWidget(self.plots, 3)
        self.box.addWidget(self.result_box)
        self.reset()
        self.set_running(False)

    def set_wide(self, wide: bool) -> None:
        """Side by side (a dock at the top or bottom of the window) or stacked (at a side)."""
        self.box.setDirection(QBoxLayout.Direction.LeftToRight if wide
                              else QBoxLayout.Direction.TopToBottom)
        self.controls.setMaximumWidth(360 if wide else 16777215)
        self.result_box.setMaximumWidth(320 if wide else 16777215)

    # -- settings ------------------------------------------------------------------------------

    def set_slides(self, slides: Sequence[tuple[str, str, int]], current: str | None = None) -> None:
        """The project's slides as (path, name, ROI count); those with ROIs start checked (else the
        open one)."""
        checked = {self.slides.item(i).data(Qt.ItemDataRole.UserRole): self.slides.item(i).checkState()
                   for i in range(self.slides.count())}
        self.slides.clear()
        any_rois = any(n for _, _, n in slides)
        for path, name, rois in slides:
            item = QListWidgetItem(f"{name} — {rois} ROI{'s' if rois != 1 else ''}")
            item.setData(Qt.ItemDataRole.UserRole, path)
            item.setToolTip(path)
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            default = rois > 0 if any_rois else path == current
            state = checked.get(path, Qt.CheckState.Checked if default else Qt.CheckState.Unchecked)
            item.setCheckState(state)
            self.slides.addItem(item)

    def chosen_slides(self) -> list[str]:
        return [self.slides.item(i).data(Qt.ItemDataRole.UserRole) for i in range(self.slides.count())
                if self.slides.item(i).checkState() == Qt.CheckState.Checked]

    def set_running(self, running: bool, can_start: bool = True) -> None:
        self.finetune_button.setEnabled(not running and can_start)
        self.cancel_button.setEnabled(running)
        for w in (self.steps, self.teacher, self.slides):
            w.setEnabled(not running)

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
        for i, row in enumerate(result_rows(result)):
            cells = (row.name, format_score(row.before), format_score(row.after),
                     format_change(row.change))
            for j, text in enumerate(cells):
                item = QTableWidgetItem(text)
                if j:
                    item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                self.table.setItem(i, j, item)
        self.table.resizeColumnsToContents()
        self.verdict.setText(verdict(result))
        has_new = bool(result.get("version"))
        self.accept_button.setEnabled(has_new)
        self.keep_button.setEnabled(has_new and bool(result.get("parent")))
        self.result_box.setVisible(True)

    def choice_made(self, active: str) -> None:
        """Accept or Keep old was applied: say which version is active, disable both buttons."""
        if self.result is not None:
            self.verdict.setText(verdict(self.result, active))
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

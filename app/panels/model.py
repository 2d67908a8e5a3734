"""The model dock: the active model's card, choose a model, run / cancel, progress, device, display.

A thin widget: it shows what :mod:`app.actions.predictions` tells it and emits what the user asks.
"""

from __future__ import annotations

from collections.abc import Sequence

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QColor, QPixmap
from PySide6.QtWidgets import (QCheckBox, QComboBox, QFormLayout, QHBoxLayout, QLabel, QProgressBar,
                               QPushButton, QSlider, QVBoxLayout, QWidget)

from app.state.predictions import PredictionStyle
from app.viewer.layers.palette import prediction_color
from engine.api import ModelSpec

WARNING_STYLE = ("color: #8a4b00; background: #fff3cd; border: 1px solid #e0b252; "
                 "border-radius: 3px; padding: 3px; font-weight: bold")
NO_MODEL = ("No model loaded, and CoCoPath's default model is not installed (it is looked for in "
            "resources/models/, or where $COCOPATH_DEFAULT_MODEL points): choose a model file "
            "(.safetensors) trained with CoCoPath.")


class ModelPanel(QWidget):
    choose_requested = Signal()
    run_requested = Signal()
    cancel_requested = Signal()
    style_changed = Signal(object)  # PredictionStyle

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.spec: ModelSpec | None = None
        self.status = QLabel(NO_MODEL)
        self.status.setWordWrap(True)
        self.fields: dict[str, QLabel] = {}
        form = QFormLayout()
        for key, title in (("name", "Name"), ("version", "Version"), ("classes", "Classes"),
                           ("mpp", "Resolution"), ("tile", "Input"), ("device", "Device")):
            label = QLabel("—")
            label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
            label.setWordWrap(True)
            self.fields[key] = label
            form.addRow(title, label)
        self.level_box = QComboBox()  # the slide level to run at, when µm/px cannot decide it
        self.level_box.setToolTip("The slide level (magnification) the model runs at")
        # its longest item ("Level 0: 4,443 × 3,567 px (full resolution)") must not widen the side
        # dock past a laptop's: the box shrinks to the dock and shows the rest in its popup
        self.level_box.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.level_box.setMinimumContentsLength(12)
        self.level_note = QLabel("")
        self.level_note.setWordWrap(True)
        self.level_group = QWidget()
        level_form = QFormLayout(self.level_group)
        level_form.setContentsMargins(0, 0, 0, 0)
        level_form.addRow("Run at", self.level_box)
        level_form.addRow(self.level_note)
        self._level_needed = False
        self.warning = QLabel("")  # the slide is far coarser than the model reads
        self.warning.setWordWrap(True)
        self.warning.setStyleSheet(WARNING_STYLE)
        self.warning.setVisible(False)
        self.choose_button = QPushButton("Choose model…")
        self.run_button = QPushButton("Run on this slide")
        self.cancel_button = QPushButton("Cancel")
        self.choose_button.clicked.connect(self.choose_requested)
        self.run_button.clicked.connect(self.run_requested)
        self.cancel_button.clicked.connect(self.cancel_requested)
        buttons = QHBoxLayout()
        for b in (self.run_button, self.cancel_button):
            buttons.addWidget(b)
        self.progress = QProgressBar()
        self.progress.setFormat("%v / %m tiles")
        self.progress_label = QLabel("")
        self.mode = QComboBox()
        self.mode.addItem("Mask", "mask")
        self.mode.addItem("Heatmap", "heatmap")
        self.outline = QCheckBox("Outlines only")
        self.opacity = QSlider(Qt.Orientation.Horizontal)
        self.opacity.setRange(0, 100)
        self.opacity.setValue(50)
        self.opacity.setToolTip("Overlay opacity (H hides or shows the overlay)")
        display = QFormLayout()
        display.addRow("Show as", self.mode)
        display.addRow("", self.outline)
        display.addRow("Opacity", self.opacity)
        self.legend = QVBoxLayout()
        lay = QVBoxLayout(self)
        lay.addWidget(self.status)
        lay.addWidget(self.warning)  # first thing seen, before Run
        lay.addWidget(self.choose_button)
        lay.addLayout(form)
        lay.addWidget(self.level_group)
        lay.addLayout(buttons)
        lay.addWidget(self.progress)
        lay.addWidget(self.progress_label)
        lay.addLayout(display)
        lay.addLayout(self.legend)
        lay.addStretch(1)
        self.mode.currentIndexChanged.connect(self._emit_style)
        self.outline.toggled.connect(self._emit_style)
        self.opacity.valueChanged.connect(self._emit_style)
        self.set_spec(None)
        self.set_levels([], 0, "")
        self.set_running(False)

    def set_spec(self, spec: ModelSpec | None) -> None:
        self.spec = spec
        if spec is None:
            self.status.setText(NO_MODEL)
            for key in ("name", "version", "classes", "mpp", "tile", "device"):
                self.fields[key].setText("—")
        else:
            self.status.setText(f"Active model: {spec.name}")
            self.fields["name"].setText(spec.name)
            self.fields["version"].setText(spec.version)
            self.fields["classes"].setText(", ".join(spec.classes))
            self.fields["mpp"].setText(f"{spec.mpp:g} µm/px" if spec.mpp else
                                       "not on the card (the slide level is chosen for a run)")
            self.fields["tile"].setText(f"{spec.tile} × {spec.tile} px")
            self.fields["device"].setText("GPU when there is one, else CPU: chosen when it runs")
        self._rebuild_legend()
        self.set_running(False)
        self._emit_style()

    def set_levels(self, choices: Sequence[tuple[int, str]], default: int, note: str) -> None:
        """Offer the slide levels to run at, ``default`` selected, with ``note`` saying why;
        no ``choices``: the model's resolution decides and the picker is hidden."""
        self.level_box.blockSignals(True)
        self.level_box.clear()
        for level, text in choices:
            self.level_box.addItem(text, level)
        self.level_box.setCurrentIndex(max(0, self.level_box.findData(default)))
        self.level_box.blockSignals(False)
        self.level_note.setText(note)
        self._level_needed = bool(choices)
        self.level_group.setVisible(self._level_needed)

    def set_warning(self, text: str) -> None:
        """A warning shown above Run (the open slide is too coarse for the model); "" hides it."""
        self.warning.setText(text)
        self.warning.setVisible(bool(text))

    def chosen_level(self) -> int | None:
        """The slide level picked for a run, or None when the model's µm/px decides."""
        return int(self.level_box.currentData()) if self._level_needed else None

    def set_running(self, running: bool, can_run: bool = True) -> None:
        self.run_button.setEnabled(not running and self.spec is not None and can_run)
        self.cancel_button.setEnabled(running)
        self.choose_button.setEnabled(not running)
        self.level_box.setEnabled(not running)

    def set_progress(self, done: int, total: int, message: str = "") -> None:
        self.progress.setRange(0, max(total, 1))
        self.progress.setValue(min(done, max(total, 1)))
        self.progress_label.setText(message)

    def style(self) -> PredictionStyle:
        colors = tuple(self.spec.color(i) for i in range(len(self.spec.foreground))) \
            if self.spec else ((220, 30, 30),)
        return PredictionStyle(colors, self.opacity.value() / 100.0, str(self.mode.currentData()),
                               self.outline.isChecked())

    def _emit_style(self) -> None:
        self.style_changed.emit(self.style())

    def _rebuild_legend(self) -> None:
        while self.legend.count():
            item = self.legend.takeAt(0)
            if item.widget() is not None:
                item.widget().deleteLater()
        if self.spec is None:
            return
        for i, name in enumerate(self.spec.foreground):
            swatch = QPixmap(14, 14)
            swatch.fill(QColor(*prediction_color(i)))  # as the view draws predictions
            row = QLabel(f"{name}")
            icon = QLabel()
            icon.setPixmap(swatch)
            box = QWidget()
            h = QHBoxLayout(box)
            h.setContentsMargins(0, 0, 0, 0)
            h.addWidget(icon)
            h.addWidget(row, 1)
            self.legend.addWidget(box)

"""The "Review next" dock: regions of the open slide ranked by how unsure the model is there
(entropy of its prediction, or its disagreement with another version), best first; click one and
the view goes there. Correcting those regions is where a fine-tuning round learns most.

A thin widget: :mod:`app.actions.training` ranks the regions (off the GUI thread) and moves the
view.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (QComboBox, QFormLayout, QHBoxLayout, QLabel, QListWidget,
                               QListWidgetItem, QPushButton, QSpinBox, QVBoxLayout, QWidget)

from app.state.training import region_text

NOTHING = "Run the model on this slide (Model panel) to see where it is least sure."


class ReviewPanel(QWidget):
    region_chosen = Signal(object)  # ReviewRegion
    refresh_requested = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.regions: list[Any] = []
        self.note = QLabel(NOTHING)
        self.note.setWordWrap(True)
        self.rank_by = QComboBox()
        self.rank_by.addItem("Uncertainty (entropy)", "entropy")
        self.rank_by.setToolTip("Entropy of the active model's prediction, or its disagreement "
                                "with the version it was fine-tuned from (when that version has "
                                "predicted this slide too)")
        self.size = QSpinBox()
        self.size.setRange(32, 4096)
        self.size.setSingleStep(64)
        self.size.setValue(256)
        self.size.setSuffix(" µm")
        self.size.setToolTip("Side of a region to review")
        form = QFormLayout()
        form.addRow("Rank by", self.rank_by)
        form.addRow("Region", self.size)
        self.list = QListWidget()
        self.list.setToolTip("Click a region to go there; correct it and mark it reviewed with a "
                             "correction ROI (O)")
        self.list.itemClicked.connect(self._chosen)
        self.list.itemActivated.connect(self._chosen)
        self.refresh_button = QPushButton("Refresh")
        self.refresh_button.clicked.connect(self.refresh_requested)
        self.rank_by.currentIndexChanged.connect(lambda _i: self.refresh_requested.emit())
        self.size.editingFinished.connect(self.refresh_requested)
        row = QHBoxLayout()
        row.addStretch(1)
        row.addWidget(self.refresh_button)
        lay = QVBoxLayout(self)
        lay.addWidget(self.note)
        lay.addLayout(form)
        lay.addWidget(self.list, 1)
        lay.addLayout(row)

    def set_other(self, label: str | None) -> None:
        """Offer "disagreement with <label>" (another version's predictions of this slide)."""
        have = self.rank_by.count() > 1
        if label and not have:
            self.rank_by.addItem(f"Disagreement with {label}", "disagreement")
        elif label and have:
            self.rank_by.setItemText(1, f"Disagreement with {label}")
        elif not label and have:
            self.rank_by.setCurrentIndex(0)
            self.rank_by.removeItem(1)

    def set_units(self, has_mpp: bool) -> None:
        """Region side in µm, or in slide pixels when the slide has no pixel size."""
        suffix = " µm" if has_mpp else " px"
        if self.size.suffix() != suffix:
            self.size.blockSignals(True)
            self.size.setSuffix(suffix)
            self.size.setValue(256 if has_mpp else 1024)
            self.size.blockSignals(False)

    def mode(self) -> str:
        return str(self.rank_by.currentData())

    def set_busy(self, text: str) -> None:
        self.note.setText(text)

    def set_regions(self, regions: Sequence[Any], mpp: float | None, note: str = "") -> None:
        self.regions = list(regions)
        self.list.clear()
        for i, r in enumerate(self.regions, 1):
            text, tip = region_text(i, r, mpp)
            item = QListWidgetItem(text)
            item.setToolTip(tip)
            item.setData(Qt.ItemDataRole.UserRole, i - 1)
            self.list.addItem(item)
        if note:
            self.note.setText(note)
        elif self.regions:
            self.note.setText("Where the model is least sure, most first. Click to go there.")
        else:
            self.note.setText(NOTHING)

    def _chosen(self, item: QListWidgetItem) -> None:
        i = item.data(Qt.ItemDataRole.UserRole)
        if isinstance(i, int) and 0 <= i < len(self.regions):
            self.region_chosen.emit(self.regions[i])

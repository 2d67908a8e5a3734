"""The prediction summary dock: per class its area and fraction of the tissue, the tissue area, CSV export."""

from __future__ import annotations

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (QLabel, QPushButton, QTableWidget, QTableWidgetItem, QVBoxLayout,
                               QWidget)

from app.state.predictions import Summary


class SummaryPanel(QWidget):
    export_requested = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.summary: Summary | None = None
        self.note = QLabel("Run a model to measure the tumour area.")
        self.note.setWordWrap(True)
        self.table = QTableWidget(0, 3)
        self.table.setHorizontalHeaderLabels(["Class", "Area", "Fraction of tissue"])
        self.table.verticalHeader().setVisible(False)
        self.export_button = QPushButton("Export CSV…")
        self.export_button.clicked.connect(self.export_requested)
        lay = QVBoxLayout(self)
        lay.addWidget(self.note)
        lay.addWidget(self.table, 1)
        lay.addWidget(self.export_button)
        self.set_summary(None)

    def set_summary(self, s: Summary | None) -> None:
        self.summary = s
        self.export_button.setEnabled(s is not None)
        self.table.setRowCount(0)
        if s is None:
            self.note.setText("Run a model to measure the tumour area.")
            return
        self.note.setText(f"{s.slide} — {s.model}" + ("" if s.complete else
                                                    " (partial: the run did not finish)"))
        rows = [(r.name, r.area, r.fraction) for r in s.rows] + [("tissue", s.tissue_area, 1.0)]
        self.table.setRowCount(len(rows))
        for i, (name, area, frac) in enumerate(rows):
            cells = (name, f"{area:,.4g} {s.unit}", "—" if frac is None else f"{100 * frac:.2f} %")
            for j, text in enumerate(cells):
                self.table.setItem(i, j, QTableWidgetItem(text))
        self.table.resizeColumnsToContents()

    def set_note(self, text: str) -> None:
        """Say what is going on while there is no summary (an earlier run being measured)."""
        if self.summary is None:
            self.note.setText(text)

    def cell(self, row: int, col: int) -> str:
        item = self.table.item(row, col)
        return item.text() if item is not None else ""

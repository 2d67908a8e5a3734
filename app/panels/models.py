"""The models dock: the project's model registry — every version with its parent, date, held-out
mIoU and note, the active one marked (and the one shown on the slide, when that is another) — and
Activate, Show on slide, Rollback, Export…, Import…, the model card.

A thin widget: :mod:`app.actions.training` owns the registry and tells this panel what to show.
"""

from __future__ import annotations

from collections.abc import Sequence

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QFont
from PySide6.QtWidgets import (QAbstractItemView, QBoxLayout, QGridLayout, QLabel, QMessageBox,
                               QPlainTextEdit, QPushButton, QTableWidget, QTableWidgetItem,
                               QVBoxLayout, QWidget)

from app.state.training import ModelRow
from app.state.versions import Comparison, worse_question

COLUMNS = ("", "Version", "Held-out mIoU", "Parent", "Created", "Note")
ACTIVE_MARK = "●"
SHOWN_MARK = "○"  # shown on the slide (Show on slide), not active
NO_REGISTRY = ("No model versions in this project yet. Import a model (.safetensors), or "
               "fine-tune: the first round registers the model it starts from.")


class ModelsPanel(QWidget):
    activate_requested = Signal(str)  # a version
    show_requested = Signal(str)  # a version whose mask to show, without making it active
    rollback_requested = Signal()
    export_requested = Signal(str)
    import_requested = Signal()
    selected = Signal(str)  # the version whose card to show

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.rows: list[ModelRow] = []
        self._can_edit = True
        self._count = ""
        self._sentence = ""
        self._project: str | None = None
        self._shown: str | None = None  # the version the slide shows when it is not the active one
        self.note = QLabel(NO_REGISTRY)
        self.note.setWordWrap(True)
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(list(COLUMNS))
        self.table.verticalHeader().setVisible(False)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.itemSelectionChanged.connect(self._selection)
        self.table.cellDoubleClicked.connect(lambda r, _c: self._activate_row(r))
        self.activate_button = QPushButton("Activate")
        self.activate_button.setToolTip("Make the selected version the active model "
                                        "(the slide is re-predicted with it)")
        self.show_button = QPushButton("Show on slide")
        self.show_button.setToolTip("Show the selected version's mask on the open slide without making "
                                    "it active: the active version stays, and the next round starts "
                                    "from it")
        self.rollback_button = QPushButton("Rollback")
        self.rollback_button.setToolTip("Go back to the active version's parent")
        self.export_button = QPushButton("Export…")
        self.export_button.setToolTip("Save the selected version as a .safetensors file")
        self.import_button = QPushButton("Import…")
        self.import_button.setToolTip("Add a .safetensors model to this project's versions")
        self.activate_button.clicked.connect(lambda: self._activate_row(self.table.currentRow()))
        self.show_button.clicked.connect(self._show)
        self.rollback_button.clicked.connect(self.rollback_requested)
        self.export_button.clicked.connect(self._export)
        self.import_button.clicked.connect(self.import_requested)
        buttons = QGridLayout()  # two by two: fits a narrow side dock
        for i, b in enumerate((self.activate_button, self.show_button, self.rollback_button,
                               self.export_button, self.import_button)):
            buttons.addWidget(b, i // 2, i % 2)
        self.card = QPlainTextEdit()
        self.card.setReadOnly(True)
        self.card.setPlaceholderText("Select a version to see its model card")
        self.card.setFont(QFont("monospace", 8))
        versions = QWidget()
        vl = QVBoxLayout(versions)
        vl.setContentsMargins(0, 0, 0, 0)
        vl.addWidget(self.note)
        vl.addWidget(self.table, 1)
        vl.addLayout(buttons)
        card = QWidget()
        kl = QVBoxLayout(card)
        kl.setContentsMargins(0, 0, 0, 0)
        kl.addWidget(QLabel("Model card"))
        kl.addWidget(self.card, 1)
        # stacked in a side dock; table and card side by side at the top or bottom
        self.box = QBoxLayout(QBoxLayout.Direction.TopToBottom, self)
        self.box.addWidget(versions, 2)
        self.box.addWidget(card, 1)
        self.set_rows([], None)

    def set_wide(self, wide: bool) -> None:
        """Table and card side by side (a dock at the top or bottom) or stacked (at a side)."""
        self.box.setDirection(QBoxLayout.Direction.LeftToRight if wide
                              else QBoxLayout.Direction.TopToBottom)

    def set_rows(self, rows: Sequence[ModelRow], project: str | None, can_edit: bool = True) -> None:
        """Show ``rows`` (newest first); the selection stays on the same version if it still exists."""
        keep = self.selected_version()
        self.rows = list(rows)
        self._project = project
        self.table.blockSignals(True)
        self.table.setRowCount(len(rows))
        select = None
        for i, row in enumerate(rows):
            shown = not row.active and row.version == self._shown
            cells = (ACTIVE_MARK if row.active else SHOWN_MARK if shown else "", row.version, row.miou,
                     row.parent, row.created, row.note)
            for j, text in enumerate(cells):
                item = QTableWidgetItem(text)
                if row.active:
                    f = item.font()
                    f.setBold(True)
                    item.setFont(f)
                if j == 0:
                    item.setToolTip("the active model" if row.active else
                                    "shown on the slide, not active" if shown else "")
                    item.setTextAlignment(Qt.AlignmentFlag.AlignCenter)
                self.table.setItem(i, j, item)
            if row.version == keep or (keep is None and row.active):
                select = i
        self.table.resizeColumnsToContents()
        self.table.blockSignals(False)
        if select is not None:
            self.table.selectRow(select)
        elif not rows:
            self.card.clear()
        if project is None:
            self.note.setText("Open a slide: model versions belong to the project.")
        elif not rows:
            self.note.setText(NO_REGISTRY)
        else:
            self._count = f"{len(rows)} version{'s' if len(rows) != 1 else ''} in {project}."
            self.note.setText(f"{self._count} {self._sentence}".strip())
        self.set_enabled(can_edit and project is not None)

    def set_sentence(self, sentence: str) -> None:
        """The one sentence about the active version (app.state.versions.active_sentence)."""
        self._sentence = sentence
        if self.rows:
            self.note.setText(f"{self._count} {sentence}".strip())

    def set_enabled(self, can_edit: bool) -> None:
        has = bool(self.rows)
        active = self.active_version()
        parent = next((r.parent for r in self.rows if r.active), "—")
        sel = self.selected_version()
        self.activate_button.setEnabled(can_edit and sel is not None and sel != active)
        self.show_button.setEnabled(can_edit and sel is not None)
        self.rollback_button.setEnabled(can_edit and has and parent not in ("—", ""))
        self.export_button.setEnabled(sel is not None)
        self.import_button.setEnabled(can_edit)
        self._can_edit = can_edit

    def set_shown(self, version: str | None) -> None:
        """The version whose mask the slide shows when it is not the active one (None: the active)."""
        if version != self._shown:
            self._shown = version
            self.set_rows(self.rows, self._project, self._can_edit)

    def active_version(self) -> str | None:
        return next((r.version for r in self.rows if r.active), None)

    def selected_version(self) -> str | None:
        r = self.table.currentRow()
        return self.rows[r].version if 0 <= r < len(self.rows) else None

    def select_version(self, version: str) -> bool:
        for i, row in enumerate(self.rows):
            if row.version == version:
                self.table.selectRow(i)
                return True
        return False

    def show_card(self, text: str) -> None:
        self.card.setPlainText(text)

    def _selection(self) -> None:
        v = self.selected_version()
        self.set_enabled(self._can_edit)
        if v is not None:
            self.selected.emit(v)

    def _activate_row(self, row: int) -> None:
        if 0 <= row < len(self.rows) and self._can_edit and not self.rows[row].active:
            self.activate_requested.emit(self.rows[row].version)

    def _show(self) -> None:
        v = self.selected_version()
        if v is not None and self._can_edit:
            self.show_requested.emit(v)

    def _export(self) -> None:
        v = self.selected_version()
        if v is not None:
            self.export_requested.emit(v)

    def cell(self, row: int, col: int) -> str:
        item = self.table.item(row, col)
        return item.text() if item is not None else ""


def ask_worse(parent: QWidget, version: str, old: str | None, comps: Sequence[Comparison]) -> bool:
    """Ask before ``version``, worse than ``old`` (both figures in ``comps``), becomes active; the
    default answer keeps the old one. True: use ``version`` anyway."""
    worse = any(c.worse for c in comps if c.part != "elsewhere")
    box = QMessageBox(QMessageBox.Icon.Warning, "A worse version" if worse else "A version to look at first",
                      worse_question(version, old, comps), parent=parent)
    box.setObjectName("worse-version")
    keep = box.addButton(f"Keep {old or 'the old version'}", QMessageBox.ButtonRole.RejectRole)
    use = box.addButton(f"Use {version} anyway", QMessageBox.ButtonRole.AcceptRole)
    box.setDefaultButton(keep)
    box.setEscapeButton(keep)
    box.exec()
    return box.clickedButton() is use

"""The slide info panel: a summary, every property, and the label / macro / thumbnail images."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PySide6.QtCore import Qt
from PySide6.QtGui import QImage, QPixmap
from PySide6.QtWidgets import (QFormLayout, QHeaderView, QLabel, QLineEdit, QScrollArea,
                               QTableWidget, QTableWidgetItem, QTabWidget, QVBoxLayout, QWidget)

from engine.api import CocoPathError

log = logging.getLogger(__name__)


def rgb_to_qimage(rgb: np.ndarray) -> QImage:
    """An (h, w, 3) uint8 RGB array as a QImage owning its pixels."""
    rgb = np.ascontiguousarray(rgb)
    h, w, _ = rgb.shape
    return QImage(rgb.data, w, h, 3 * w, QImage.Format.Format_RGB888).copy()


class SlideInfoPanel(QWidget):
    """Facts about the open slide; empty until :meth:`set_slide`."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.tabs = QTabWidget(self)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(2, 2, 2, 2)
        layout.addWidget(self.tabs)

        summary = QWidget()
        self.form = QFormLayout(summary)
        self.tabs.addTab(summary, "Summary")

        props = QWidget()
        pl = QVBoxLayout(props)
        pl.setContentsMargins(0, 0, 0, 0)
        self.filter = QLineEdit(placeholderText="Filter properties…")
        self.filter.textChanged.connect(self._apply_filter)
        self.table = QTableWidget(0, 2)
        self.table.setHorizontalHeaderLabels(["Property", "Value"])
        self.table.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeMode.Interactive)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.setColumnWidth(0, 170)
        self.table.setWordWrap(False)
        self.table.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.table.setTextElideMode(Qt.TextElideMode.ElideRight)  # full values in the tooltips
        self.table.verticalHeader().setDefaultSectionSize(22)
        self.table.verticalHeader().setVisible(False)
        self.table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        pl.addWidget(self.filter)
        pl.addWidget(self.table)
        self.tabs.addTab(props, "Properties")

        self.images_box = QWidget()
        self.images_layout = QVBoxLayout(self.images_box)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setWidget(self.images_box)
        self.tabs.addTab(scroll, "Images")
        self.image_labels: dict[str, QLabel] = {}
        self.clear()

    def clear(self) -> None:
        while self.form.rowCount():
            self.form.removeRow(0)
        self.form.addRow(QLabel("No slide open."))
        self.table.setRowCount(0)
        self._clear_images()

    def _clear_images(self) -> None:
        while self.images_layout.count():
            item = self.images_layout.takeAt(0)
            if item.widget():
                item.widget().deleteLater()
        self.image_labels = {}

    def set_slide(self, source: object) -> None:
        """Fill the panel from an engine SlideSource."""
        info = source.info  # type: ignore[attr-defined]
        while self.form.rowCount():
            self.form.removeRow(0)
        w, h = info.dimensions
        rows = [
            ("File", Path(info.path).name),
            ("Format", info.vendor or "unknown"),
            ("Size", f"{w:,} × {h:,} px"),
            ("Levels", ", ".join(f"{d:g}" for d in info.level_downsamples)),
            ("Pixel size", f"{info.mpp[0]:.4g} × {info.mpp[1]:.4g} µm" if info.mpp
             else "unknown: physical units are hidden"),
            ("Objective", f"{info.objective_power:g}×" if info.objective_power else "unknown"),
        ]
        if info.mpp:
            rows.append(("Physical size", f"{w * info.mpp[0] / 1000:.2f} × {h * info.mpp[1] / 1000:.2f} mm"))
        for k, v in rows:
            label = QLabel(v)
            label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
            label.setWordWrap(True)
            self.form.addRow(k, label)
        items = sorted(info.properties.items())
        self.table.setRowCount(len(items))
        for i, (k, v) in enumerate(items):
            key_item, value_item = QTableWidgetItem(k), QTableWidgetItem(v)
            key_item.setToolTip(k)
            value_item.setToolTip(v if len(v) < 2000 else v[:2000] + "…")
            self.table.setItem(i, 0, key_item)
            self.table.setItem(i, 1, value_item)
        self._apply_filter(self.filter.text())
        self._clear_images()
        for name in info.associated_images:
            try:
                img = rgb_to_qimage(source.associated_image(name))  # type: ignore[attr-defined]
            except CocoPathError as exc:
                log.warning("%s", exc)
                self.images_layout.addWidget(QLabel(f"<b>{name}</b>: cannot be read"))
                continue
            except Exception as exc:  # noqa: BLE001 - e.g. OpenSlide's error state after a bad tile
                log.warning("%s: the %s image cannot be read (%s)", info.path, name, exc)
                self.images_layout.addWidget(QLabel(f"<b>{name}</b>: cannot be read"))
                continue
            title = QLabel(f"<b>{name}</b> ({img.width()} × {img.height()})")
            pic = QLabel()
            pic.setPixmap(QPixmap.fromImage(img).scaled(240, 240, Qt.AspectRatioMode.KeepAspectRatio,
                                                        Qt.TransformationMode.SmoothTransformation))
            pic.setToolTip(name)
            self.images_layout.addWidget(title)
            self.images_layout.addWidget(pic)
            self.image_labels[name] = pic
        if not info.associated_images:
            self.images_layout.addWidget(QLabel("This slide has no label, macro or thumbnail image."))
        self.images_layout.addStretch(1)

    def _apply_filter(self, text: str) -> None:
        text = text.lower()
        for i in range(self.table.rowCount()):
            k, v = self.table.item(i, 0), self.table.item(i, 1)
            show = not text or text in k.text().lower() or text in v.text().lower()
            self.table.setRowHidden(i, not show)

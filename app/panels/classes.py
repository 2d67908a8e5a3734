"""The class palette: the project's classes with their colours and number keys, the fill opacity
and the brush size. Choosing a class (click or its key) makes it the class new outlines get, and
reclasses the selection if there is one."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtGui import QColor, QIcon, QPixmap
from PySide6.QtWidgets import (QDoubleSpinBox, QFormLayout, QInputDialog, QListWidget,
                               QListWidgetItem, QPushButton, QSlider, QVBoxLayout, QWidget)

from app.viewer.annotator import Annotator
from engine.api import AnnotationClass, CocoPathError

#: Colours given to classes added from the palette, in turn.
NEW_CLASS_COLORS = ((230, 160, 20), (20, 180, 180), (200, 60, 150), (120, 120, 40), (90, 90, 220))


def swatch(rgb: tuple[int, int, int], size: int = 14) -> QIcon:
    pix = QPixmap(size, size)
    pix.fill(QColor(*rgb))
    return QIcon(pix)


class ClassPalette(QWidget):
    """Dock contents: class list, opacity, brush size, and "Add class…"."""

    def __init__(self, annotator: Annotator, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.annotator = annotator
        self.list = QListWidget()
        self.list.itemClicked.connect(self._clicked)
        self.add_button = QPushButton("Add class…")
        self.add_button.clicked.connect(self.add_class_dialog)
        self.opacity = QSlider(Qt.Orientation.Horizontal)
        self.opacity.setRange(0, 100)
        self.opacity.setValue(round(annotator.overlay.opacity * 100))
        self.opacity.valueChanged.connect(self._opacity)
        self.brush = QDoubleSpinBox()
        self.brush.setRange(1.0, 5000.0)
        self.brush.setDecimals(0)
        self.brush.setSuffix(" µm")
        self.brush.setValue(annotator.brush_um)
        self.brush.valueChanged.connect(annotator.set_brush_um)
        annotator.brush_changed.connect(self._brush_changed)
        form = QFormLayout()
        form.addRow("Fill opacity", self.opacity)
        form.addRow("Brush size", self.brush)
        layout = QVBoxLayout(self)
        layout.addWidget(self.list)
        layout.addWidget(self.add_button)
        layout.addLayout(form)
        annotator.classes_changed.connect(self.refresh)
        annotator.class_changed.connect(self._current_changed)
        self.refresh()

    def refresh(self) -> None:
        self.list.clear()
        for cls in self.annotator.classes:
            key = f"{cls.shortcut}  " if cls.shortcut else "    "
            item = QListWidgetItem(swatch(cls.color), f"{key}{cls.name}")
            item.setData(Qt.ItemDataRole.UserRole, cls.name)
            item.setToolTip(f"{cls.name}" + (f" (key {cls.shortcut})" if cls.shortcut else ""))
            self.list.addItem(item)
        self._current_changed(self.annotator.current_class or "")
        self.add_button.setEnabled(self.annotator.store is not None)
        geo = self.annotator.view.geometry_  # type: ignore[attr-defined]
        # without a pixel size the brush is measured in level-0 pixels
        self.brush.setSuffix(" px" if geo is not None and not geo.mpp else " µm")

    def _clicked(self, item: QListWidgetItem) -> None:
        self.annotator.choose_class(item.data(Qt.ItemDataRole.UserRole))

    def _current_changed(self, name: str) -> None:
        for i in range(self.list.count()):
            item = self.list.item(i)
            if item.data(Qt.ItemDataRole.UserRole) == name:
                self.list.setCurrentItem(item)
                return
        self.list.clearSelection()

    def _opacity(self, value: int) -> None:
        self.annotator.overlay.opacity = value / 100
        self.annotator.update()

    def _brush_changed(self, um: float) -> None:
        if abs(self.brush.value() - um) > 0.5:
            self.brush.setValue(um)

    def add_class_dialog(self) -> None:
        name, ok = QInputDialog.getText(self, "Add class", "Name of the new class:")
        if ok and name.strip():
            self.add_class(name.strip())

    def add_class(self, name: str) -> None:
        """Add a class with the next free colour and number key (1–9)."""
        store = self.annotator.store
        if store is None:
            return
        classes = self.annotator.classes
        taken = {c.shortcut for c in classes}
        key = next((str(d) for d in range(1, 10) if str(d) not in taken), None)
        color = NEW_CLASS_COLORS[len(classes) % len(NEW_CLASS_COLORS)]
        try:
            store.project.set_class(AnnotationClass(name, color, key))
        except CocoPathError as exc:
            self.annotator.message.emit(str(exc))
            return
        self.annotator.reload_classes()
        self.annotator.set_class(name)

"""Undo/redo from the Edit menu's keys, across a restart, and the class keys of the palette."""

from __future__ import annotations

import pytest
from PySide6.QtCore import Qt
from PySide6.QtTest import QTest

from qt_probe import click, drag, wait_drawn
from engine.api import Project

CTRL = Qt.KeyboardModifier.ControlModifier
SHIFT = Qt.KeyboardModifier.ShiftModifier


def focus(qtbot, window) -> None:
    window.activateWindow()
    window.view.setFocus()
    qtbot.waitUntil(lambda: window.view.hasFocus(), timeout=3000)


def test_ctrl_z_undoes_and_ctrl_shift_z_redoes(qtbot, annotating) -> None:
    view = annotating.view
    an = view.annotator
    an.set_tool("rectangle")
    drag(view, [(1000, 1000), (1100, 1100)])
    drag(view, [(1200, 1000), (1300, 1100)])
    an.set_tool("move")
    drag(view, [(1050, 1050), (1150, 1250)])
    assert an.store.count() == 2
    focus(qtbot, annotating)
    assert annotating.annotations.act_undo.text() == "&Undo move annotation"
    QTest.keyClick(view, Qt.Key.Key_Z, CTRL)
    assert [a.geometry.bounds[0] for a in an.store.annotations()] == pytest.approx([1000, 1200], abs=1)
    assert sorted(a.geometry.bounds for a in an.overlay.annotations_in_window()) == \
        sorted(a.geometry.bounds for a in an.store.annotations())
    QTest.keyClick(view, Qt.Key.Key_Z, CTRL)
    assert an.store.count() == 1
    QTest.keyClick(view, Qt.Key.Key_Z, CTRL | SHIFT)
    assert an.store.count() == 2
    QTest.keyClick(view, Qt.Key.Key_Z, CTRL | SHIFT)
    assert an.store.annotations()[0].geometry.bounds[0] == pytest.approx(1100, abs=1)
    assert not an.document.undo_stack.canRedo()
    # the overlay follows: both boxes are drawn, the moved one where it went
    drawn = {a.uuid: a for a in an.overlay.annotations_in_window()}
    assert drawn == {a.uuid: a for a in an.store.annotations()}


def test_undo_survives_reopening_the_project(qtbot, settings, cache, small_svs) -> None:
    from app.main_window import MainWindow

    w = MainWindow(settings=settings, cache=cache)
    qtbot.addWidget(w)
    w.resize(900, 650)
    w.show()
    assert w.open_path(small_svs)
    wait_drawn(qtbot, w.view)
    an = w.view.annotator
    w.view.center_on(1100, 1100)
    an.set_tool("rectangle")
    drag(w.view, [(1000, 1000), (1100, 1100)])
    an.set_class("Stroma")
    drag(w.view, [(1200, 1000), (1300, 1150)])
    folder = w.annotations.project.folder
    w.close()  # the project is closed with the window

    w2 = MainWindow(settings=settings, cache=cache)
    qtbot.addWidget(w2)
    w2.show()
    assert w2.open_path(small_svs)
    an2 = w2.view.annotator
    assert w2.annotations.project.folder == folder
    assert sorted(a.class_name for a in an2.store.annotations()) == ["Stroma", "Tumour"]
    stack = an2.document.undo_stack
    assert stack.count() == 2 and stack.undoText() == "rectangle (Stroma)"
    w2.annotations.act_undo.trigger()
    assert [a.class_name for a in an2.store.annotations()] == ["Tumour"]
    assert stack.canRedo()
    w2.close()

    # the store's own journal agrees, and undo still works there without the GUI
    with Project.open(folder) as project:
        store = project.store(small_svs)
        assert store.count() == 1 and store.can_redo()
        store.undo()
        assert store.count() == 0

    w3 = MainWindow(settings=settings, cache=cache)
    qtbot.addWidget(w3)
    w3.show()
    assert w3.open_path(small_svs)
    stack3 = w3.view.annotator.document.undo_stack
    assert (stack3.count(), stack3.index()) == (2, 0)  # both undone, both redoable
    w3.annotations.act_redo.trigger()
    w3.annotations.act_redo.trigger()
    assert w3.view.annotator.store.count() == 2
    w3.close()


def test_number_keys_choose_the_class_and_reclass_the_selection(qtbot, annotating) -> None:
    view = annotating.view
    an = view.annotator
    focus(qtbot, annotating)
    QTest.keyClick(view, Qt.Key.Key_2)
    assert an.current_class == "Stroma"
    palette = annotating.annotations.palette
    assert palette.list.currentItem().text().endswith("Stroma")
    an.set_tool("rectangle")
    drag(view, [(1000, 1000), (1100, 1100)])
    assert an.store.annotations()[0].class_name == "Stroma"
    QTest.keyClick(view, Qt.Key.Key_S)  # the select tool
    assert an.tool.name == "select"
    click(view, 1050, 1050)
    QTest.keyClick(view, Qt.Key.Key_3)
    assert an.current_class == "Necrosis"
    assert an.store.annotations()[0].class_name == "Necrosis"
    QTest.keyClick(view, Qt.Key.Key_Z, CTRL)
    assert an.store.annotations()[0].class_name == "Stroma"
    # magnification presets moved to Alt+1…6 so the digits are free for classes
    QTest.keyClick(view, Qt.Key.Key_3, Qt.KeyboardModifier.AltModifier)
    assert view.viewport.magnification(view.geometry_) == pytest.approx(5.0)


def test_added_class_gets_the_next_number_key(qtbot, annotating) -> None:
    palette = annotating.annotations.palette
    palette.add_class("Lymphocytes")
    an = annotating.view.annotator
    assert an.classes[-1].name == "Lymphocytes" and an.classes[-1].shortcut == "5"
    assert an.current_class == "Lymphocytes"
    focus(qtbot, annotating)
    QTest.keyClick(annotating.view, Qt.Key.Key_1)
    assert an.current_class == "Tumour"
    QTest.keyClick(annotating.view, Qt.Key.Key_5)
    assert an.current_class == "Lymphocytes"

"""The installed PySide6 keeps reference counts straight (6.12.0 does not: pyproject excludes it).

PySide6 6.12.0 drops a reference to ``None`` on every void call and to ``True`` on every
``Signal.emit()``; on Python 3.11, where those objects are not immortal, the viewer aborts with
"none_dealloc" after a few seconds of painting. This test fails if such a release is installed.
"""

from __future__ import annotations

import sys

from PySide6.QtCore import QObject, Signal
from PySide6.QtWidgets import QWidget


class _Emitter(QObject):
    fired = Signal(int)


def test_void_calls_and_signals_keep_none_and_true_alive(qtbot) -> None:
    w, e = QWidget(), _Emitter()
    qtbot.addWidget(w)
    none_before, true_before = sys.getrefcount(None), sys.getrefcount(True)
    for i in range(2000):
        w.update()
        e.fired.emit(i)
    # a leaking binding loses 2000 of each; ordinary churn moves the counts by a few at most
    assert abs(sys.getrefcount(None) - none_before) < 100
    assert abs(sys.getrefcount(True) - true_before) < 100


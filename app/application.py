"""The Qt application object and waiting for the view: shared by the command line (``app.__main__``)
and the benchmarks (``app.bench``), so neither imports the other."""

from __future__ import annotations

import sys
import time


def make_application() -> object:
    """The one QApplication (created if there is none yet), named CoCoPath."""
    from PySide6.QtWidgets import QApplication

    app = QApplication.instance() or QApplication(sys.argv[:1])
    app.setOrganizationName("CoCoPath")
    app.setApplicationName("CoCoPath")
    app.setApplicationDisplayName("CoCoPath")
    if getattr(app, "_cocopath_gc", None) is None:
        # Python's cycle collector runs in whichever thread allocates; in an inference or trial
        # thread it would destroy unreachable widgets there (a deadlock or a crash): automatic
        # collection off, collected from a timer in the GUI thread instead
        from pyqtgraph.util.garbage_collector import GarbageCollector

        app._cocopath_gc = GarbageCollector(interval=1.0)  # type: ignore[attr-defined]
    return app


def wait_until_drawn(window: object, timeout: float) -> bool:
    """Run the event loop until the view has drawn every visible tile at its final level."""
    from PySide6.QtCore import QCoreApplication, QEventLoop

    view = window.view  # type: ignore[attr-defined]
    deadline = time.monotonic() + timeout
    stable = 0
    last = None
    while time.monotonic() < deadline:
        QCoreApplication.processEvents(QEventLoop.ProcessEventsFlag.AllEvents, 20)
        state = (view.request_id, view.is_settled())
        stable = stable + 1 if state == last and state[1] else 0
        last = state
        if stable >= 3:
            return True
        time.sleep(0.005)
    return False

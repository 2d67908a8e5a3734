"""What the benchmarks share: percentiles and summaries of timings, waiting for the view, the
event-loop pump, a temporary user data folder, an untrained student, writing the JSON result.

Public on purpose: the benchmark modules import these and nothing private of one another.
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

log = logging.getLogger(__name__)

__all__ = ["frame_times", "in_temp_data_dir", "pct", "pump", "summary", "untrained_student",
           "wait_complete", "wait_idle", "write_result"]


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    k = (len(s) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def summary(ms: list[float]) -> dict[str, float]:
    return {"n": len(ms), "p50_ms": round(pct(ms, 50), 2), "p95_ms": round(pct(ms, 95), 2),
            "max_ms": round(max(ms), 2) if ms else float("nan"), "mean_ms": round(statistics.fmean(ms), 2)}


def pump(app: Any, seconds: float) -> None:
    """Process events for ``seconds`` (the benchmarks' waits)."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        app.processEvents()
        time.sleep(0.005)


def untrained_student(folder: Path) -> Path:
    """An untrained ``mobile-unet-small`` (2 classes, 1 µm/px, 256² input) saved in ``folder``:
    timings only, its predictions mean nothing."""
    from engine.api import create_model, save_model

    model = create_model("mobile-unet-small", classes=2)
    return save_model(folder / "student.safetensors", model,
                      {"model": model.config, "classes": ["background", "tumour"],
                       "input": {"mpp": 1.0, "tile": 256}})


def in_temp_data_dir(prefix: str, measure: Callable[[Path], dict[str, Any]]) -> dict[str, Any]:
    """``measure(tmp)`` in a temporary folder (removed at the end) that holds the user data folder
    too (``COCOPATH_DATA_DIR``, restored afterwards)."""
    before = os.environ.get("COCOPATH_DATA_DIR")
    try:
        with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
            os.environ["COCOPATH_DATA_DIR"] = str(Path(tmp) / "data")
            return measure(Path(tmp))
    finally:
        if before is None:
            os.environ.pop("COCOPATH_DATA_DIR", None)
        else:
            os.environ["COCOPATH_DATA_DIR"] = before


def write_result(out: Path, result: dict[str, Any]) -> None:
    """Write ``result`` to ``out`` as JSON and print it."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2), flush=True)


def wait_complete(app: object, view: object, timeout: float = 30.0) -> bool:
    from PySide6.QtCore import QEventLoop, QTimer

    deadline = time.perf_counter() + timeout
    tick = QTimer()
    tick.start(5)  # wakes the wait below even if no tile arrives
    try:
        while not view.is_complete():  # type: ignore[attr-defined]
            app.processEvents(QEventLoop.ProcessEventsFlag.AllEvents  # type: ignore[attr-defined]
                              | QEventLoop.ProcessEventsFlag.WaitForMoreEvents)
            if time.perf_counter() > deadline:
                return False
    finally:
        tick.stop()
    return True


def wait_idle(view: object, timeout: float = 10.0) -> None:
    """Let prefetch (and idle-time tile scaling) finish, as when a user pauses between moves."""
    from PySide6.QtCore import QCoreApplication

    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        QCoreApplication.processEvents()
        if not view.loader.pending() and not view.prefetch_waiting:  # type: ignore[attr-defined]
            break
        time.sleep(0.002)
    QCoreApplication.processEvents()


def frame_times(app: object, view: object, start: object, steps: int, dx: float,
                 fast: bool) -> list[float]:
    """ms per frame (viewport change + synchronous repaint) panning over already-cached tiles."""
    vp = start
    path = []
    for _ in range(steps):
        vp = vp.panned(-dx, -dx / 3)
        path.append(vp)
    for vp in path:  # first pass loads the tiles of the whole path
        view.set_viewport(vp)  # type: ignore[attr-defined]
        wait_complete(app, view)
    view.set_viewport(start)  # type: ignore[attr-defined]
    wait_complete(app, view)
    wait_idle(view)
    view.fast_paint = fast  # type: ignore[attr-defined]
    out = []
    for vp in path:
        t0 = time.perf_counter()
        view.set_viewport(vp)  # type: ignore[attr-defined]
        view.repaint()  # type: ignore[attr-defined]
        out.append((time.perf_counter() - t0) * 1000)
        app.processEvents()  # type: ignore[attr-defined]  # between input events timers run
        if not view.is_complete():  # type: ignore[attr-defined]
            log.warning("a frame of the cached pan was not complete")
    view.fast_paint = False  # type: ignore[attr-defined]
    return out

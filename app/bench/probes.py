"""Probes for the viewer benchmark: resident memory, start-up in a subprocess, an empty paint, and a
random-access storm through a small tile cache."""

from __future__ import annotations

import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from app.state.threads import Task

VIEW_W, VIEW_H = 1920, 1080
STARTUP_TARGET_S = 2.0


class PeakRss:
    """Samples this process's resident memory every 10 ms in a thread; ``peak`` in bytes."""

    def __init__(self) -> None:
        import psutil

        self._proc = psutil.Process()
        self.peak = self._proc.memory_info().rss
        self._stop = threading.Event()
        self._t = Task(self._run, name="bench-peak-rss").start()

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, self._proc.memory_info().rss)

    def now(self) -> int:
        return self._proc.memory_info().rss

    def stop(self) -> int:
        self._stop.set()
        self._t.wait()
        return self.peak


def empty_paint_ms(app: object, n: int = 60) -> list[float]:
    from PySide6.QtWidgets import QWidget

    w = QWidget()
    w.resize(VIEW_W, VIEW_H)
    w.show()
    app.processEvents()  # type: ignore[attr-defined]
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        w.repaint()
        out.append((time.perf_counter() - t0) * 1000)
    w.close()
    return out


def startup(path: Path, runs: int = 3) -> dict[str, object]:
    """Start ``cocopath SLIDE`` in a subprocess until its first slide frame; bare interpreter baseline.
    The app runs with its settings and user data (recent files, the default project) in a
    temporary folder: a benchmark never touches the user's."""
    with tempfile.TemporaryDirectory(prefix="cocopath-bench-startup-") as tmp:
        env = dict(os.environ, QT_QPA_PLATFORM=os.environ.get("QT_QPA_PLATFORM", "offscreen"),
                   XDG_CONFIG_HOME=str(Path(tmp) / "config"), COCOPATH_DATA_DIR=str(Path(tmp) / "data"))
        return _startup(path, runs, env)


def _startup(path: Path, runs: int, env: dict[str, str]) -> dict[str, object]:
    walls, firsts, completes, torch_seen = [], [], [], False
    for _ in range(runs):
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "app", str(path), "--first-frame-probe"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        assert proc.stdout is not None
        first = proc.stdout.readline()
        walls.append(time.perf_counter() - t0)
        second = proc.stdout.readline()
        _, err = proc.communicate(timeout=120)
        if proc.returncode != 0 or "first_frame_s=" not in first:
            raise RuntimeError(f"start-up probe failed: {err.strip()[-300:]}")
        fields = dict(kv.split("=") for kv in (first + " " + second).split() if "=" in kv)
        firsts.append(float(fields["first_frame_s"]))
        completes.append(float(fields["complete_s"]))
        torch_seen |= fields.get("torch") == "True"
    bare = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], env=env, check=True)
        bare.append(time.perf_counter() - t0)
    qt = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "from PySide6.QtWidgets import QApplication; "
                        "a = QApplication([]); from PySide6.QtWidgets import QMainWindow; "
                        "w = QMainWindow(); w.show(); a.processEvents()"], env=env, check=True)
        qt.append(time.perf_counter() - t0)
    wall = statistics.median(walls)
    return {
        "process_to_first_frame_s": round(wall, 3),
        "in_process_first_frame_s": round(statistics.median(firsts), 3),
        "in_process_all_tiles_final_s": round(statistics.median(completes), 3),
        "baseline_bare_python_s": round(statistics.median(bare), 3),
        "baseline_empty_qt_window_s": round(statistics.median(qt), 3),
        "ratio_vs_empty_qt_window": round(wall / statistics.median(qt), 2),
        "torch_imported": torch_seen,
        "target_s": STARTUP_TARGET_S,
        "meets_target": wall <= STARTUP_TARGET_S,
    }


def memory_storm(app: object, path: Path, budget: int, jumps: int = 60) -> dict[str, float]:
    """Random jumps at 20× and 40× through a view whose tile cache holds only ``budget`` bytes.

    Returns the resident memory before and at its peak (MB), and the cache's final fill.
    """
    from app.panels.slide_info import rgb_to_qimage
    from app.state.viewport import Viewport
    from app.viewer.slide_view import SlideView
    from engine.api import ByteBoundedCache
    from engine.api import open_slide

    from app.bench.common import wait_complete, wait_idle

    rnd = random.Random(11)
    cache: ByteBoundedCache = ByteBoundedCache(budget)
    view = SlideView(cache)
    view.resize(VIEW_W, VIEW_H)
    view.show()
    source = open_slide(path)
    w, h = source.info.dimensions
    view.set_source(source, rgb_to_qimage(source.thumbnail(512)))
    wait_complete(app, view)
    rss = PeakRss()
    base = rss.now()
    tiles_read = view.loader.stats.loaded
    for _ in range(jumps):
        ds = rnd.choice((1.0, 1.4, 2.0))
        view.set_viewport(Viewport(w * rnd.uniform(0.2, 0.8), h * rnd.uniform(0.2, 0.8), ds, VIEW_W, VIEW_H))
        wait_complete(app, view)
        wait_idle(view)
    peak = rss.stop()
    mb = 2**20
    result = {"cache_budget_mb": round(budget / mb), "jumps": jumps,
              "tiles_read": view.loader.stats.loaded - tiles_read,
              "cache_used_mb": round(cache.current_bytes / mb, 1),
              "rss_before_mb": round(base / mb), "peak_rss_mb": round(peak / mb)}
    view.loader.shutdown()
    view.close()
    return result

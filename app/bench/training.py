"""``cocopath --bench-training OUT.json``: does the viewer stay smooth while a fine-tuning round
trains in the background?

A synthetic pyramid (real H&E patches, 0.25 µm/px) goes into a new project with eight correction
ROIs (256 µm squares, each holding a tumour outline: the labels are arbitrary, the round's work is
real). The project's registry is seeded with ``--bench-model`` (else the shipped default student,
else an untrained ``mobile-unet-small`` at 1 µm/px: timings only). The window opens the slide in a
1920 × 1080 view at 10× and pans back and forth over cached tiles, each frame = viewport change +
synchronous repaint + the event processing that follows it (where the round's output lines are
read and its curves redrawn), paced at 60 frames a second:

* baseline: with no round;
* during a round: started from the Training dock's Fine-tune button (the same subprocess the user
  gets), from its first training step (its first loss terms) on, in ``BLOCKS`` blocks of
  ``BLOCK_S`` seconds, each followed by a block with the round paused (SIGSTOP / SIGCONT): a paired
  baseline under the same machine load (a shared machine's load drifts over minutes).

Then the round is cancelled from the dock, timed until its process has exited, and the registry is
checked unchanged (the round's own duration is ``cocopath-engine bench finetune``'s business).
Reported: p50 / p95 / max frame time of both, their ratio, the 33 ms target (two frames of 60 Hz),
the round's stages and events seen while measuring, and the machine's load.
"""

from __future__ import annotations

import logging
import os
import platform
import signal
import sys
import time
from pathlib import Path
from typing import Any

from app.bench.common import (in_temp_data_dir, pump, summary, untrained_student, wait_complete,
                       wait_idle, write_result)

log = logging.getLogger(__name__)

VIEW_W, VIEW_H = 1920, 1080
TARGET_P95_MS = 33.0
FRAME_S = 1 / 60
BASELINE_S = 10.0
BLOCKS, BLOCK_S = 5, 5.0  # frames while the round trains, in blocks alternating with it paused
ROUND_BUDGET_S = 600  # long enough to train through the measurement (the round is cancelled after)
TRAIN_WAIT_S = 900.0  # a loaded 2-core machine needs minutes to reach the first training step
ROI_UM = 256.0


def make_project(folder: Path, slide: Path, side: int, mpp: float, model: Path) -> dict[str, Any]:
    """A project on ``slide`` with eight correction ROIs (each with a tumour outline) and ``model``
    as its registry's active version."""
    from shapely.geometry import Point, box

    from app.state.session import create_project
    from engine.api import Annotation, ModelRegistry

    roi = round(ROI_UM / mpp)
    project = create_project(folder)
    try:
        store = project.store(project.add_slide(slide))
        items = []
        for i in range(8):
            x = round(side * (0.15 + 0.1 * i))
            y = round(side * (0.2 + 0.07 * (i % 4)))
            items.append(Annotation(box(x, y, x + roi, y + roi), kind="roi"))
            blob = Point(x + roi * 0.45, y + roi * 0.55).buffer(roi * 0.3)
            items.append(Annotation(blob, class_name="Tumour"))
        store.add(items, label="benchmark corrections")
    finally:
        project.close()
    registry = ModelRegistry.of_project(folder)
    registry.import_model(model, note="benchmark start")
    return {"rois": 8, "roi_px": roi, "versions_before": [v.version for v in registry.versions()]}


def _pan_path(start: Any, steps: int = 40, dx: float = 30.0) -> list[Any]:
    path, vp = [], start
    for _ in range(steps):
        vp = vp.panned(-dx, -dx / 3)
        path.append(vp)
    return path + path[::-1]  # there and back: always over cached tiles


def _pan_frames(app: Any, view: Any, path: list[Any], seconds: float,
                keep_going: Any = lambda: True) -> tuple[list[float], list[float]]:
    """Frame times (ms) and repaint-only times (ms) panning along ``path`` for ``seconds``."""
    frames, paints = [], []
    end = time.perf_counter() + seconds
    i = 0
    view.fast_paint = True  # as while the user drags (the view's own interaction mode)
    while time.perf_counter() < end and keep_going():
        t0 = time.perf_counter()
        view.set_viewport(path[i % len(path)])
        view.repaint()
        t1 = time.perf_counter()
        app.processEvents()  # timers, the round's output, curve redraws: part of the frame
        t2 = time.perf_counter()
        frames.append((t2 - t0) * 1000)
        paints.append((t1 - t0) * 1000)
        i += 1
        rest = FRAME_S - (time.perf_counter() - t0)
        if rest > 0:
            time.sleep(rest)
    view.fast_paint = False
    return frames, paints


def run_training_benchmark(out: Path, side: int = 12_000, model: Path | None = None) -> int:
    """Build the slide and project, measure, write ``out`` (JSON); 0 on success. Everything goes
    to a temporary folder (user data too), removed at the end."""
    from app.application import make_application

    app = make_application()
    load_avg = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    figures = in_temp_data_dir("cocopath-bench-train-", lambda tmp: _measure(app, tmp, side, model))
    result = {"machine": {"cpus": os.cpu_count(), "load_average_at_start": load_avg,
                          "load_average_at_end": os.getloadavg()[0] if hasattr(os, "getloadavg")
                          else None,
                          "platform": platform.platform(), "python": platform.python_version(),
                          "qpa": os.environ.get("QT_QPA_PLATFORM", "default"),
                          "gui_niceness": os.getpriority(os.PRIO_PROCESS, 0)
                          if hasattr(os, "getpriority") else None},
              **figures}
    write_result(out, result)
    r = figures.get("round", {})
    ok = bool(r.get("events_while_measured") and r.get("stages_seen")
              and figures.get("pan_frame_during_round") and r.get("registry_unchanged_by_cancel"))
    if not ok:
        print("cocopath: error: the round did not train while the frames were measured, or its "
              "cancel changed the registry (see the JSON)", file=sys.stderr)
    return 0 if ok else 1


def _measure(app: Any, tmp: Path, side: int, model: Path | None) -> dict[str, Any]:
    from app.main_window import MainWindow
    from app.state.viewport import Viewport
    from engine.api import build_pyramid_tiff, default_model_path

    mpp = 0.25
    slide = build_pyramid_tiff(tmp / "slide.tif", side, side, seed=5, mpp=mpp)
    start_model = model or default_model_path() or untrained_student(tmp)
    setup = make_project(tmp / "project", slide, side, mpp, start_model)
    window = MainWindow(interactive_errors=False, remember=False)
    window.show()
    window.resize(VIEW_W + 420, VIEW_H + 160)
    app.processEvents()
    view, ta = window.view, window.training
    assert window.open_path(slide), window.last_error
    assert window.annotations.open_project(tmp / "project"), window.last_error
    pump(app, 0.2)
    ta.become_ready()
    ta.versions.sync_project()
    assert ta.versions.registry is not None and ta.versions.active() is not None, "the registry was not opened"
    for _ in range(3):  # the docks take their share: size the window so the view is VIEW_W × VIEW_H
        window.resize(window.width() + VIEW_W - view.width(), window.height() + VIEW_H - view.height())
        pump(app, 0.1)
    base = view.geometry_.base_magnification or 40.0
    start = Viewport(side / 2, side / 2, base / 10, view.width(), view.height())
    path = _pan_path(start)
    for vp in path:  # load the path's tiles once: every measured frame pans over cached tiles
        view.set_viewport(vp)
        wait_complete(app, view)
    view.set_viewport(start)
    wait_complete(app, view)
    wait_idle(view)

    view_size = (view.width(), view.height())
    baseline, baseline_paint = _pan_frames(app, view, path, BASELINE_S)

    panel = ta.rounds.panel
    panel.budget.setValue(ROUND_BUDGET_S)
    events: list[str] = []
    ta.rounds.process.event.connect(lambda ev: events.append(ev.kind))
    t0 = time.perf_counter()
    assert ta.rounds.finetune(), panel.error.text() or window.last_error
    # measure once the round trains (its first loss terms), not while it starts up
    while ta.rounds.process.running and not panel.curves.stages and time.perf_counter() - t0 < TRAIN_WAIT_S:
        pump(app, 0.05)
    training_after_s = time.perf_counter() - t0
    # blocks of frames with the round training, interleaved with blocks where it is paused
    # (SIGSTOP): a paired baseline under the same machine load, minutes after the first one
    during, during_paint, paused = [], [], []
    pid = ta.rounds.process.pid
    for _ in range(BLOCKS):
        f, p = _pan_frames(app, view, path, BLOCK_S, lambda: ta.rounds.process.running)
        during += f
        during_paint += p
        if not ta.rounds.process.running or pid is None:
            break
        os.kill(pid, signal.SIGSTOP)
        try:
            paused += _pan_frames(app, view, path, BLOCK_S)[0]
        finally:
            os.kill(pid, signal.SIGCONT)
    stages = list(panel.curves.stages)
    measured_events = len(events)
    running = ta.rounds.process.running
    t_cancel = time.perf_counter()
    ta.rounds.cancel()  # the round's own time is cocopath-engine bench finetune's business
    while ta.rounds.process.running and time.perf_counter() - t_cancel < 60:
        pump(app, 0.05)
    cancel_s = time.perf_counter() - t_cancel
    pump(app, 0.3)
    end = ta.rounds.last_end
    versions_after = [v.version for v in ta.versions.registry.versions()]
    window.close()
    b95 = summary(baseline)["p95_ms"]
    d95 = summary(during)["p95_ms"] if during else None
    return {
        "slide": {"side": side, "mpp": mpp},
        "project": setup,
        "view": [view_size[0], view_size[1]], "magnification": 10,
        "frame": "viewport change + synchronous repaint (fast mode, as while dragging) + the "
                 "event processing after it, paced at 60 Hz, panning over cached tiles",
        "pan_frame_baseline": summary(baseline),
        "pan_frame_during_round": summary(during) if during else None,
        "repaint_only_baseline": summary(baseline_paint),
        "repaint_only_during_round": summary(during_paint) if during_paint else None,
        "pan_frame_round_paused": summary(paused) if paused else None,
        "p95_ratio_during_vs_baseline": round(d95 / b95, 2) if d95 and b95 else None,
        "p95_ratio_during_vs_paused": round(d95 / summary(paused)["p95_ms"], 2)
        if d95 and paused else None,
        "target_p95_ms": TARGET_P95_MS,
        "meets_target": d95 is not None and d95 <= TARGET_P95_MS,
        "round": {
            "model": str(model) if model else (str(default_model_path()) if default_model_path()
                                              else "untrained mobile-unet-small (timings only)"),
            "budget_s": ROUND_BUDGET_S,
            "training_started_after_s": round(training_after_s, 1),
            "stages_seen": stages,
            "events_while_measured": measured_events,
            "still_running_after_measuring": running,
            "cancel_to_exit_s": round(cancel_s, 2),
            "status": end.status if end is not None else None,
            "registry_unchanged_by_cancel": versions_after == setup["versions_before"],
        },
    }

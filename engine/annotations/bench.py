"""``cocopath-engine bench annotations``: what the store costs the viewer, in milliseconds.

A temporary project gets ``n`` random star-shaped annotations (40 vertices each) on a slide, then:
single edits (each one committed and synced to disk, as the tools do), viewport queries of two
sizes, undo and redo. The GUI's 16 ms frame budget is the yardstick: an edit or a viewport query
that approaches it must leave the GUI thread.
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from shapely.geometry import Polygon

from engine.annotations.model import Annotation
from engine.annotations.project import Project


def _star(rng: np.random.Generator, cx: float, cy: float, r: float, n: int = 40) -> Polygon:
    angles = np.sort(rng.uniform(0, 2 * math.pi, n))
    radii = rng.uniform(0.5, 1.0, n) * r
    return Polygon(np.c_[cx + radii * np.cos(angles), cy + radii * np.sin(angles)])


def _timed(fn: Callable[[], object], repeat: int) -> dict[str, float]:
    ms = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        ms.append((time.perf_counter() - t) * 1000)
    return {"p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95)),
            "max_ms": float(np.max(ms))}


def run_bench(slide: str | Path, n: int = 10_000, edits: int = 200, queries: int = 200,
              seed: int = 0, folder: str | Path | None = None) -> dict[str, object]:
    """Measure the store with ``n`` annotations on ``slide``; returns a JSON-ready dict."""
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        with Project.create(Path(tmp) / "bench", author="bench") as project:
            rec = project.add_slide(slide)
            store = project.store(rec)
            extent = max(rec.width, rec.height, 50_000)
            anns = [Annotation(_star(rng, *rng.uniform(0, extent, 2), rng.uniform(20, 300)), "t")
                    for _ in range(n)]
            t = time.perf_counter()
            store.add(anns)
            add_all = time.perf_counter() - t
            uuids = [a.uuid for a in anns]

            def one_edit() -> None:
                x, y = rng.uniform(0, extent, 2)
                store.set_geometry(uuids[int(rng.integers(len(uuids)))], _star(rng, x, y, 100))

            def viewport(size: float) -> Callable[[], object]:
                def q() -> object:
                    x, y = rng.uniform(0, extent - size, 2)
                    return store.query(x, y, x + size, y + size)
                return q

            result: dict[str, object] = {
                "annotations": n, "extent_px": extent,
                "add_all_in_one_step_s": add_all,
                "single_edit": _timed(one_edit, edits),
                "viewport_2000px": _timed(viewport(2000), queries),
                "viewport_10000px": _timed(viewport(10_000), queries),
                "undo": _timed(store.undo, min(edits, 50)),
                "redo": _timed(store.redo, min(edits, 50)),
            }
            t = time.perf_counter()
            result["load_all"] = {"count": len(store.annotations()),
                                  "seconds": time.perf_counter() - t}
    return result

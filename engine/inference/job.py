"""One slide, start to finish: tissue, grid, cache, inference, then mask TIFF, GeoJSON and summary.

:func:`infer_slide` is what the CLI runs per slide (and what the app can run as a job). Outputs in
``out_dir``: ``<stem>.mask.tif``, ``<stem>.geojson``, ``<stem>.json`` (the summary, written last),
and the prediction cache under ``cache/``. A slide whose summary names the same model version and
whose outputs are all there is skipped; otherwise the cache resumes where the last run stopped. A full
disk or read-only folder stops with one line naming the file (:class:`~engine.oserrors.WriteError`);
outputs are written atomically, so nothing is left half-written.
"""

from __future__ import annotations

import json
import logging
import platform
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.atomic import atomic_write
from engine.inference.cache import PredictionCache, slide_key
from engine.inference.export import prediction_polygons, write_mask_tiff, write_prediction_geojson
from engine.inference.geometry import make_grid, run_window
from engine.inference.pipeline import ProgressFn, SlideInference, tissue_tiles
from engine.inference.regions import MIN_AREA_UM2, SIMPLIFY_UM, vector_tolerances
from engine.inference.spec import ModelSpec
from engine.inference.vectorize import measure
from engine.jobs import CancelToken
from engine.oom import free_memory, is_oom
from engine.oserrors import write_error, writing
from engine.slide import open_slide
from engine.slide.tissue import detect_tissue

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InferOptions:
    """How to run: slide level when µm/px is missing, tile margin, batching, vectorising."""

    level: int | None = None
    window: int | None = None  # None: run_window(spec), with margin None: its margin too
    margin: int | None = None
    batch_size: int = 4
    readers: int = 2
    simplify_um: float = SIMPLIFY_UM
    min_area_um2: float = MIN_AREA_UM2


def outputs_for(out_dir: Path, slide: Path) -> dict[str, Path]:
    stem = slide.name.split(".")[0] if slide.is_file() else slide.name
    return {"mask": out_dir / f"{stem}.mask.tif", "geojson": out_dir / f"{stem}.geojson",
            "summary": out_dir / f"{stem}.json"}


def finished(out_dir: Path, slide: Path, version: str) -> dict[str, Any] | None:
    """The summary of an earlier complete run of this model version on ``slide``, else None."""
    paths = outputs_for(out_dir, slide)
    try:
        summary = json.loads(paths["summary"].read_text())
    except (OSError, ValueError):
        return None
    if summary.get("model", {}).get("version") != version or summary.get("status") != "done":
        return None
    return summary if all(p.exists() for p in paths.values()) else None


def infer_slide(slide_path: str | Path, spec: ModelSpec, runner: Any, out_dir: str | Path,
                options: InferOptions = InferOptions(), cancel: CancelToken | None = None,
                progress: ProgressFn | None = None) -> dict[str, Any]:
    """Run ``runner`` (see ``make_runner``) over one slide and write its outputs; returns the summary."""
    t0 = time.perf_counter()
    slide_path, out_dir = Path(slide_path), Path(out_dir)
    done = finished(out_dir, slide_path, spec.version)
    if done is not None:
        log.info("%s: already done with %s, skipped", slide_path, spec.version)
        return {**done, "skipped": True}
    paths = outputs_for(out_dir, slide_path)
    with open_slide(slide_path) as slide:
        info = slide.info
        window, margin = run_window(spec)
        if options.window is not None:
            window = options.window
        if options.margin is not None:
            margin = options.margin
        grid = make_grid(info, spec.mpp, level=options.level, tile=window, margin=margin)
        tissue = detect_tissue(slide)
        cache = open_cache(out_dir / "cache" / slide_key(info.path), grid, spec.version,
                           len(spec.foreground), tissue_tiles(grid, tissue), spec.card())
        job = SlideInference(slide, grid, cache, runner, batch_size=options.batch_size,
                             readers=options.readers, flush_s=None)
        result = job.run(cancel, progress)
    summary: dict[str, Any] = {
        "slide": info.path, "status": result.status, "model": spec.card(),
        "backend": getattr(runner, "name", type(runner).__name__),
        "resolution": {"slide_mpp": list(info.mpp) if info.mpp else None,
                       "prediction_downsample": grid.downsample, "read_level": grid.read_level,
                       "prediction_mpp": info.mpp[0] * grid.downsample if info.mpp else None,
                       "note": grid.note},
        "tiles": {"done": int(result.metrics["tiles_done"]), "tissue": cache.tissue_tiles,
                  "all": int(cache.tissue.size)},
        "windows": {"size": grid.window, "margin": grid.margin, "run": int(result.metrics["windows"]),
                    "network_s": result.metrics["forward_s"], "slide_loop_s": result.metrics["wall_s"]},
        "cache": str(cache.root), "host": platform.node(),
    }
    if result.status != "done":
        summary["peak_rss_mb"] = peak_rss_mb()
        summary["time_s"] = time.perf_counter() - t0
        return summary
    tol, min_area = vector_tolerances(info.mpp, options.simplify_um, options.min_area_um2)
    # the three outputs read the finished cache independently: side by side (tile decompression,
    # deflate and numpy let go of the GIL), the polygons on this thread
    with ThreadPoolExecutor(2, thread_name_prefix="infer-out") as pool:
        mask = pool.submit(write_mask_tiff, cache, paths["mask"], info.mpp)
        areas = pool.submit(measure, cache, tissue, spec.foreground, info.mpp)
        level, polys = prediction_polygons(cache, tol, min_area)
        n = write_prediction_geojson(paths["geojson"], polys, spec, info.mpp)
        mask.result()
        measurements = areas.result()
    summary.update({
        "peak_rss_mb": peak_rss_mb(),  # after every output
        "measurements": measurements.as_dict(),
        "units": "µm" if info.mpp else "slide level-0 pixels (the slide has no µm/px)",
        "polygons": {"count": n, "cache_level": level, "simplify": tol, "min_area": min_area,
                     "per_class": {name: len(p) for name, p in zip(spec.foreground, polys)}},
        "outputs": {k: str(v) for k, v in paths.items()},
        "time_s": time.perf_counter() - t0,
    })
    with writing(paths["summary"]):
        atomic_write(paths["summary"], json.dumps(summary, indent=1, ensure_ascii=False).encode())
    return summary


def peak_rss_mb() -> float | None:
    """This process's peak resident memory so far (MB): VmHWM, which belongs to the program
    itself (``ru_maxrss`` would include the parent's memory at fork on Linux); None elsewhere."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def pick_runner(model: Any, spec: ModelSpec, window: int, *, backend: str = "auto",
                device: str = "auto", batch_size: int = 4, cache_dir: Path | None = None,
                measure: bool = True) -> Any:
    """The runner for ``model`` on windows of ``window`` px: ``make_runner`` with the user cache.

    ``pick_runner(model, spec, window, *, backend="auto", device="auto", batch_size=4,
    cache_dir=None, measure=True) -> Runner``. ``cache_dir=None`` is the user cache
    (:func:`~engine.inference.runner.backend_cache_dir`), shared by the app and every CLI run.
    With ``measure=False`` it never waits on a trial: the choice remembered for this model hash,
    machine, window and batch, else at once an unmeasured runner (ONNX Runtime when its graph
    exports and agrees, else eager torch; see ``provisional_runner``); then call :func:`measure_backend_later`
    off the GUI thread, so the next run gets the measured choice). When measuring the back-ends (a
    batch on the CPU) runs out of memory: eager torch, whose batches the pipeline halves."""
    from engine.inference.runner import TorchRunner, backend_cache_dir, make_runner

    cache_dir = backend_cache_dir() if cache_dir is None else Path(cache_dir)
    try:
        return make_runner(model, spec, window, backend=backend, device=device,
                           batch_size=batch_size, cache_dir=cache_dir, measure=measure)
    except Exception as exc:  # noqa: BLE001 - only out-of-memory is handled, the rest re-raised
        if not is_oom(exc) or device not in ("auto", "cpu") or backend != "auto":
            raise
    free_memory()
    log.warning("out of memory while choosing the inference back-end: eager torch on the CPU is used")
    return TorchRunner(model, spec)


def measure_backend_later(model: Any, spec: ModelSpec, window: int, *, batch_size: int = 4,
                          cache_dir: Path | None = None) -> str | None:
    """Measure and remember the back-end for the next run (blocking: call it from a worker thread
    or process when the machine is idle); returns the chosen name, or the one already remembered
    (nothing is measured twice), or None when measuring failed (out of memory: logged, nothing
    remembered)."""
    from engine.inference.runner import backend_cache_dir, measure_backend, remembered_backend

    cache_dir = backend_cache_dir() if cache_dir is None else Path(cache_dir)
    known = remembered_backend(model, window, batch_size, cache_dir)
    if known is not None:
        return known
    try:
        return measure_backend(model, spec, window, batch_size=batch_size, cache_dir=cache_dir).name
    except Exception as exc:  # noqa: BLE001 - only out-of-memory is tolerated
        if not is_oom(exc):
            raise
        free_memory()
        log.warning("out of memory while measuring the inference back-ends: nothing remembered")
        return None


def open_cache(root: Path, grid: Any, version: str, channels: int, tissue: Any,
               card: dict[str, Any] | None = None) -> PredictionCache:
    """:meth:`PredictionCache.open` for writing; when the disk is full or the folder read-only,
    :class:`~engine.oserrors.WriteError` naming ``root``, and a cache left unreadable by the failed
    attempt (a new one half made: no card, a cut tissue map) is removed, never left half-written."""
    root = Path(root)
    try:
        return PredictionCache.open(root, grid, version, channels, tissue, card)
    except OSError as exc:
        error = write_error(exc, root)
    try:
        PredictionCache(root)  # still readable: its whole tiles are kept (a later run resumes)
    except Exception:  # noqa: BLE001 - any damage: the cache is derived data, made again
        shutil.rmtree(root, ignore_errors=True)
    raise error

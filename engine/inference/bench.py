"""``cocopath-engine bench infer``: whole-slide inference speed, every ratio against a baseline
measured in the same run.

Protocols (``PROTOCOLS``):

- ``quick`` — ``cocopath-engine bench infer --quick --out resources/benchmarks/infer-quick.json``:
  an 8192² pyramid built from real H&E patches (0.25 µm/px, the student at 0.5 µm/px: level 1),
  untrained networks (speed only), a few minutes on 2 CPU cores.
- ``full`` — ``cocopath-engine bench infer --out resources/benchmarks/infer-full.json``: a 50 000²
  pyramid, more timing rounds (about 6 minutes on 2 quiet CPU cores).

Figures: pipeline efficiency (raw forward time of the same windows already in memory ÷ end-to-end
whole-slide time, target ≥ 0.9); student vs teacher windows/s (target ≥ 5×); eager vs
channels_last vs ONNX Runtime ms/window; time to a complete overlay of a visible 1920×1080 field
(one screen pixel per prediction pixel); the same end-to-end run on the real slides.
"""

from __future__ import annotations

import logging
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from engine.inference.cache import PredictionCache
from engine.inference.geometry import make_grid
from engine.inference.pipeline import SlideInference, read_window, tissue_tiles
from engine.inference.spec import ModelSpec
from engine.jobs import CancelToken
from engine.slide import open_slide
from engine.slide.tissue import detect_tissue

log = logging.getLogger(__name__)

PROTOCOLS: dict[str, dict[str, Any]] = {
    "quick": {"size": 8192, "student": "mobile-unet", "teacher": "unet-resnet50", "mpp": 0.5,
              "batch": 4, "rounds": 3, "teacher_windows": 4, "raw_windows": 64},
    "full": {"size": 50000, "student": "mobile-unet", "teacher": "unet-resnet50", "mpp": 0.5,
             "batch": 4, "rounds": 5, "teacher_windows": 8, "raw_windows": 256},
}
SCREEN = (1920, 1080)
REAL_SLIDES = (("cmu-1-small-region.svs", None), ("tcga-cr-7395-01a-01-ts1.svs", 1))


def _spec(name: str, mpp: float) -> ModelSpec:
    return ModelSpec(name, f"{name}-bench", ("background", "tumour"), mpp)


def _windows_of(grid, tissue: np.ndarray) -> list[tuple[int, int]]:
    return [(int(c), int(r)) for r, c in zip(*np.nonzero(tissue))]


def _raw_forward(runner, windows: np.ndarray, batch: int) -> float:
    """Seconds to run ``windows`` (already in memory) through ``runner`` in batches."""
    t = time.perf_counter()
    for i in range(0, len(windows), batch):
        runner(windows[i:i + batch])
    return time.perf_counter() - t


def _end_to_end(slide, grid, tissue, runner, batch: int, cache_dir: Path) -> SlideInference:
    cache = PredictionCache.open(cache_dir, grid, "bench", 1, tissue)
    job = SlideInference(slide, grid, cache, runner, batch_size=batch)
    job.run()
    return job


def _efficiency(slide, grid, tissue, runner, p: dict, work: Path) -> dict[str, Any]:
    ids = _windows_of(grid, tissue)
    sample = ids[:: max(1, len(ids) // p["raw_windows"])][:p["raw_windows"]]
    mem = np.stack([read_window(slide, grid, c, r) for c, r in sample])
    _raw_forward(runner, mem[:p["batch"]], p["batch"])  # warm-up
    raw_before = _raw_forward(runner, mem, p["batch"]) / len(mem)
    job = _end_to_end(slide, grid, tissue, runner, p["batch"], work / "e2e")
    raw_after = _raw_forward(runner, mem, p["batch"]) / len(mem)
    per_window = (raw_before + raw_after) / 2  # forward cost of one window, measured around the run
    s = job.stats
    raw_total = per_window * s.windows
    return {"windows": s.windows, "tiles_written": s.tiles_written, "tissue_tiles": int(tissue.sum()),
            "all_tiles": int(tissue.size), "end_to_end_s": s.wall_s,
            "raw_forward_s_same_windows": raw_total, "raw_forward_ms_per_window": 1e3 * per_window,
            "raw_windows_sampled": len(mem), "network_s_inside_run": s.forward_s,
            "reader_wait_s": s.read_wait_s, "pipeline_efficiency": raw_total / s.wall_s,
            "windows_per_s": s.windows / s.wall_s}


def _backends(model, spec: ModelSpec, window: int, batch: int, rounds: int) -> dict[str, float]:
    """ms per window of each back-end on the same in-memory batch, interleaved rounds (min)."""
    from engine.inference.runner import OnnxRunner, TorchRunner

    x = np.random.default_rng(0).integers(0, 256, (batch, window, window, 3), dtype=np.uint8)
    runners = [TorchRunner(model, spec), TorchRunner(model, spec, channels_last=True)]
    try:
        runners.append(OnnxRunner(model, spec, window))
    except Exception as exc:  # onnxruntime missing: report torch only
        log.warning("ONNX Runtime unavailable: %s", exc)
    ref = runners[0](x)
    best = {r.name: float("inf") for r in runners}
    out: dict[str, float] = {}
    for r in runners:
        out[f"{r.name}_max_abs_diff_vs_eager"] = float(np.abs(r(x) - ref).max())
    for _ in range(rounds):
        for r in runners:
            t = time.perf_counter()
            r(x)
            best[r.name] = min(best[r.name], time.perf_counter() - t)
    out.update({f"{k}_ms_per_window": 1e3 * v / batch for k, v in best.items()})
    return out


def _overlay(slide, grid, tissue, runner, batch: int, work: Path) -> dict[str, Any]:
    """Time until every tissue tile under a 1920×1080 screen at the prediction resolution is done."""
    cache = PredictionCache.open(work / "overlay", grid, "bench", 1, tissue)
    job = SlideInference(slide, grid, cache, runner, batch_size=batch)
    w0, h0 = grid.slide_size
    vw, vh = SCREEN[0] * grid.downsample, SCREEN[1] * grid.downsample
    job.set_viewport((w0 - vw) / 2, (h0 - vh) / 2, vw, vh)
    want = {t for t in grid.tiles_in((w0 - vw) / 2, (h0 - vh) / 2, vw, vh) if tissue[t[1], t[0]]}
    left = set(want)
    token = CancelToken()
    t0 = time.perf_counter()
    done_at: list[float] = []

    def on_tile(c: int, r: int) -> None:
        left.discard((c, r))
        if not left and not done_at:
            done_at.append(time.perf_counter() - t0)
            token.cancel()

    job.run(cancel=token, on_tile=on_tile)
    return {"screen": list(SCREEN), "visible_tissue_tiles": len(want),
            "windows_run": job.stats.windows if job.stats else None,
            "time_to_complete_overlay_s": done_at[0] if done_at else None}


def _models(p: dict):
    import torch

    from engine.models import create_model

    torch.manual_seed(0)
    return (create_model(p["student"], classes=2).eval(), create_model(p["teacher"], classes=2).eval())


def run_benchmark(quick: bool = True, workdir: Path | None = None) -> dict[str, Any]:
    """Run the protocol and return the report (JSON-ready)."""
    if workdir is None:
        with tempfile.TemporaryDirectory(prefix="cocopath-infer-bench-") as tmp:
            return run_benchmark(quick, Path(tmp))
    import torch

    from engine.inference.runner import configure_cpu_threads, make_runner
    from engine.shared_data import data_path
    from engine.slide.pyramid import build_pyramid_tiff

    protocol = "quick" if quick else "full"
    p = PROTOCOLS[protocol]
    threads = configure_cpu_threads()
    report: dict[str, Any] = {
        "benchmark": "infer", "protocol": protocol, "settings": p,
        "command": "cocopath-engine bench infer" + (" --quick" if quick else ""),
        "host": {"platform": platform.platform(), "python": platform.python_version(),
                 "torch": torch.__version__, "cpu_threads": threads,
                 "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
        "note": ("untrained networks (speed only); ratios are measured against baselines in this "
                 "same run; minimum over interleaved rounds where rounds are given"),
    }
    student, teacher = _models(p)
    sspec = _spec(p["student"], p["mpp"])
    t = time.perf_counter()
    pyr = build_pyramid_tiff(workdir / "slide.tif", p["size"], p["size"], mpp=0.25)
    report["pyramid"] = {"size": [p["size"], p["size"]], "mpp": 0.25, "build_s": time.perf_counter() - t}
    with open_slide(pyr) as slide:
        grid = make_grid(slide.info, sspec.mpp, tile=sspec.tile)
        t = time.perf_counter()
        tissue = tissue_tiles(grid, detect_tissue(slide))
        report["pyramid"].update({"tissue_s": time.perf_counter() - t, "read_level": grid.read_level,
                                  "grid": list(grid.shape), "tile": grid.tile, "margin": grid.margin})
        t = time.perf_counter()
        runner = make_runner(student, sspec, grid.window, batch_size=p["batch"])
        report["backend_choice"] = {"chosen": runner.name, "choose_s": time.perf_counter() - t}
        report["backends_student"] = _backends(student, sspec, grid.window, p["batch"], p["rounds"])
        report["whole_slide"] = _efficiency(slide, grid, tissue, runner, p, workdir)
        report["overlay"] = _overlay(slide, grid, tissue, runner, p["batch"], workdir)
    tspec = _spec(p["teacher"], p["mpp"])
    n = p["teacher_windows"]
    report["backends_teacher"] = _backends(teacher, tspec, grid.window, min(n, p["batch"]), 2)
    s_best = min(v for k, v in report["backends_student"].items() if k.endswith("_ms_per_window"))
    t_best = min(v for k, v in report["backends_teacher"].items() if k.endswith("_ms_per_window"))
    report["student_vs_teacher"] = {
        "student": p["student"], "teacher": p["teacher"], "window": grid.window,
        "student_windows_per_s": 1e3 / s_best, "teacher_windows_per_s": 1e3 / t_best,
        "speedup": t_best / s_best, "basis": "best back-end of each, same in-memory batch"}
    report["real_slides"] = _real_slides(data_path("slides"), student, sspec, p, workdir)
    return report


def _real_slides(folder: Path, student, spec: ModelSpec, p: dict, work: Path) -> list[dict]:
    from engine.inference.runner import make_runner

    out = []
    for name, level in REAL_SLIDES:
        with open_slide(folder / name) as slide:
            grid = make_grid(slide.info, spec.mpp, level=level, tile=spec.tile)
            tissue = tissue_tiles(grid, detect_tissue(slide))
            runner = make_runner(student, spec, grid.window, backend="auto", batch_size=p["batch"])
            job = _end_to_end(slide, grid, tissue, runner, p["batch"], work / f"real-{name}")
            s = job.stats
            out.append({"slide": name, "level": grid.read_level, "note": grid.note,
                        "prediction_downsample": grid.downsample, "grid": list(grid.shape),
                        "tissue_tiles": int(tissue.sum()), "windows": s.windows,
                        "end_to_end_s": s.wall_s, "network_s": s.forward_s,
                        "network_share_of_wall": s.forward_s / s.wall_s, "backend": runner.name})
    return out

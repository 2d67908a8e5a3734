"""``cocopath-engine bench infer``: whole-slide inference as a user meets it, every ratio against a
baseline measured in the same run.

Protocols (``PROTOCOLS``):

- ``quick`` — ``cocopath-engine bench infer --quick --out resources/benchmarks/infer-quick.json``:
  a 16 384² pyramid of real H&E patches (0.25 µm/px; the shipped student at 1 µm/px reads level 2),
  the two real slides, minutes on 2 CPU cores.
- ``full`` — ``cocopath-engine bench infer --out resources/benchmarks/infer-full.json``: a 40 000²
  pyramid, more timing rounds.
- ``--precision`` — ``cocopath-engine bench infer --precision --out
  resources/benchmarks/infer-precision.json``: reduced precision (:mod:`engine.inference.precision`).

Figures: for each slide, ``cocopath-engine infer`` as its own process, cold (an empty user cache:
back-end trial and ONNX export included) and warm (the choice remembered; ``warm_runs`` times on the
pyramid, each with its own raw forward right after it, the median ratio reported): wall time from process
start to every file written (model load, back-end choice, tissue detection, the slide, mask TIFF,
GeoJSON, summary) and the process's peak RSS, next to the raw forward time of the same number of
windows already in memory, measured in this run with the same back-end (target: forward ÷ end to
end ≥ 0.85); the seam check (:mod:`engine.inference.seams`, target ≤ 1 % of pixels) with the run's
windows and with the former 512/32; eager vs channels_last vs ONNX Runtime ms/window; the time to a
complete overlay of a 1920×1080 field; student vs teacher windows/s.
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
    "quick": {"size": 16384, "teacher": "unet-resnet50", "batch": 2, "rounds": 3,
              "teacher_windows": 2, "raw_windows": 24, "seam_size": 3072, "warm_runs": 1},
    "full": {"size": 40000, "teacher": "unet-resnet50", "batch": 2, "rounds": 5,
             "teacher_windows": 4, "raw_windows": 64, "seam_size": 4096, "warm_runs": 3},
}
#: The largest real slide (no µm/px: run at level 0) and the smallest.
REAL_RUNS = (("tcga-cr-7395-01a-01-ts1.svs", ("--level", "0")), ("cmu-1-small-region.svs", ()))
SCREEN = (1920, 1080)


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


def _shipped_student():
    from engine.inference.spec import load_spec
    from engine.resources import resource_path

    path = resource_path("models", "cocopath-student-tumour.safetensors")
    return path, load_spec(path)


def run_process(slide: Path, model: Path, out: Path, user_dir: Path, *extra: str) -> dict[str, Any]:
    """``cocopath-engine infer`` in its own process: wall time from start to exit (every file
    written), its peak RSS (``wait4``), and its summary."""
    import json
    import os
    import subprocess
    import sys

    env = {**os.environ, "COCOPATH_DATA_DIR": str(user_dir)}
    argv = [sys.executable, "-m", "engine.cli", "infer", str(slide), "--model", str(model),
            "--out", str(out), "--json", *extra]
    with tempfile.TemporaryFile() as so, tempfile.TemporaryFile() as se:
        t = time.perf_counter()
        proc = subprocess.Popen(argv, env=env, stdout=so, stderr=se)
        _, status, rusage = os.wait4(proc.pid, 0)  # this child's own peak RSS
        wall = time.perf_counter() - t
        proc.returncode = os.waitstatus_to_exitcode(status)
        so.seek(0)
        se.seek(0)
        stdout, stderr = so.read(), se.read()
    if proc.returncode != 0:
        raise RuntimeError(f"infer failed ({proc.returncode}): {stderr.decode()[-500:]}")
    summary = json.loads(stdout)[0]
    # the child's own VmHWM at its summary (after every output); wait4's ru_maxrss would include
    # this bench process's memory at fork (Linux keeps it across exec), so it is only an upper bound
    return {"wall_s": wall, "peak_rss_mb": summary.get("peak_rss_mb"),
            "ru_maxrss_mb_upper_bound": rusage.ru_maxrss / 1024, "summary": summary}


def _raw_forward_of(slide_path: Path, summary: dict, model, spec: ModelSpec, user_dir: Path,
                    p: dict, level: int | None) -> dict[str, Any]:
    """Forward-only seconds of the run's windows: a sample of them read into memory, run by the
    same back-end in the run's batches, per-window time × the run's window count."""
    from engine.inference.job import pick_runner

    win = summary["windows"]
    with open_slide(slide_path) as slide:
        grid = make_grid(slide.info, spec.mpp, level=level, tile=win["size"], margin=win["margin"])
        tissue = tissue_tiles(grid, detect_tissue(slide))
        ids = _windows_of(grid, tissue)
        sample = ids[:: max(1, len(ids) // p["raw_windows"])][:p["raw_windows"]]
        mem = np.stack([read_window(slide, grid, c, r) for c, r in sample])
    runner = pick_runner(model, spec, grid.window, batch_size=p["batch"],
                         cache_dir=user_dir / "predictions" / "backends", measure=False)
    _raw_forward(runner, mem[:p["batch"]], p["batch"])  # warm-up
    per = min(_raw_forward(runner, mem, p["batch"]) for _ in range(2)) / len(mem)
    return {"backend": runner.name, "raw_forward_ms_per_window": 1e3 * per,
            "raw_windows_sampled": len(mem), "raw_forward_s_same_windows": per * win["run"]}


def _process_figures(run: dict, raw: dict) -> dict[str, Any]:
    s = run["summary"]
    return {"end_to_end_s": run["wall_s"], "peak_rss_mb": run["peak_rss_mb"],
            "ru_maxrss_mb_upper_bound": run["ru_maxrss_mb_upper_bound"],
            "backend": s["backend"], "windows": s["windows"]["run"],
            "window": s["windows"]["size"], "margin": s["windows"]["margin"],
            "tissue_tiles": s["tiles"]["tissue"], "network_s_inside_run": s["windows"]["network_s"],
            "slide_loop_s": s["windows"]["slide_loop_s"], "summary_time_s": s["time_s"],
            "raw_forward_s_same_windows": raw["raw_forward_s_same_windows"],
            "raw_forward_over_end_to_end": raw["raw_forward_s_same_windows"] / run["wall_s"]}


def _seams(model, spec: ModelSpec, p: dict, work: Path) -> dict[str, Any]:
    from engine.inference.geometry import run_window
    from engine.inference.runner import make_runner
    from engine.inference.seams import seam_check
    from engine.shared_data import data_path
    from engine.slide.pyramid import build_pyramid_tiff, load_patches

    tumour = build_pyramid_tiff(work / "adenocarcinoma.tif", p["seam_size"], p["seam_size"], mpp=0.5,
                                patches=load_patches([data_path("seg", "ebhi-adenocarcinoma", "images")]))
    out: dict[str, Any] = {"limit": 0.01, "slides": []}
    window, margin = run_window(spec)
    runs = [(tumour, None, window, margin), (tumour, None, spec.tile, 32)]
    runs += [(data_path("slides", n), 0 if "tcga" in n else None, window, margin) for n, _ in REAL_RUNS]
    for path, level, w, m in runs:
        runner = make_runner(model, spec, w, backend="onnx")
        with open_slide(path) as slide:
            grid = make_grid(slide.info, spec.mpp, level=level, tile=w, margin=m)
            r = seam_check(slide, grid, runner, detect_tissue(slide), batch_size=p["batch"],
                           workdir=work / f"seams-{path.stem}-{w}")
        out["slides"].append({"slide": path.name, "window": w, "margin": m,
                              "prediction_downsample": grid.downsample, "resampled": grid.resampled,
                              "grid": list(grid.shape), **r})
    return out


def _copy_int8(model, dest: Path) -> bool:
    """Bring the int8 graph and its accuracy verdict from the real user cache (made by ``bench
    infer --precision``, which needs the training data) into the bench's cold cache: the float32
    export and the back-end trial stay cold. Whether there was one to bring."""
    import shutil

    from engine.inference.runner import backend_cache_dir, int8_graph_file, verdict_file

    src = backend_cache_dir()
    files = [int8_graph_file(model, src), verdict_file(model, src)]
    if not all(f.is_file() for f in files):
        return False
    dest.mkdir(parents=True, exist_ok=True)
    for f in files:
        shutil.copy2(f, dest / f.name)
    return True


def run_benchmark(quick: bool = True, workdir: Path | None = None) -> dict[str, Any]:
    """Run the protocol and return the report (JSON-ready)."""
    if workdir is None:
        with tempfile.TemporaryDirectory(prefix="cocopath-infer-bench-") as tmp:
            return run_benchmark(quick, Path(tmp))
    import torch

    from engine.inference.geometry import run_window
    from engine.inference.runner import configure_cpu_threads, cpu_model
    from engine.shared_data import data_path
    from engine.slide.pyramid import build_pyramid_tiff
    from engine.training.checkpoints import load_model

    protocol = "quick" if quick else "full"
    p = PROTOCOLS[protocol]
    threads = configure_cpu_threads()
    model_path, spec = _shipped_student()
    window, margin = run_window(spec)
    report: dict[str, Any] = {
        "benchmark": "infer", "protocol": protocol, "settings": {**p, "window": window, "margin": margin},
        "command": "cocopath-engine bench infer" + (" --quick" if quick else ""),
        "host": {"platform": platform.platform(), "python": platform.python_version(),
                 "torch": torch.__version__, "cpu": cpu_model(), "cpu_threads": threads,
                 "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
        "model": f"{spec.name} {spec.version} ({model_path.name}), {spec.mpp} µm/px",
        "note": ("end_to_end_s is a separate `cocopath-engine infer` process from start to exit; "
                 "raw forward is measured in this same bench run with the back-end that process "
                 "used; timings are on a shared, loaded machine and never test assertions"),
    }
    t = time.perf_counter()
    pyr = build_pyramid_tiff(workdir / "slide.tif", p["size"], p["size"], mpp=0.25)
    report["pyramid"] = {"size": [p["size"], p["size"]], "mpp": 0.25, "build_s": time.perf_counter() - t}
    model, _ = load_model(model_path)
    user = workdir / "user"  # an empty user cache: the first run is cold
    report["int8_from_user_cache"] = _copy_int8(model, user / "predictions" / "backends")
    runs = []
    for label, path, extra, level in [("cold", pyr, (), None), *[("warm", pyr, (), None)] * p["warm_runs"],
                                      *[("warm", data_path("slides", n), e, 0 if e else None)
                                        for n, e in REAL_RUNS]]:
        run = run_process(path, model_path, workdir / f"out-{len(runs)}", user, *extra)
        raw = _raw_forward_of(path, run["summary"], model, spec, user, p, level)
        runs.append({"slide": path.name, "cache": label, **_process_figures(run, raw)})
        log.info("%s", runs[-1])
    report["process"] = runs
    warm = sorted(r["raw_forward_over_end_to_end"] for r in runs if r["cache"] == "warm" and r["slide"] == pyr.name)
    report["pyramid_warm_ratio"] = {"runs": len(warm), "median": warm[len(warm) // 2], "min": warm[0],
                                    "max": warm[-1], "target": 0.85}
    report["seams"] = _seams(model, spec, p, workdir)
    with open_slide(pyr) as slide:
        grid = make_grid(slide.info, spec.mpp, tile=window, margin=margin)
        tissue = tissue_tiles(grid, detect_tissue(slide))
        from engine.inference.job import pick_runner

        runner = pick_runner(model, spec, window, batch_size=p["batch"],
                             cache_dir=user / "predictions" / "backends", measure=False)
        report["overlay"] = _overlay(slide, grid, tissue, runner, p["batch"], workdir)
    report["backends_student"] = _backends(model, spec, window, 2, p["rounds"])
    from engine.models import create_model

    torch.manual_seed(0)
    teacher = create_model(p["teacher"], classes=2).eval()
    tspec = _spec(p["teacher"], spec.mpp or 1.0)
    report["backends_teacher"] = _backends(teacher, tspec, window, p["teacher_windows"], 2)
    s_best = min(v for k, v in report["backends_student"].items() if k.endswith("_ms_per_window"))
    t_best = min(v for k, v in report["backends_teacher"].items() if k.endswith("_ms_per_window"))
    report["student_vs_teacher"] = {
        "student": spec.name, "teacher": p["teacher"], "window": window,
        "student_windows_per_s": 1e3 / s_best, "teacher_windows_per_s": 1e3 / t_best,
        "speedup": t_best / s_best, "basis": "best back-end of each, same in-memory batch"}
    return report


def precision_benchmark() -> dict[str, Any]:
    """``bench infer --precision``: :func:`engine.inference.precision.precision_report` on the
    shipped student (its verdict is remembered in the user cache)."""
    from engine.inference.geometry import run_window
    from engine.inference.precision import precision_report
    from engine.training.checkpoints import load_model

    path, spec = _shipped_student()
    model, meta = load_model(path)
    report = precision_report(model, spec, meta, window=run_window(spec)[0])
    return {"benchmark": "infer-precision", "command": "cocopath-engine bench infer --precision",
            "platform": platform.platform(), **report}

"""``cocopath-engine bench distill``: the ablation of distillation methods on ebhi-adenocarcinoma.

One teacher, then every method with the same student, schedule and seeds, all on one split by case
(``^(.*?)-\\d+-400-\\d+$``). Reports test mIoU / Dice (mean ± sd over seeds), each method's share of
the teacher's mIoU and share of the student–teacher gap closed (relative to the plain student),
params / FLOPs (at 256²) and CPU images/s of teacher and student measured in the same run.

Protocols (``PROTOCOLS``), one command each:

- ``quick`` — ``cocopath-engine bench distill --quick``: 64² images, a few dozen steps, 1 seed;
  minutes on 2 cores. A smoke test of the whole harness: its numbers say little about the methods.
- ``cpu`` — ``cocopath-engine bench distill --protocol cpu --out resources/benchmarks/distill-cpu.json``:
  native 224², ResNet-50 teacher for 3000 steps (~2 h on 2 cores), each student method 1000 steps
  (≤ 30 min), 1 seed: the documented CPU protocol that fits a long working session (~6 h in all).
- ``session`` — ``cocopath-engine bench distill --protocol session --workdir W --out …``: what fits one
  ~2 h working session on 2 cores: ResNet-50 teacher 1200 steps on 128² crops, 300 steps per student
  method, 1 seed; the checkpoints stay in ``W`` and a killed run resumes there.
- ``full`` — ``cocopath-engine bench distill --protocol full --out resources/benchmarks/distill-full.json``:
  native 224², 8000 teacher steps, 4000 per student, 3 seeds; meant for a GPU (AMP, channels_last).
"""

from __future__ import annotations

import logging
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from engine.training.runs import DataSpec, distill_student, images_per_second, load_data, train_teacher
from engine.training.evaluate import evaluate
from engine.training.trainer import ProgressFn, TrainConfig

log = logging.getLogger(__name__)

#: The settings a teacher depends on: a resumed run with other student settings reuses the teacher.
TEACHER_KEYS = ("size", "crop", "teacher", "teacher_steps", "batch_size", "lr")
METHODS = ("student", "kd", "skd", "cwd", "ft", "coco", "coco-gram", "coco-adv", "coco-full")
REGEX = r"^(.*?)-\d+-400-\d+$"

PROTOCOLS: dict[str, dict[str, Any]] = {
    "quick": {"size": 64, "crop": 64, "teacher": "unet-resnet34", "teacher_steps": 40, "student": "mobile-unet",
              "student_steps": 20, "batch_size": 4, "lr": 2e-3, "seeds": 1, "paraphraser_steps": 10,
              "speed_size": 224, "speed_rounds": 7},
    "cpu": {"size": None, "crop": 224, "teacher": "unet-resnet50", "teacher_steps": 3000,
            "student": "mobile-unet", "student_steps": 1000, "batch_size": 8, "lr": 1e-3, "seeds": 1,
            "paraphraser_steps": 200, "speed_size": 224, "speed_rounds": 15},
    "session": {"size": None, "crop": 128, "teacher": "unet-resnet50", "teacher_steps": 1200,
                "student": "mobile-unet", "student_steps": 300, "batch_size": 8, "lr": 1e-3, "seeds": 1,
                "paraphraser_steps": 100, "speed_size": 224, "speed_rounds": 15},
    "full": {"size": None, "crop": 224, "teacher": "unet-resnet50", "teacher_steps": 8000,
             "student": "mobile-unet", "student_steps": 4000, "batch_size": 8, "lr": 1e-3, "seeds": 3,
             "paraphraser_steps": 500, "speed_size": 224, "speed_rounds": 15},
}
NOTES = {
    "quick": ("QUICK smoke protocol: 64x64 images (tiles downscaled from 224), a few dozen training steps, one "
              "seed, on CPU. It exercises the whole harness in minutes on 2 CPU cores; the networks are far from "
              "trained, differences between methods are within noise and say nothing about the paper's claims."),
    "cpu": "CPU protocol: native 224x224 tiles, shortened schedule (see settings), one seed.",
    "session": ("SESSION protocol (CPU, one working session of ~2 h on 2 cores): native-resolution tiles, trained on "
                "random 128x128 crops and evaluated on the whole 224x224 test tiles; ResNet-50 U-Net teacher 1200 "
                "steps, every student method 300 steps, one seed. Far shorter than the paper's schedule: the "
                "networks are not converged, so the ranking of close methods is within noise."),
    "full": "FULL protocol: native 224x224 tiles, schedule and seeds as in 'settings' (run on a GPU).",
}


def _read_run(path: Path, proto: dict[str, Any]) -> dict[str, Any] | None:
    """A finished run's record, if ``path`` holds one made with the same protocol settings."""
    import json

    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return saved.get("run") if saved.get("settings") == proto else None


def _write_run(path: Path, proto: dict[str, Any], run: dict[str, Any]) -> None:
    import json

    from engine.training.checkpoints import atomic_write

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps({"settings": proto, "run": run}, indent=1).encode())


def _mean_sd(xs: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for a single run: no spread to report)."""
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else None)


def run_benchmark(
    protocol: str = "quick", data_dir: str | None = None, seeds: int | None = None, device: str = "auto",
    methods: list[str] | None = None, progress: ProgressFn | None = None, workdir: Path | None = None,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run the ablation and return the report (JSON-ready); ``overrides`` replace protocol settings.

    Checkpoints, the split and each finished run go to ``workdir`` (a temporary folder, removed
    afterwards, by default). A kept ``workdir`` makes the run resumable: a teacher or a method/seed
    already finished there with the same settings is read back instead of trained again.
    """
    if workdir is None:
        with tempfile.TemporaryDirectory(prefix="cocopath-distill-bench-") as tmp:
            return run_benchmark(protocol, data_dir, seeds, device, methods, progress, Path(tmp), overrides)
    from engine.models import count_flops, count_params, create_model
    from engine.shared_data import data_path

    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; valid: {', '.join(PROTOCOLS)}")
    name = protocol
    proto = dict(PROTOCOLS[name])
    unknown = set(overrides or {}) - set(proto)
    if unknown:
        raise ValueError(f"unknown protocol setting(s) {', '.join(sorted(unknown))}")
    proto.update(overrides or {})
    if seeds:
        proto["seeds"] = seeds
    methods = list(methods or METHODS)
    folder = data_dir or str(data_path("seg", "ebhi-adenocarcinoma"))
    work = Path(workdir)
    t_start = time.perf_counter()
    spec = DataSpec((folder,), REGEX, str(work / "split.json"), 0, proto["size"], proto["crop"])
    data = load_data(spec, seed=0)
    cfg_t = TrainConfig(steps=proto["teacher_steps"], batch_size=proto["batch_size"], lr=proto["lr"], seed=0,
                        device=device)
    teacher_settings = {k: proto[k] for k in TEACHER_KEYS}
    teacher_run = _read_run(work / "teacher-run.json", teacher_settings)
    if teacher_run is not None and (work / "teacher.safetensors").exists():
        from engine.training.checkpoints import load_model

        teacher, _ = load_model(work / "teacher.safetensors")
        log.info("teacher read back from %s", work / "teacher.safetensors")
    else:
        t0 = time.perf_counter()
        teacher, res_t, _ = train_teacher(data, proto["teacher"], cfg_t, work / "teacher.safetensors",
                                          progress=progress)
        teacher_test = evaluate(teacher, data.test, list(spec.classes))
        teacher_run = {"test_miou": teacher_test["miou"], "test_dice": teacher_test["dice"],
                       "val_miou": res_t.metrics.get("val_miou"), "train_seconds": time.perf_counter() - t0}
        _write_run(work / "teacher-run.json", teacher_settings, teacher_run)
    teacher.cpu()
    runs: dict[str, list[dict[str, Any]]] = {}
    for method in methods:
        for seed in range(proto["seeds"]):
            run_file = work / "runs" / f"{method}-s{seed}.json"
            run = _read_run(run_file, proto)
            if run is None:
                cfg_s = TrainConfig(steps=proto["student_steps"], batch_size=proto["batch_size"], lr=proto["lr"],
                                    seed=seed, device=device)
                t0 = time.perf_counter()
                student, res, meta = distill_student(
                    data, teacher, method, proto["student"], cfg_s, work / f"student-{method}-s{seed}.safetensors",
                    paraphraser_steps=proto["paraphraser_steps"], progress=progress)
                test = evaluate(student, data.test, list(spec.classes))
                run = {"seed": seed, "test_miou": test["miou"], "test_dice": test["dice"],
                       "val_miou": meta["metrics"]["val"]["miou"], "final_loss": res.metrics.get("final_loss"),
                       "seconds": time.perf_counter() - t0}
                _write_run(run_file, proto, run)
                teacher.cpu()
            runs.setdefault(method, []).append(run)
            log.info("%s seed %d: test mIoU %.4f", method, seed, run["test_miou"])
    t_miou = teacher_run["test_miou"]
    base = _mean_sd([r["test_miou"] for r in runs["student"]])[0] if "student" in runs else None
    table: dict[str, Any] = {}
    for method, rs in runs.items():
        m, sd = _mean_sd([r["test_miou"] for r in rs])
        d, dsd = _mean_sd([r["test_dice"] for r in rs])
        gap = (m - base) / (t_miou - base) if base is not None and abs(t_miou - base) > 1e-9 else None
        table[method] = {"test_miou_mean": m, "test_miou_sd": sd, "test_dice_mean": d, "test_dice_sd": dsd,
                         "share_of_teacher_miou": m / t_miou if t_miou else None, "gap_closed": gap, "runs": rs}
    student_model = create_model(proto["student"])
    teacher_model = create_model(proto["teacher"])
    eff = {"teacher": {"model": proto["teacher"], "params": count_params(teacher_model),
                       "flops_256": count_flops(teacher_model, 256)},
           "student": {"model": proto["student"], "params": count_params(student_model),
                       "flops_256": count_flops(student_model, 256)},
           "speed_size": proto["speed_size"], "threads": torch.get_num_threads()}
    models = {"teacher": teacher_model, "student": student_model}
    if proto["teacher"] != "unet-resnet50":  # also compare with the paper-sized teacher of the full protocol
        models["reference_teacher"] = create_model("unet-resnet50")
        eff["reference_teacher"] = {"model": "unet-resnet50", "params": count_params(models["reference_teacher"]),
                                    "flops_256": count_flops(models["reference_teacher"], 256)}
    speed = images_per_second(models, proto["speed_size"], rounds=proto["speed_rounds"])
    for role, ips in speed.items():
        eff[role]["cpu_images_per_s"] = ips
    eff["flops_ratio"] = eff["student"]["flops_256"] / eff["teacher"]["flops_256"]
    eff["params_ratio"] = eff["student"]["params"] / eff["teacher"]["params"]
    eff["cpu_speedup"] = eff["student"]["cpu_images_per_s"] / eff["teacher"]["cpu_images_per_s"]
    if "reference_teacher" in eff:
        ref = eff["reference_teacher"]
        ref["student_flops_ratio"] = eff["student"]["flops_256"] / ref["flops_256"]
        ref["student_cpu_speedup"] = eff["student"]["cpu_images_per_s"] / ref["cpu_images_per_s"]
    best = max(table, key=lambda k: table[k]["test_miou_mean"]) if table else None
    full = table.get("coco-full", {})
    return {
        "benchmark": "distill",
        "protocol": name if not overrides else f"{name} (modified: {', '.join(sorted(overrides))})",
        "protocol_note": NOTES[name],
        "command": "cocopath-engine bench distill " + ("--quick" if name == "quick" else f"--protocol {name}"),
        "settings": proto,
        "data": {"folder": Path(folder).name, "group_regex": REGEX, "split_seed": 0,
                 "train_images": len(data.train), "val_images": len(data.val), "test_images": len(data.test),
                 "train_cases": len(data.split["train_cases"]), "val_cases": len(data.split["val_cases"]),
                 "test_cases": len(data.split["test_cases"])},
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                    "device": device if device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")},
        "teacher": {"model": proto["teacher"], **teacher_run},
        "methods": table,
        "efficiency": eff,
        "targets": {
            "coco_full_is_best": best == "coco-full" if best else None,
            "coco_full_share_of_teacher_ge_0.98": (full.get("share_of_teacher_miou") or 0) >= 0.98 if full else None,
            "coco_full_gap_closed_ge_0.75": (full.get("gap_closed") or 0) >= 0.75 if full else None,
            "student_flops_le_10pct": eff["flops_ratio"] <= 0.10,
            "student_cpu_speedup_ge_5x": eff["cpu_speedup"] >= 5.0,
        },
        "best_method": best,
        "seconds": time.perf_counter() - t_start,
    }


def _pm(mean: float, sd: float | None) -> str:
    return f"{mean:.4f} ± {sd:.4f}" if sd is not None else f"{mean:.4f} (1 seed)"


def markdown(report: dict[str, Any]) -> str:
    t = report["teacher"]
    lines = [f"## Distillation ablation — protocol `{report['protocol']}`", "", report["protocol_note"], "",
             f"Teacher {t['model']}: validation mIoU {t['val_miou']:.4f}, test mIoU {t['test_miou']:.4f}, "
             f"Dice {t['test_dice']:.4f}", "",
             "| method | validation mIoU | test mIoU | test Dice | % of teacher mIoU | gap closed |",
             "|---|---|---|---|---|---|"]
    for name, r in report["methods"].items():
        share = f"{100 * r['share_of_teacher_miou']:.1f} %" if r["share_of_teacher_miou"] is not None else "–"
        gap = f"{100 * r['gap_closed']:.0f} %" if r["gap_closed"] is not None else "–"
        val = statistics.fmean(run["val_miou"] for run in r["runs"])
        lines.append(f"| {name} | {val:.4f} | {_pm(r['test_miou_mean'], r['test_miou_sd'])} | "
                     f"{_pm(r['test_dice_mean'], r['test_dice_sd'])} | {share} | {gap} |")
    e = report["efficiency"]
    lines += ["", "| network | params | GFLOPs (MACs) at 256² | CPU images/s at "
              f"{e['speed_size']}² ({e['threads']} threads) |", "|---|---|---|---|"]
    for role in ("teacher", "reference_teacher", "student"):
        if role not in e:
            continue
        r = e[role]
        lines.append(f"| {role} {r['model']} | {r['params'] / 1e6:.2f} M | {r['flops_256'] / 1e9:.2f} | "
                     f"{r['cpu_images_per_s']:.1f} |")
    lines += ["", f"Student / teacher: {100 * e['flops_ratio']:.1f} % of the FLOPs, "
              f"{e['cpu_speedup']:.1f}× the CPU speed (same run, interleaved timing)."]
    if "reference_teacher" in e:
        r = e["reference_teacher"]
        lines.append(f"Against the full protocol's {r['model']} teacher: {100 * r['student_flops_ratio']:.1f} % of "
                     f"the FLOPs, {r['student_cpu_speedup']:.1f}× the CPU speed.")
    lines.append("")
    return "\n".join(lines)


def write_outputs(report: dict[str, Any], out: Path | None) -> str:
    import json

    from engine.training.checkpoints import atomic_write

    md = markdown(report)
    if out is not None:
        atomic_write(out, json.dumps(report, indent=1).encode())
        atomic_write(out.with_suffix(".md"), md.encode())
    return md

"""``cocopath-engine bench distill``: the ablation of distillation methods on ebhi-adenocarcinoma.

One teacher, then every method with the same student, schedule and seeds, all on one split by case
(``^(.*?)-\\d+-400-\\d+$``). Reports test mIoU / Dice (mean ± sd over seeds), each method's share of
the teacher's mIoU and share of the student–teacher gap closed (relative to the plain student),
params / FLOPs (at 256²) and CPU images/s of teacher and student measured in the same run.

Protocols (``PROTOCOLS``): ``quick`` (64² images, a few dozen steps, 1 seed: minutes on 2 cores; a
smoke test of the whole harness, its numbers say little about the methods) and ``full`` (native
224², ResNet-50 teacher, 3 seeds: hours on CPU, run it on a GPU):

    cocopath-engine bench distill --out resources/benchmarks/distill-full.json
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

METHODS = ("student", "kd", "skd", "cwd", "ft", "coco", "coco-gram", "coco-adv", "coco-full")
REGEX = r"^(.*?)-\d+-400-\d+$"

PROTOCOLS: dict[str, dict[str, Any]] = {
    "quick": {"size": 64, "crop": 64, "teacher": "unet-resnet34", "teacher_steps": 80, "student": "mobile-unet",
              "student_steps": 40, "batch_size": 8, "lr": 2e-3, "seeds": 1, "paraphraser_steps": 10,
              "speed_size": 224, "speed_seconds": 3.0},
    "full": {"size": None, "crop": 224, "teacher": "unet-resnet50", "teacher_steps": 4000,
             "student": "mobile-unet", "student_steps": 2000, "batch_size": 8, "lr": 1e-3, "seeds": 3,
             "paraphraser_steps": 200, "speed_size": 224, "speed_seconds": 10.0},
}


def _mean_sd(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def run_benchmark(
    quick: bool = True, data_dir: str | None = None, seeds: int | None = None, device: str = "auto",
    methods: list[str] | None = None, progress: ProgressFn | None = None, workdir: Path | None = None,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run the ablation and return the report (JSON-ready); ``overrides`` replace protocol settings."""
    from engine.models import count_flops, count_params, create_model
    from engine.shared_data import data_path

    name = "quick" if quick else "full"
    proto = dict(PROTOCOLS[name])
    unknown = set(overrides or {}) - set(proto)
    if unknown:
        raise ValueError(f"unknown protocol setting(s) {', '.join(sorted(unknown))}")
    proto.update(overrides or {})
    if seeds:
        proto["seeds"] = seeds
    methods = list(methods or METHODS)
    folder = data_dir or str(data_path("seg", "ebhi-adenocarcinoma"))
    work = Path(workdir or tempfile.mkdtemp(prefix="cocopath-bench-"))
    t_start = time.perf_counter()
    spec = DataSpec((folder,), REGEX, str(work / "split.json"), 0, proto["size"], proto["crop"])
    data = load_data(spec, seed=0)
    cfg_t = TrainConfig(steps=proto["teacher_steps"], batch_size=proto["batch_size"], lr=proto["lr"], seed=0,
                        device=device)
    t0 = time.perf_counter()
    teacher, res_t, _ = train_teacher(data, proto["teacher"], cfg_t, work / "teacher.safetensors", progress=progress)
    teacher_time = time.perf_counter() - t0
    teacher_test = evaluate(teacher, data.test, list(spec.classes))
    teacher.cpu()
    runs: dict[str, list[dict[str, Any]]] = {}
    for method in methods:
        for seed in range(proto["seeds"]):
            cfg_s = TrainConfig(steps=proto["student_steps"], batch_size=proto["batch_size"], lr=proto["lr"],
                                seed=seed, device=device)
            t0 = time.perf_counter()
            student, res, meta = distill_student(data, teacher, method, proto["student"], cfg_s,
                                                 paraphraser_steps=proto["paraphraser_steps"], progress=progress)
            test = evaluate(student, data.test, list(spec.classes))
            runs.setdefault(method, []).append({
                "seed": seed, "test_miou": test["miou"], "test_dice": test["dice"],
                "val_miou": meta["metrics"]["val"]["miou"], "final_loss": res.metrics.get("final_loss"),
                "seconds": time.perf_counter() - t0})
            log.info("%s seed %d: test mIoU %.4f", method, seed, test["miou"])
            teacher.cpu()
    t_miou = teacher_test["miou"]
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
    eff["teacher"]["cpu_images_per_s"] = images_per_second(teacher_model, proto["speed_size"],
                                                          seconds=proto["speed_seconds"])
    eff["student"]["cpu_images_per_s"] = images_per_second(student_model, proto["speed_size"],
                                                          seconds=proto["speed_seconds"])
    eff["flops_ratio"] = eff["student"]["flops_256"] / eff["teacher"]["flops_256"]
    eff["params_ratio"] = eff["student"]["params"] / eff["teacher"]["params"]
    eff["cpu_speedup"] = eff["student"]["cpu_images_per_s"] / eff["teacher"]["cpu_images_per_s"]
    best = max(table, key=lambda k: table[k]["test_miou_mean"]) if table else None
    full = table.get("coco-full", {})
    return {
        "benchmark": "distill",
        "protocol": name if not overrides else f"{name} (modified: {', '.join(sorted(overrides))})",
        "protocol_note": ("QUICK smoke protocol: 64x64 images, a few dozen training steps, one seed. It exercises "
                          "the whole harness in minutes on 2 CPU cores; differences between methods are within "
                          "noise and say nothing about the paper's claims."
                          if quick else "FULL protocol: native 224x224 tiles, schedule and seeds as in 'settings'."),
        "command": "cocopath-engine bench distill" + (" --quick" if quick else ""),
        "settings": proto,
        "data": {"folder": Path(folder).name, "group_regex": REGEX, "split_seed": 0,
                 "train_images": len(data.train), "val_images": len(data.val), "test_images": len(data.test),
                 "train_cases": len(data.split["train_cases"]), "val_cases": len(data.split["val_cases"]),
                 "test_cases": len(data.split["test_cases"])},
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                    "device": device if device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")},
        "teacher": {"model": proto["teacher"], "test_miou": t_miou, "test_dice": teacher_test["dice"],
                    "val_miou": res_t.metrics.get("val_miou"), "train_seconds": teacher_time},
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


def markdown(report: dict[str, Any]) -> str:
    t = report["teacher"]
    lines = [f"## Distillation ablation — protocol `{report['protocol']}`", "", report["protocol_note"], "",
             f"Teacher {t['model']}: test mIoU {t['test_miou']:.4f}, Dice {t['test_dice']:.4f}", "",
             "| method | test mIoU | test Dice | % of teacher mIoU | gap closed |",
             "|---|---|---|---|---|"]
    for name, r in report["methods"].items():
        share = f"{100 * r['share_of_teacher_miou']:.1f} %" if r["share_of_teacher_miou"] is not None else "–"
        gap = f"{100 * r['gap_closed']:.0f} %" if r["gap_closed"] is not None else "–"
        lines.append(f"| {name} | {r['test_miou_mean']:.4f} ± {r['test_miou_sd']:.4f} | "
                     f"{r['test_dice_mean']:.4f} ± {r['test_dice_sd']:.4f} | {share} | {gap} |")
    e = report["efficiency"]
    lines += ["", "| network | params | GFLOPs (MACs) at 256² | CPU images/s at "
              f"{e['speed_size']}² ({e['threads']} threads) |", "|---|---|---|---|"]
    for role in ("teacher", "student"):
        r = e[role]
        lines.append(f"| {role} {r['model']} | {r['params'] / 1e6:.2f} M | {r['flops_256'] / 1e9:.2f} | "
                     f"{r['cpu_images_per_s']:.1f} |")
    lines += ["", f"Student / teacher: {100 * e['flops_ratio']:.1f} % of the FLOPs, "
              f"{e['cpu_speedup']:.1f}× the CPU speed (same run).", ""]
    return "\n".join(lines)


def write_outputs(report: dict[str, Any], out: Path | None) -> str:
    import json

    from engine.training.checkpoints import atomic_write

    md = markdown(report)
    if out is not None:
        atomic_write(out, json.dumps(report, indent=1).encode())
        atomic_write(out.with_suffix(".md"), md.encode())
    return md

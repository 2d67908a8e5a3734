"""Ship the benchmark's best student as the app's default model, with a model card.

``cocopath-engine bench distill --protocol session --workdir W --out resources/benchmarks/distill-session.json
--ship resources/models`` runs the ablation, then :func:`ship_student` picks the student method with
the best **validation** mIoU (never test: the test split only reports), and writes

- ``cocopath-student-ebhi.safetensors`` (fp16 weights, the card in its header) and its ``.json`` sidecar,
- ``MODEL_CARD.md`` (data and licence, split, metrics, the command that made it, limits).

The teacher is shipped as well only when its fp16 weights stay under :data:`TEACHER_LIMIT_BYTES`.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from engine.training.checkpoints import atomic_write, load_model, save_model

STUDENT_NAME = "cocopath-student-ebhi"
TEACHER_NAME = "cocopath-teacher-ebhi"
TEACHER_LIMIT_BYTES = 50 * 1024 * 1024
#: EBHI-Seg gives no pixel size. Its "400x" tiles were downscaled to 224²: epithelial tumour nuclei
#: (about 10 µm long) measure about 10 px, so the tiles are about 1 µm/px (a 10× scan).
EBHI_MPP_ESTIMATE = 1.0
DATA_LICENCE = "EBHI-Seg (Shi et al., Front. Med. 2023), CC BY 4.0"


def best_method(report: dict[str, Any], method: str | None = None) -> tuple[str, int]:
    """The method with the best mean validation mIoU (or ``method``), and its best seed by validation."""
    methods = report["methods"]
    if not methods:
        raise ValueError("the report has no student runs to ship")
    if method is not None and method not in methods:
        raise ValueError(f"method {method!r} is not in the report (it has {', '.join(methods)})")

    def val(name: str) -> float:
        return statistics.fmean(r["val_miou"] for r in methods[name]["runs"])

    name = method or max(methods, key=val)
    seed = max(methods[name]["runs"], key=lambda r: r["val_miou"])["seed"]
    return name, seed


def _card_meta(meta: dict[str, Any], report: dict[str, Any], role: str, method: str | None) -> dict[str, Any]:
    meta = dict(meta)
    inp = dict(meta.get("input") or {})
    size = report["settings"].get("size")  # tiles resized to this short side (None: native 224²)
    inp["mpp"] = EBHI_MPP_ESTIMATE * (224 / size if size else 1.0)
    inp["mpp_note"] = ("estimated: EBHI-Seg states no pixel size; tumour nuclei of ~10 µm span ~10 px in its "
                       "224x224 tiles")
    meta["input"] = inp
    meta["name"] = STUDENT_NAME if role == "student" else TEACHER_NAME
    meta["licence"] = {"weights": "same as CoCoPath", "training_data": DATA_LICENCE}
    meta["benchmark"] = {"protocol": report["protocol"], "command": report["command"], "method": method,
                         "teacher_test_miou": report["teacher"]["test_miou"]}
    return meta


def ship_student(report: dict[str, Any], workdir: Path, dest: Path, method: str | None = None) -> dict[str, Any]:
    """Write the best student by validation (or ``method``'s), the teacher when small enough, and the
    model card into ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    chosen = method
    method, seed = best_method(report, method)
    model, meta = load_model(workdir / f"student-{method}-s{seed}.safetensors")
    run = next(r for r in report["methods"][method]["runs"] if r["seed"] == seed)
    meta = _card_meta(meta, report, "student", method)
    meta["metrics"] = {**(meta.get("metrics") or {}),
                       "test": {"miou": run["test_miou"], "dice": run["test_dice"]}}
    student_path = save_model(dest / f"{STUDENT_NAME}.safetensors", model, meta, half=True)
    shipped = {"student": str(student_path), "method": method, "seed": seed, "chosen": chosen is not None}
    teacher, t_meta = load_model(workdir / "teacher.safetensors")
    teacher_bytes = sum(p.numel() * 2 for p in teacher.state_dict().values() if p.is_floating_point())
    if teacher_bytes <= TEACHER_LIMIT_BYTES:
        t_meta = _card_meta(t_meta, report, "teacher", None)
        shipped["teacher"] = str(save_model(dest / f"{TEACHER_NAME}.safetensors", teacher, t_meta, half=True))
    else:
        shipped["teacher_not_shipped"] = (f"{report['teacher']['model']} is {teacher_bytes / 2**20:.0f} MiB as fp16, "
                                          f"over the {TEACHER_LIMIT_BYTES // 2**20} MiB limit")
    atomic_write(dest / "MODEL_CARD.md", model_card(report, meta, shipped, student_path).encode())
    return shipped


def _selection(report: dict[str, Any], method: str, chosen: bool) -> str:
    vals = {m: statistics.fmean(r["val_miou"] for r in row["runs"]) for m, row in report["methods"].items()}
    best = max(vals, key=vals.__getitem__)
    if not chosen or method == best:
        return f"The method was chosen by validation mIoU ({vals[method]:.4f}); the test split only reports."
    return (f"The method was named (`--ship-method {method}`), not the best by validation: its validation "
            f"mIoU {vals[method]:.4f} is within {vals[best] - vals[method]:.4f} of the best ({best}, "
            f"{vals[best]:.4f}), a difference this run cannot resolve (one seed; the methods' validation and "
            "test rankings disagree), and it is the method CoCoPath fine-tunes with. The test split only reports.")


def model_card(report: dict[str, Any], meta: dict[str, Any], shipped: dict[str, Any], path: Path) -> str:
    d, t, eff = report["data"], report["teacher"], report["efficiency"]
    method = shipped["method"]
    row = report["methods"][method]
    val = meta["metrics"].get("val", {})
    test = meta["metrics"]["test"]
    size_mb = path.stat().st_size / 2**20
    secs = [r["seconds"] for row in report["methods"].values() for r in row["runs"]]
    lines = [
        f"# Model card: `{STUDENT_NAME}`", "",
        "The default model of CoCoPath: a compact Mobile U-Net student that segments tumour epithelium "
        "(class `tumour`) against everything else (`background`) in H&E images, distilled from a "
        f"{t['model']} U-Net teacher with the `{method}` method of the distillation benchmark.", "",
        "## Files", "",
        f"- `{path.name}`: fp16 weights ({size_mb:.1f} MiB, {eff['student']['params'] / 1e6:.2f} M parameters, "
        f"{eff['student']['flops_256'] / 1e9:.2f} GMACs at 256²); the card (JSON) is in the safetensors header "
        f"and in `{path.with_suffix('.json').name}` beside it.",
    ]
    if "teacher" in shipped:
        lines.append(f"- `{Path(shipped['teacher']).name}`: the teacher, fp16.")
    else:
        lines.append(f"- The teacher is not shipped: {shipped['teacher_not_shipped']}. Fine-tuning in the app "
                     "therefore distils from the frozen current student unless you give it a teacher.")
    lines += [
        "", "## Input", "",
        "RGB, scaled 0–1, normalised with the ImageNet mean/std in the card. Resolution: "
        f"**about {EBHI_MPP_ESTIMATE} µm/px**, an estimate — EBHI-Seg does not state its pixel size; its "
        "tumour nuclei (~10 µm) span ~10 px. On a slide the app reads the pyramid level nearest to it.",
        "", "## Training data", "",
        f"`{d['folder']}` from {DATA_LICENCE}: colorectal adenocarcinoma biopsies, 224×224 tiles with "
        "tumour-epithelium masks (thresholded at 127). Split **by case** with the regex "
        f"`{d['group_regex']}` (split seed {d['split_seed']}): {d['train_cases']} / {d['val_cases']} / "
        f"{d['test_cases']} cases, {d['train_images']} / {d['val_images']} / {d['test_images']} images "
        "(train / validation / test). The case lists are in the card's `data` field.",
        "", "## Metrics", "",
        "mIoU over both classes from one confusion matrix over the whole split (background included), "
        "Dice of the tumour class.", "",
        "| model | validation mIoU | test mIoU | test Dice |", "|---|---|---|---|",
        f"| teacher {t['model']} | {t['val_miou']:.4f} | {t['test_miou']:.4f} | {t['test_dice']:.4f} |",
        f"| this student ({method}) | {val.get('miou', float('nan')):.4f} | {test['miou']:.4f} | "
        f"{test['dice']:.4f} |", "",
        f"The student keeps {100 * row['share_of_teacher_miou']:.1f} % of the teacher's test mIoU with "
        f"{100 * eff['flops_ratio']:.1f} % of its FLOPs and runs {eff['cpu_speedup']:.1f}× faster on the CPU. "
        + _selection(report, method, shipped["chosen"]) + " The whole ablation: "
        "`resources/benchmarks/distill-session.md`.",
        "", "## How it was made", "",
        f"Protocol `{report['protocol']}`: {report['protocol_note']}", "",
        "```", report["command"] + " --workdir WORK --out resources/benchmarks/distill-session.json "
        "--ship resources/models" + (f" --ship-method {method}" if shipped["chosen"] else ""), "```", "",
        f"Settings: {json.dumps(report['settings'])}. Machine: {report['machine']['platform']}, "
        f"{report['machine']['cpus']} CPUs, torch {report['machine']['torch']}, device "
        f"{report['machine']['device']}; training took {t['train_seconds'] / 60:.0f} min for the teacher and "
        f"{min(secs) / 60:.0f}–{max(secs) / 60:.0f} min per student method.",
        "", "## Limits", "",
        "- Trained on one public dataset of colorectal biopsies at one (estimated) resolution, with a short CPU "
        "schedule: expect errors on other organs, stains and scanners. It is a starting point to correct and "
        "fine-tune in the app, not a diagnostic device.",
        "- Not validated for clinical use.", "",
    ]
    return "\n".join(lines)

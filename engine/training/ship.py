"""Ship the benchmark's best student (and its teacher) as the app's default models, with a model card.

``cocopath-engine bench distill --protocol cpu --workdir W --out resources/benchmarks/distill-cpu.json
--ship resources/models`` runs the ablation, then :func:`ship_student` picks the student method with
the best mean **validation** mIoU and its best seed by validation (never test: the test split only
reports), and writes into ``resources/models``

- ``cocopath-student-tumour.safetensors`` (fp16 weights, the card in its header) and its ``.json``;
- ``cocopath-teacher-tumour.safetensors`` likewise, when its fp16 weights stay under
  :data:`TEACHER_LIMIT_BYTES` (the default teacher of a fine-tuning round);
- ``MODEL_CARD.md``: data and licences, the split (its case lists are in each card's ``data``),
  metrics per source folder next to the constants, the measured scale tolerance, the protocol.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine.model_card import check_card
from engine.training.checkpoints import atomic_write, load_model, save_model

STUDENT_NAME = "cocopath-student-tumour"
TEACHER_NAME = "cocopath-teacher-tumour"
TEACHER_LIMIT_BYTES = 50 * 1024 * 1024
#: EBHI-Seg gives no pixel size. Its "400x" tiles were downscaled to 224²: epithelial tumour nuclei
#: (about 10 µm long) measure about 10 px, so the tiles are about 1 µm/px (a 10× scan).
EBHI_MPP_ESTIMATE = 1.0
MPP_NOTE = ("estimated: EBHI-Seg and the CAMELYON mini-test tiles state no pixel size; "
            "tumour nuclei (~10 µm) span ~10 px in the training tiles. Checked against nuclei of known size "
            "(`cocopath-engine bench scale`: MoNuSeg's 0.25 µm/px crops and a 0.499 µm/px slide as rulers): "
            "1.1-1.4 µm/px for the 224-px tiles and the CAMELYON tiles, about ±30 %. Trained with scale "
            "augmentation 0.5-2x around it; the card's 'scale_tolerance' gives the measured effect of a "
            "wrong scale.")
DATA_LICENCE = ("EBHI-Seg (Shi et al., Front. Med. 2023), CC BY 4.0; CAMELYON16/17 tiles (CC0) from a "
                "resampled mini test set")
SCALES = (0.5, 0.71, 1.0, 1.41, 2.0)
#: (model, card) → {benign slide: share of its tissue called tumour}; the inference layer's
#: :func:`engine.inference.benign.benign_slide_calls`, passed in by the command line.
BenignCheck = Callable[[Any, dict[str, Any]], dict[str, float]]
#: How much more a new student may call tumour before it is refused: of the benign real slides'
#: tissue (``benign_check``, :mod:`engine.inference.benign`), and of the test tiles without tumour.
BENIGN_TOLERANCE = 0.01
NEGATIVES_TOLERANCE = 0.005


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


def _card_data(meta: dict[str, Any], data_dir: str | None) -> Any:
    """The card's data: ``data_dir`` holds the mixture's folders, or is the one data folder."""
    from engine.training.runs import data_from_card

    if len((meta.get("data") or {}).get("folders") or ()) > 1:
        return data_from_card(meta, Path(data_dir) if data_dir else None)
    return data_from_card(meta, folders=[data_dir] if data_dir else None)


def scale_tolerance(model: Any, meta: dict[str, Any], data_dir: str | None = None,
                    scales: tuple[float, ...] = SCALES, source: str = "ebhi-adenocarcinoma") -> dict[str, float]:
    """Test mIoU on ``source``'s test tiles resized by each factor: what a wrong µm/px costs.

    ``data_dir``: the benchmark's ``--data`` (the folder holding the mixture's folders, or the one
    data folder), else the shared data."""
    from engine.training.evaluate import evaluate
    from engine.training.mixture import subset

    data = _card_data(meta, data_dir)
    test = subset(data.test, source) if len(data.spec.folders) > 1 else data.test
    return {f"{f:g}": evaluate(model, test.rescaled(f), list(data.spec.classes))["miou"] for f in scales}


def compare_with_previous(model: Any, meta: dict[str, Any], previous: Path, data_dir: str | None = None,
                          benign_check: BenignCheck | None = None) -> dict[str, Any]:
    """The new student and the model it would replace, on the new test split's images whose case the
    previous model neither trained nor validated on (a fair comparison for both), and on the benign
    real slides when ``benign_check`` is given."""
    import re

    from engine.training.datasets import case_of
    from engine.training.mixture import evaluate_by_source

    old, old_meta = load_model(previous)
    data = _card_data(meta, data_dir)
    old_data = old_meta.get("data") or {}
    seen = set(old_data.get("train_cases") or ()) | set(old_data.get("val_cases") or ())
    pattern = re.compile(data.spec.group_regex)
    test = data.test
    keep = [i for i, p in enumerate(test.pairs) if case_of(p.key, pattern) not in seen]
    test.pairs, test.items = [test.pairs[i] for i in keep], [test.items[i] for i in keep]
    classes = list(data.spec.classes)
    new_s = evaluate_by_source(model.float(), test, classes)
    old_s = evaluate_by_source(old.float(), test, classes)
    out = {"previous": previous.name, "images": len(test), "left_out_cases_seen_by_previous": len(seen),
           "new": new_s, "previous_scores": old_s,
           "benign_slides": benign_check(model, meta) if benign_check else {},
           "previous_benign_slides": benign_check(old, old_meta) if benign_check else {}}
    out["worse"] = _worse(out)
    out["better"] = not out["worse"]
    return out


def _worse(comparison: dict[str, Any]) -> list[str]:
    """Why the new student is worse than the one it replaces (empty when it is not)."""
    new, old = comparison["new"], comparison["previous_scores"]
    why = []
    if new["miou"] < old["miou"]:
        why.append(f"mIoU {new['miou']:.4f} against {old['miou']:.4f} on {comparison['images']} test images "
                   "neither trained on")
    n, o = new.get("negatives_tumour_share"), old.get("negatives_tumour_share")
    if n is not None and o is not None and n > o + NEGATIVES_TOLERANCE:
        why.append(f"{100 * n:.1f} % of the pixels of the tiles without tumour called tumour against {100 * o:.1f} %")
    for name, frac in comparison.get("benign_slides", {}).items():
        before = comparison["previous_benign_slides"].get(name)
        if before is not None and frac > before + BENIGN_TOLERANCE:
            why.append(f"{100 * frac:.1f} % of the tissue of the benign slide {name} called tumour against "
                       f"{100 * before:.1f} %")
    return why


def with_card_mpp(meta: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
    """``meta`` with the card's µm/px for a protocol's ``settings`` (tiles resized to ``size``, or native)."""
    size = settings.get("size")
    inp = dict(meta.get("input") or {})
    inp["mpp"] = EBHI_MPP_ESTIMATE * (224 / size if size else 1.0)
    inp["mpp_note"] = MPP_NOTE
    return {**meta, "input": inp}


def _card_meta(meta: dict[str, Any], report: dict[str, Any], role: str, method: str | None) -> dict[str, Any]:
    meta = with_card_mpp(meta, report["settings"])
    meta["name"] = STUDENT_NAME if role == "student" else TEACHER_NAME
    meta["licence"] = {"weights": "same as CoCoPath", "training_data": DATA_LICENCE}
    meta["benchmark"] = {"protocol": report["protocol"], "command": report["command"], "method": method,
                         "settings": report["settings"], "teacher_test_miou": report["teacher"]["test_miou"]}
    return meta


def ship_student(report: dict[str, Any], workdir: Path, dest: Path, method: str | None = None,
                 data_dir: str | None = None, force: bool = False,
                 benign_check: BenignCheck | None = None) -> dict[str, Any]:
    """Write the best student by validation (or ``method``'s), the teacher when small enough, and the
    model card into ``dest``.

    Never worse: when ``dest`` already holds a default student, both are scored on the new test
    split's images the old one never saw, and on the benign real slides by ``benign_check``.
    A new student with a lower mIoU there, more tumour called on the tiles without tumour (beyond
    :data:`NEGATIVES_TOLERANCE`) or on a benign slide's tissue (beyond :data:`BENIGN_TOLERANCE`) is
    refused (a :class:`~engine.errors.CocoPathError` naming the figures) unless ``force``.
    """
    from engine.errors import CocoPathError

    dest.mkdir(parents=True, exist_ok=True)
    chosen = method
    method, seed = best_method(report, method)
    model, meta = load_model(workdir / f"student-{method}-s{seed}.safetensors")
    run = next(r for r in report["methods"][method]["runs"] if r["seed"] == seed)
    meta = _card_meta(meta, report, "student", method)
    meta["metrics"] = {**(meta.get("metrics") or {}), "test": run.get("test") or
                       {"miou": run["test_miou"], "dice": run["test_dice"]}}
    meta["scale_tolerance"] = scale_tolerance(model, meta, data_dir)
    previous = sorted(dest.glob("*student*.safetensors"))
    comparison = compare_with_previous(model, meta, previous[0], data_dir, benign_check) if previous else None
    if comparison is not None:
        meta["replaces"] = {"model": comparison["previous"], "images": comparison["images"],
                            "miou": comparison["new"]["miou"], "previous_miou": comparison["previous_scores"]["miou"],
                            "negatives_tumour_share": comparison["new"]["negatives_tumour_share"],
                            "previous_negatives_tumour_share": comparison["previous_scores"]["negatives_tumour_share"],
                            "benign_slides": comparison["benign_slides"],
                            "previous_benign_slides": comparison["previous_benign_slides"]}
        if comparison["worse"] and not force:
            raise CocoPathError(
                f"the new student is worse than {comparison['previous']}: {'; '.join(comparison['worse'])}: "
                "not shipped (--force ships it anyway)")
    check_card(meta, dest / f"{STUDENT_NAME}.safetensors")  # what the app will accept, before writing
    student_path = save_model(dest / f"{STUDENT_NAME}.safetensors", model, meta, half=True)
    shipped: dict[str, Any] = {"student": str(student_path), "method": method, "seed": seed,
                               "chosen": chosen is not None, "scale_tolerance": meta["scale_tolerance"],
                               "replaces": meta.get("replaces")}
    teacher, t_meta = load_model(workdir / "teacher.safetensors")
    teacher_bytes = sum(p.numel() * 2 for p in teacher.state_dict().values() if p.is_floating_point())
    if teacher_bytes <= TEACHER_LIMIT_BYTES:
        t_meta = _card_meta(t_meta, report, "teacher", None)
        t_meta["metrics"] = {**(t_meta.get("metrics") or {}), "test": report["teacher"].get("test") or
                             {"miou": report["teacher"]["test_miou"], "dice": report["teacher"]["test_dice"]}}
        check_card(t_meta, dest / f"{TEACHER_NAME}.safetensors")
        shipped["teacher"] = str(save_model(dest / f"{TEACHER_NAME}.safetensors", teacher, t_meta, half=True))
    else:
        shipped["teacher_not_shipped"] = (f"{report['teacher']['model']} is {teacher_bytes / 2**20:.0f} MiB as fp16, "
                                          f"over the {TEACHER_LIMIT_BYTES // 2**20} MiB limit")
    for old in dest.glob("cocopath-*.safetensors"):  # an earlier default of another name would shadow these
        if str(old) not in (shipped["student"], shipped.get("teacher")):
            old.unlink()
            old.with_suffix(".json").unlink(missing_ok=True)
    atomic_write(dest / "MODEL_CARD.md", model_card(report, meta, shipped, student_path).encode())
    return shipped


def _selection(report: dict[str, Any], method: str, chosen: bool) -> str:
    vals = {m: statistics.fmean(r["val_miou"] for r in row["runs"]) for m, row in report["methods"].items()}
    best = max(vals, key=vals.__getitem__)
    if not chosen or method == best:
        return (f"The method was chosen by mean validation mIoU ({vals[method]:.4f}) and the seed by its "
                "validation mIoU; the test split only reports.")
    return (f"The method was named (`--ship-method {method}`), not the best by validation: its validation "
            f"mIoU {vals[method]:.4f} against the best ({best}, {vals[best]:.4f}). The test split only reports.")


def _unfinished(report: dict[str, Any]) -> str:
    """What the choice could not see: the protocol's runs that had not finished when it was shipped."""
    missing = report.get("missing_runs") or []
    if not missing:
        return ""
    done = sum(len(row["runs"]) for row in report["methods"].values())
    return (f" **The ablation was not finished**: {done} of {done + len(missing)} runs, so the choice is among "
            f"those; missing: {', '.join(missing)}.")


def _replaces(r: dict[str, Any]) -> list[str]:
    neg = ""
    if r.get("negatives_tumour_share") is not None and r.get("previous_negatives_tumour_share") is not None:
        neg = (f"; pixels called tumour on the tiles without tumour {100 * r['negatives_tumour_share']:.1f} % "
               f"against {100 * r['previous_negatives_tumour_share']:.1f} %")
    slides = "".join(f"; on the benign slide {name} {100 * frac:.2f} % of the tissue called tumour against "
                     f"{100 * r['previous_benign_slides'][name]:.2f} %"
                     for name, frac in (r.get("benign_slides") or {}).items()
                     if name in (r.get("previous_benign_slides") or {}))
    return ["", f"It replaces `{r['model']}`: on the {r['images']} test images whose cases neither model trained "
                f"or validated on, mIoU {r['miou']:.4f} against {r['previous_miou']:.4f}{neg}{slides}."]


def _source_rows(scores: dict[str, Any]) -> list[str]:
    from engine.training.mixture import negative_text

    rows = []
    for name, r in (scores.get("per_source") or {}).items():
        if "miou" in r:
            rows.append(f"| {name} | {r['images']} | mIoU {r['miou']:.3f}, tumour Dice {r['tumour_dice']:.3f} | "
                        f"all-tumour mIoU {r['all_tumour_miou']:.3f}, all-background {r['all_background_miou']:.3f} |")
        else:
            rows.append(f"| {name} (no tumour) | {r['images']} | {negative_text(r)} | 0 % |")
    return rows


def model_card(report: dict[str, Any], meta: dict[str, Any], shipped: dict[str, Any], path: Path) -> str:
    d, t, eff = report["data"], report["teacher"], report["efficiency"]
    method = shipped["method"]
    row = report["methods"][method]
    test = meta["metrics"]["test"]
    size_mb = path.stat().st_size / 2**20
    secs = [r["seconds"] for row in report["methods"].values() for r in row["runs"]]
    neg = test.get("negatives_tumour_share")
    tol = shipped["scale_tolerance"]
    proto = report["protocol"].split()[0]
    lines = [
        f"# Model card: `{STUDENT_NAME}` (and its teacher `{TEACHER_NAME}`)", "",
        "CoCoPath's default model: a compact Mobile U-Net student that segments **tumour** (carcinoma "
        "epithelium, metastasis) against everything else (`background`: stroma, normal and dysplastic "
        f"epithelium, lymphoid tissue, glass) in H&E images, distilled from a {t['model']} U-Net teacher "
        f"with the `{method}` method of the distillation benchmark.", "",
        "## Files", "",
        f"- `{path.name}`: fp16 weights ({size_mb:.1f} MiB, {eff['student']['params'] / 1e6:.2f} M parameters, "
        f"{eff['student']['flops_256'] / 1e9:.2f} GMACs at 256²); the card (JSON) is in the safetensors header "
        f"and in `{path.with_suffix('.json').name}` beside it.",
    ]
    if "teacher" in shipped:
        tp = Path(shipped["teacher"])
        lines.append(f"- `{tp.name}`: the teacher, fp16 ({tp.stat().st_size / 2**20:.1f} MiB, "
                     f"{eff['teacher']['params'] / 1e6:.1f} M parameters), card in its header and "
                     f"`{tp.with_suffix('.json').name}`. It is the default teacher of a fine-tuning round.")
    else:
        lines.append(f"- The teacher is not shipped: {shipped['teacher_not_shipped']}.")
    lines += [
        "", "## Input", "",
        "RGB, scaled 0–1, normalised with the ImageNet mean/std in the card. Resolution: "
        f"**about {EBHI_MPP_ESTIMATE} µm/px**, an estimate: the training sets state no pixel size; their "
        "tumour nuclei (~10 µm) span ~10 px. The app reads the pyramid level nearest to it. Trained with "
        "scale augmentation 0.5–2×; measured tolerance (adenocarcinoma test tiles resized by the factor, "
        "test mIoU): " + ", ".join(f"{k}× {v:.3f}" for k, v in tol.items()) + ".",
        "", "## Training data", "",
        f"{DATA_LICENCE}. Folders: {d['folder']}. Tumour: adenocarcinoma epithelium (EBHI) and lymph-node "
        f"metastasis (CAMELYON). **Negatives** (masks taken as all background): {', '.join(d['negatives'])} "
        "— normal mucosa, low- and high-grade intraepithelial neoplasia and polyps, none of them carcinoma. "
        f"Split **by case** over all folders together with the regex `{d['group_regex']}` (split seed "
        f"{d['split_seed']}; one patient's tiles of every class fall in the same part): {d['train_cases']} / "
        f"{d['val_cases']} / {d['test_cases']} cases, {d['train_images']} / {d['val_images']} / "
        f"{d['test_images']} images (train, oversampled so tiles with and without tumour are as many / "
        "validation / test). The case lists are in the card's `data` field: `cocopath-engine evaluate` "
        "rebuilds the split from them. Augmentation: flips, 90° rotations, scale 0.5–2×, HED stain and "
        "colour jitter, focus blur, JPEG artefacts.",
        "", "## Metrics (test split)", "",
        "mIoU: mean over both classes of one confusion matrix over the images (background included). "
        "For folders without tumour: the share of pixels the model calls tumour (the ideal is 0 %).", "",
        "| folder | images | this student | constants on the same images |", "|---|---|---|---|",
        *_source_rows(test), "",
        f"All test images: student mIoU {test['miou']:.4f} (teacher {t['test_miou']:.4f}, "
        f"{100 * test['miou'] / t['test_miou']:.1f} % of it); "
        + (f"pixels called tumour on the normal / LGIN / HGIN test tiles together: {100 * neg:.1f} %. "
           if neg is not None else "")
        + (f"Over {len(row['runs'])} seeds the {method} students score test mIoU {row['test_miou_mean']:.4f}"
           f" ± {row['test_miou_sd']:.4f}. " if row["test_miou_sd"] is not None
           else f"Only one {method} student (seed {row['runs'][0]['seed']}) has finished. ")
        + _selection(report, method, shipped["chosen"]) + _unfinished(report),
        *(_replaces(shipped["replaces"]) if shipped.get("replaces") else []),
        "", "Teacher on the same test split:", "",
        "| folder | images | teacher | constants |", "|---|---|---|---|", *_source_rows(t.get("test") or {}), "",
        f"The student has {100 * eff['flops_ratio']:.1f} % of the teacher's FLOPs and runs "
        f"{eff['cpu_speedup']:.1f}× faster on the CPU (same run).",
        "", "## How it was made", "",
        f"Protocol `{report['protocol']}`: {report['protocol_note']}", "",
        "```", report["command"] + f" --workdir work/distill-{proto} --out resources/benchmarks/distill-{proto}.json "
        "--ship resources/models" + (f" --ship-method {method}" if shipped["chosen"] else ""), "```", "",
        f"Settings: {json.dumps(report['settings'])}. Machine: {report['machine']['platform']}, "
        f"{report['machine']['cpus']} CPUs, torch {report['machine']['torch']}, device "
        f"{report['machine']['device']}; the teacher trained for {t['train_seconds'] / 60:.0f} min, each student "
        f"run took {min(secs) / 60:.0f}–{max(secs) / 60:.0f} min. The whole ablation: "
        f"`resources/benchmarks/distill-{proto}.md`.",
        "", "## Limits", "",
        "- Trained on colorectal biopsy tiles and a few lymph-node tiles, on CPU with a short schedule: expect "
        "errors on other organs, stains and scanners, and on tissue absent from the data (skin, fat, necrosis). "
        "It is a starting point to correct and fine-tune in the app, not a diagnostic device.",
        "- High-grade intraepithelial neoplasia and invasive adenocarcinoma are told apart from a small field of "
        "view only; invasion is judged by the pathologist.",
        "- Not validated for clinical use.", "",
    ]
    return "\n".join(lines)

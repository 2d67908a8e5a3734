"""``cocopath-engine bench loop``: one round of the loop on the real slides, measured by what the
pathologist then sees.

A fresh project holds the shared data's two real H&E slides: a benign skin biopsy
(``cmu-1-small-region.svs``) and a frozen section of a squamous carcinoma (``tcga-cr-7395…``). Each
scenario imports corrections drawn on them (``resources/benchmarks/loop/``: three tumour boxes on
carcinoma lobules of the frozen section, three background ROIs over the skin's epidermis) and runs
one round at the round's default budget from the start model (the shipped student unless
``--model``). What is measured is what the app shows afterwards: the share of each slide's tissue
called tumour by whole-slide inference at the card's µm/px, for the start model (the baseline,
measured in the same run) and for the round's new version, active or held back, with the round's
verdict and reason. A benign slide is right when it stays clear; on the carcinoma the share is the
lobules plus whatever else is painted, so look at the mask too (``--workdir`` keeps the masks).

The ``septa`` scenario is the loop's second turn: the ``both`` round's project goes on with three
background ROIs on septa of the frozen section (thin fibrous and lymphoid bands between the
carcinoma lobules, which that round's version may paint), and a second round starts from the
version then active; its baseline is that version's shares.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import CocoPathError
from engine.finetune.bench import Say

#: The real slides of the shared data (``slides/…``): True where the slide holds carcinoma.
SLIDES = {"cmu-1-small-region.svs": False, "tcga-cr-7395-01a-01-ts1.svs": True}
#: The corrections drawn on each slide (files in ``resources/benchmarks/loop/``).
CORRECTIONS = {"cmu-1-small-region.svs": "cmu-1-background-rois.geojson",
               "tcga-cr-7395-01a-01-ts1.svs": "tcga-cr-7395-tumour-boxes.geojson"}
#: Corrections a second round adds: slide → file in ``resources/benchmarks/loop/``.
SEPTA = {"tcga-cr-7395-01a-01-ts1.svs": "tcga-cr-7395-septa-rois.geojson"}
#: Scenarios of a second round: name → (what it adds, the scenario it goes on from, its corrections).
FOLLOW_UPS = {
    "septa": ("after the both round: background ROIs on three septa of the carcinoma, a second round",
              "both", SEPTA),
}
#: Scenario → (what the pathologist corrects, the slides corrected).
SCENARIOS = {
    "both": ("tumour boxes on the carcinoma and background ROIs on the skin, in one round",
             ("tcga-cr-7395-01a-01-ts1.svs", "cmu-1-small-region.svs")),
    "carcinoma": ("tumour boxes on the carcinoma only; the skin is a slide nobody corrected",
                  ("tcga-cr-7395-01a-01-ts1.svs",)),
    "skin": ("background ROIs on the skin only; the carcinoma is a slide nobody corrected",
             ("cmu-1-small-region.svs",)),
}


@dataclass
class LoopConfig:
    model: Path | None = None
    scenarios: tuple[str, ...] = (*SCENARIOS, *FOLLOW_UPS)
    budget_s: float | None = None  # None: the round's default
    steps: int | None = None
    seed: int = 0
    workdir: Path | None = None


def corrections_path(slide: str, files: dict[str, str] = CORRECTIONS) -> Path:
    from engine.resources import resource_path

    path = resource_path("benchmarks", "loop", files[slide])
    if not path.is_file():
        raise CocoPathError(f"{path}: the corrections of the loop benchmark are missing (they live in "
                            "the source checkout's resources/benchmarks/loop/)")
    return path


def slide_paths() -> dict[str, Path]:
    """The real slides, from the shared data (a clear error when it is not on this machine)."""
    from engine.shared_data import SharedDataMissing, data_path

    try:
        return {name: data_path("slides", name) for name in SLIDES}
    except SharedDataMissing as e:
        raise CocoPathError(f"the loop benchmark needs the shared data's real slides: {e}") from None


def tissue_calls(model_path: Path, slides: dict[str, Path], out: Path) -> dict[str, float]:
    """The share of each slide's tissue ``model_path`` calls tumour, whole-slide at the card's µm/px
    (the slide's level 0 when it states none, as the app does); masks and summaries under ``out``."""
    from engine.inference.benign import tumour_calls
    from engine.training.checkpoints import load_model

    model, meta = load_model(model_path)
    return tumour_calls(model, meta, slides, out)


def _project(folder: Path, slides: dict[str, Path], corrected: tuple[str, ...], model: Path) -> None:
    from engine.annotations.formats import import_file
    from engine.annotations.project import Project
    from engine.finetune.registry import ModelRegistry

    with Project.create(folder) as project:
        for name in SLIDES:
            project.add_slide(slides[name])
        for name in corrected:
            import_file(project.store(slides[name]), corrections_path(name))
    ModelRegistry.of_project(folder).import_model(model, note="the loop benchmark's start")


def _scenario(name: str, cfg: LoopConfig, work: Path, slides: dict[str, Path], model: Path,
              before: dict[str, float], say: Say) -> dict[str, Any]:
    what, corrected = SCENARIOS[name]
    folder = work / name
    shutil.rmtree(folder, ignore_errors=True)
    _project(folder, slides, corrected, model)
    say(f"{name}: {what}: one round")
    return _round(folder, what, list(corrected), cfg, slides, before)


def _follow_up(name: str, cfg: LoopConfig, work: Path, slides: dict[str, Path], base: dict[str, Any],
               start: dict[str, float], say: Say) -> dict[str, Any]:
    """A second round: ``base``'s project (its scenario's folder) copied, the follow-up's corrections
    added, a round from the version active there; ``start``: that version's shares."""
    from engine.annotations.formats import import_file
    from engine.annotations.project import Project

    what, after, files = FOLLOW_UPS[name]
    folder = work / name
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(work / after, folder, ignore=shutil.ignore_patterns("inference"))
    with Project.open(folder) as project:
        for slide in files:
            import_file(project.store(slides[slide]), corrections_path(slide, files))
    say(f"{name}: {what}: a second round")
    entry = _round(folder, what, sorted({*base["corrected"], *files}), cfg, slides, start)
    entry["after_scenario"] = after
    return entry


def _round(folder: Path, what: str, corrected: list[str], cfg: LoopConfig, slides: dict[str, Path],
           before: dict[str, float]) -> dict[str, Any]:
    """One round in ``folder``'s project, and each slide's share with its new version."""
    from engine.finetune.registry import ModelRegistry
    from engine.finetune.round import RoundSettings, run_round

    r = run_round(folder, RoundSettings(budget_s=cfg.budget_s, steps=cfg.steps, seed=cfg.seed))
    entry: dict[str, Any] = {"corrections": what, "corrected": corrected, "before": before, "status": r.status,
                             "activated": r.activated, "message": r.message, "seconds": r.seconds,
                             "steps": (r.data.get("anchored") or {}).get("steps"),
                             "heldout_miou": [r.before.get("miou"), r.after.get("miou")],
                             "elsewhere": (r.data.get("guard") or {}).get("elsewhere"),
                             "version": r.version}
    if r.version is None:
        entry["after"] = None
        return entry
    path = ModelRegistry.of_project(folder).get(r.version).path
    after = tissue_calls(path, slides, folder / "inference")
    entry["after"] = after
    entry["slides"] = {s: _verdict(s, before[s], after[s]) for s in SLIDES}
    return entry


def _verdict(slide: str, before: float, after: float) -> dict[str, Any]:
    """A benign slide stays clear within the ship gate's tolerance for benign slides."""
    from engine.training.ship import BENIGN_TOLERANCE

    carcinoma = SLIDES[slide]
    row: dict[str, Any] = {"carcinoma": carcinoma, "before": before, "after": after}
    if not carcinoma:
        row["stays_clear"] = after <= before + BENIGN_TOLERANCE
    else:
        row["marked"] = after > before
    return row


def run_loop_bench(cfg: LoopConfig, say: Say | None = None) -> dict[str, Any]:
    """Every scenario of ``cfg`` from the same start model; see the module docstring."""
    from engine.finetune.bench import resolve_model

    say = say or (lambda _m: None)
    known = (*SCENARIOS, *FOLLOW_UPS)
    unknown = [s for s in cfg.scenarios if s not in known]
    if unknown:
        raise CocoPathError(f"unknown scenario {', '.join(unknown)}: choose from {', '.join(known)}")
    model = resolve_model(cfg.model)
    slides = slide_paths()
    for name in SLIDES:
        corrections_path(name)
    for _what, _after, files in FOLLOW_UPS.values():
        for name in files:
            corrections_path(name, files)
    work = Path(cfg.workdir) if cfg.workdir else Path(tempfile.mkdtemp(prefix="cocopath-loop-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        say(f"the start model {model.name} on every slide (the baseline)")
        before = tissue_calls(model, slides, work / "start")
        report: dict[str, Any] = {
            "benchmark": "loop", "model": str(model), "budget_s": cfg.budget_s, "steps": cfg.steps,
            "seed": cfg.seed, "slides": {s: {"carcinoma": c, "path": str(slides[s])} for s, c in SLIDES.items()},
            "before": before, "scenarios": {}}
        done = report["scenarios"]
        for name in sorted(cfg.scenarios, key=lambda n: n in FOLLOW_UPS):  # second rounds last
            if name in SCENARIOS:
                done[name] = _scenario(name, cfg, work, slides, model, before, say)
                continue
            after = FOLLOW_UPS[name][1]
            if after not in done:  # the first round it goes on from, reported too
                done[after] = _scenario(after, cfg, work, slides, model, before, say)
            base = done[after]
            start = base["after"] if base["activated"] else before  # the version active after it
            done[name] = _follow_up(name, cfg, work, slides, base, start, say)
        return report
    finally:
        if cfg.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.1f} %"


def _baseline(report: dict[str, Any], e: dict[str, Any]) -> dict[str, float]:
    """A scenario's shares before its round: its own (a second round's start) or the start model's."""
    return e.get("before") or report["before"]


def _verdict_word(e: dict[str, Any]) -> str:
    if e["activated"]:
        return "active"
    if e["version"]:
        return "held back"
    return "no new version" if e["status"] == "done" else e["status"]


def markdown(report: dict[str, Any]) -> str:
    names = list(report["slides"])
    head = " | ".join(f"{n} ({'carcinoma' if report['slides'][n]['carcinoma'] else 'benign'})" for n in names)
    lines = ["## The loop on the real slides (`cocopath-engine bench loop`)", "",
             f"Start model `{Path(report['model']).name}`; one round per scenario "
             f"({'budget ' + str(report['budget_s']) + ' s' if report['budget_s'] else 'the default budget'}"
             f"{', ' + str(report['steps']) + ' steps' if report['steps'] else ''}); the share of each slide's "
             "tissue called tumour, whole-slide at the card's µm/px, before (the start model; for a second "
             "round, the version active after the first) → after (the round's new version, active or not).", "",
             f"| scenario | steps | held-out mIoU | verdict | {head} |",
             "|---|---|---|---|" + "---|" * len(names)]
    for name, e in report["scenarios"].items():
        held = e["heldout_miou"]
        held_s = "–" if None in held else f"{held[0]:.3f} → {held[1]:.3f}"
        verdict = _verdict_word(e)
        start = _baseline(report, e)
        cells = " | ".join(f"{_pct(start[n])} → {_pct((e.get('after') or {}).get(n))}" for n in names)
        lines.append(f"| {name}: {e['corrections']} | {e['steps'] or '–'} | {held_s} | {verdict} | {cells} |")
    lines += ["", "Each round's message:", ""]
    lines += [f"- {name}: {e['message']}" for name, e in report["scenarios"].items()]
    return "\n".join(lines) + "\n"


def figures(report: dict[str, Any]) -> list[str]:
    out = []
    for name, e in report["scenarios"].items():
        verdict = _verdict_word(e)
        start = _baseline(report, e)
        shares = ", ".join(f"{n.split('-')[0]} {_pct(start[n])} → {_pct((e.get('after') or {}).get(n))}"
                           for n in report["slides"])
        out.append(f"{name}: {verdict}; {shares}")
    return out


def register_bench(bench: argparse._SubParsersAction) -> None:
    """Add ``bench loop`` to the ``cocopath-engine bench`` sub-parsers."""
    b = bench.add_parser("loop", help="one round on the real slides from the shipped student: "
                                      "the tumour share of each slide before and after (JSON + markdown)")
    b.add_argument("--model", type=Path, default=None, help="start checkpoint (default: the shipped student)")
    b.add_argument("--scenario", action="append", choices=[*SCENARIOS, *FOLLOW_UPS], default=None,
                   help="run this scenario (repeatable; default: all; a second round runs the first too)")
    b.add_argument("--budget", type=float, default=None, metavar="S",
                   help="the round's wall-clock budget in seconds (default: the round's)")
    b.add_argument("--steps", type=int, default=None, help="round steps (default: the budget's)")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--out", type=Path, default=None, help="write the JSON here (and OUT.md beside it)")
    b.add_argument("--workdir", type=Path, default=None, help="keep the projects and masks here")
    b.set_defaults(func=_bench_command)


def _bench_command(args: argparse.Namespace) -> int:
    if args.budget is not None and not args.budget > 0:
        raise CocoPathError("--budget must be a positive number of seconds")
    if args.steps is not None and args.steps < 1:
        raise CocoPathError("--steps must be at least 1")
    cfg = LoopConfig(model=args.model, scenarios=tuple(args.scenario or (*SCENARIOS, *FOLLOW_UPS)), budget_s=args.budget,
                     steps=args.steps, seed=args.seed, workdir=args.workdir)
    from engine.finetune.bench import emit_report

    report = run_loop_bench(cfg, say=lambda m: print(m, file=sys.stderr, flush=True))
    return emit_report(args.out, report, markdown, figures)

"""``cocopath-engine bench finetune``: a simulated pathologist corrects k regions, a round runs, and
mIoU is measured where nobody corrected anything.

1. Two slides are built from real H&E tiles with their true masks (:mod:`engine.finetune.simulate`):
   the EBHI adenocarcinoma images of the *test* cases of the split by case (cases the shipped
   student never trained on), and EBHI polyp (or CAMELYON) tiles for a stain / organ shift.
2. The starting model predicts both slides (prediction caches).
3. For each k: the pathologist reviews k regions chosen by Review next (:func:`rank_regions` on
   those caches, each slide's list in turn: :func:`review_next`) and, in a separate project, k
   regions drawn at random; each reviewed region becomes a correction ROI holding the true tumour
   outline.
4. Each project runs one round (:func:`engine.finetune.round.run_round`) from the same start.
5. The new version predicts both slides again; mIoU (background and tumour, as in training) is
   measured on the real tiles outside every ROI of that k, Review-next or random, so before, after
   and both strategies are compared on the very same pixels.

``--quick`` runs k = 10 only with few steps (minutes on 2 CPU cores). Results go to JSON with
``k → {miou_before, miou_after, …}`` and a markdown table beside it.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import CocoPathError

log = logging.getLogger(__name__)

KS = (1, 3, 10)
QUICK_KS = (10,)
QUICK_STEPS = 40
SHIFTS = ("ebhi-polyp", "camelyon-tumour")
TARGET_S = {"cpu": 300.0, "cuda": 60.0}
Say = Callable[[str], None]


@dataclass(frozen=True)
class BenchConfig:
    """What to run. ``None`` round settings take :class:`RoundSettings`' defaults."""

    model: Path | None = None  # None: the shipped student (default_model_path())
    ks: tuple[int, ...] = KS
    steps: int | None = None
    batch_size: int | None = None
    patch: int | None = None
    method: str | None = None  # distillation config (name or .toml path)
    use_teacher: bool = True
    teacher: Path | None = None
    device: str = "auto"
    seed: int = 0
    region_px: int = 256  # side of a reviewed region, level-0 pixels (256 µm at EBHI's ~1 µm/px)
    min_tissue: float = 0.5
    shift: str = "ebhi-polyp"
    tiles: int | None = None  # at most this many tiles per slide (None: every one)
    border: int = 64
    workdir: Path | None = None  # kept when given; a temporary folder (removed) otherwise
    quick: bool = False


@dataclass
class _Slides:
    slides: list[Any]
    info: list[dict[str, Any]] = field(default_factory=list)


def resolve_model(path: Path | None) -> Path:
    """The checkpoint to start from: ``path``, else the shipped default student."""
    if path is not None:
        if not Path(path).is_file():
            raise CocoPathError(f"{path}: no such model checkpoint")
        return Path(path)
    from engine.finetune.registry import default_model_path

    found = default_model_path()
    if found is None:
        raise CocoPathError("no model: the shipped student (resources/models/"
                            "cocopath-student-tumour.safetensors) is not there; pass --model M.safetensors")
    return found


def make_slides(cfg: BenchConfig, card: dict[str, Any], out: Path, mpp: float) -> _Slides:
    """The unseen-adenocarcinoma slide and the shifted one (see the module docstring)."""
    from engine.finetune.simulate import build_slide, unseen_pairs
    from engine.shared_data import data_path
    from engine.training.datasets import find_pairs

    if cfg.shift not in SHIFTS:
        raise CocoPathError(f"unknown shift set {cfg.shift!r}; valid: {', '.join(SHIFTS)}")
    adeno, split = unseen_pairs(data_path("seg", "ebhi-adenocarcinoma"), card, seed=0)
    shifted = find_pairs([data_path("seg", cfg.shift)])
    if cfg.tiles is not None:
        rng = np.random.default_rng(cfg.seed)
        adeno = [adeno[i] for i in sorted(rng.permutation(len(adeno))[:cfg.tiles])]
        shifted = [shifted[i] for i in sorted(rng.permutation(len(shifted))[:cfg.tiles])]
    a = build_slide(out, "adenocarcinoma-unseen", adeno, mpp=mpp, border=cfg.border,
                    source="ebhi-adenocarcinoma", seed=cfg.seed)
    b = build_slide(out, f"{cfg.shift}-shift", shifted, mpp=mpp, border=cfg.border,
                    source=cfg.shift, seed=cfg.seed + 1)
    info = [{"name": s.name, "source": s.source, "tiles": len(s.tiles), "size": list(s.size),
             "mpp": s.mpp, "tumour_fraction": float(s.truth[s.known].mean())} for s in (a, b)]
    info[0]["split"] = split
    return _Slides([a, b], info)


def review_next(caches: Sequence[Any], region_px: int, k: int, min_tissue: float
                ) -> list[tuple[int, tuple[int, int, int, int], float]]:
    """The k regions a pathologist reviews with Review next: (slide index, rect, score).

    Review next ranks the regions of the slide that is open (as in the app), so the pathologist
    works through each slide's list in turn: the picks interleave the slides' rankings (each
    slide's best, then each one's second, …; within a turn, higher score first). Scores are not
    compared across slides: a stain-shifted slide can be confidently wrong, and a global ranking
    then sends every correction to the other slide (the first quick run did: 9 of 10 ROIs on one
    slide, and the other slide got worse)."""
    from engine.finetune.review import rank_regions

    ranked = [[(i, r.rect, r.score)
               for r in rank_regions(cache, region_px, n=k, min_tissue=min_tissue)]
              for i, cache in enumerate(caches)]
    picks = interleave(ranked)
    if len(picks) < k:
        raise CocoPathError(f"Review next found only {len(picks)} region(s) of {region_px} px, not {k}")
    return picks[:k]


def interleave(ranked: Sequence[Sequence[tuple[int, Any, float]]]) -> list[tuple[int, Any, float]]:
    """Each list's first, then each one's second, …; within a turn by score, highest first."""
    out: list[tuple[int, Any, float]] = []
    for turn in range(max((len(r) for r in ranked), default=0)):
        out += sorted((r[turn] for r in ranked if turn < len(r)), key=lambda t: -t[2])
    return out


def round_settings(cfg: BenchConfig) -> Any:
    from engine.finetune.round import RoundSettings

    kw: dict[str, Any] = {"seed": cfg.seed, "use_teacher": cfg.use_teacher}
    for name in ("steps", "batch_size", "patch", "method"):
        value = getattr(cfg, name)
        if value is not None:
            kw[name] = value
    if cfg.teacher is not None:
        kw["teacher"] = str(cfg.teacher)
    return RoundSettings.for_device(cfg.device, **kw)  # CPU: the smaller round sized to finish in minutes


def _scores(matrices: Sequence[np.ndarray], names: Sequence[str], classes: Sequence[str]
            ) -> dict[str, Any]:
    from engine.finetune.simulate import summarize

    total = summarize(sum(matrices), classes)  # type: ignore[arg-type]
    return {"miou": total["miou"], "dice": total["dice"], "pixels": total["pixels"],
            "per_slide": {n: summarize(m, classes)["miou"] for n, m in zip(names, matrices)}}


def _experiment(cfg: BenchConfig, work: Path, tag: str, slides: Sequence[Any], model: Path,
                rects: Sequence[tuple[int, tuple[int, int, int, int]]], where: Sequence[np.ndarray],
                classes: Sequence[str], say: Say) -> dict[str, Any]:
    """One project: corrections in ``rects``, one round, the new version scored on ``where``."""
    from engine.annotations import Project
    from engine.finetune.registry import ModelRegistry
    from engine.finetune.round import run_round
    from engine.finetune.simulate import confusion, predict, write_corrections

    pdir = work / "projects" / tag
    if pdir.exists():
        shutil.rmtree(pdir)
    with Project.create(pdir, author="simulated pathologist") as project:
        written = 0
        for i, s in enumerate(slides):
            project.add_slide(s.path)
            written += write_corrections(project, s, [r for si, r in rects if si == i], classes[1])
    registry = ModelRegistry.of_project(pdir)
    start = registry.import_model(model, note="bench finetune: the starting model")
    registry.activate(start.version)
    say(f"  {tag}: {len(rects)} ROI(s), {written} annotations; round…")
    t0 = time.perf_counter()
    result = run_round(pdir, round_settings(cfg), progress=_progress_lines(tag, say))
    wall = time.perf_counter() - t0
    out: dict[str, Any] = {
        "rois": [{"slide": slides[i].name, "rect": list(r)} for i, r in rects],
        "round": {k: v for k, v in result.to_dict().items() if k != "curves"},
        "round_s": float(result.seconds), "round_wall_s": wall,
        "status": result.status, "activated": bool(result.activated),
        "heldout_before": result.before, "heldout_after": result.after,
    }
    if not result.version:
        out.update({"miou_after": None, "message": result.message})
        say(f"  {tag}: no new version ({result.status}: {result.message})")
        return out
    path = registry.get(result.version).path
    mats = [confusion(predict(s.path, path, work / "cache" / tag / s.name, device=cfg.device),
                      s, w, len(classes)) for s, w in zip(slides, where)]
    after = _scores(mats, [s.name for s in slides], classes)
    out.update({"version": result.version, "miou_after": after["miou"], "dice_after": after["dice"],
                "per_slide_after": after["per_slide"]})
    say(f"  {tag}: round {result.seconds:.0f} s ({result.status}), mIoU after {after['miou']:.4f}")
    return out


def _progress_lines(tag: str, say: Say) -> Callable[[Any], None]:
    """A round progress callback that says a line at each new stage and every 10 % of it."""
    last: dict[str, int] = {}

    def on(p: Any) -> None:
        tenth = int(10 * p.step / p.total) if p.total else 0
        if last.get(p.stage) == tenth:
            return
        last[p.stage] = tenth
        eta = p.metrics.get("eta_s")
        say(f"  {tag}: {p.stage} {p.step}/{p.total}"
            + (f", about {eta:.0f} s left" if eta is not None else "")
            + (f" ({p.message})" if p.message else ""))

    return on


def run_bench(cfg: BenchConfig, say: Say | None = None) -> dict[str, Any]:
    """Run the benchmark; returns the report (see the module docstring)."""
    import torch

    from engine.finetune.simulate import confusion, predict, random_regions, roi_mask
    from engine.inference.spec import load_spec, read_card

    say = say or (lambda _m: None)
    if cfg.quick:
        cfg = BenchConfig(**{**asdict(cfg), "ks": QUICK_KS,
                             "steps": cfg.steps if cfg.steps is not None else QUICK_STEPS})
    if not cfg.ks or min(cfg.ks) < 1:
        raise CocoPathError("k must be at least 1")
    model = resolve_model(cfg.model)
    spec, card = load_spec(model), read_card(model)
    if len(spec.classes) != 2:
        raise CocoPathError(f"{model}: the benchmark scores background vs tumour; the model has "
                            f"{len(spec.classes)} classes")
    from engine.training.ship import EBHI_MPP_ESTIMATE

    device = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    work = Path(cfg.workdir) if cfg.workdir else Path(tempfile.mkdtemp(prefix="cocopath-bench-ft-"))
    work.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    try:
        say(f"building slides in {work}")
        built = make_slides(cfg, card, work / "slides", EBHI_MPP_ESTIMATE)
        slides = built.slides
        say("predicting with the starting model")
        base = [predict(s.path, model, work / "cache" / "start" / s.name, device=cfg.device)
                for s in slides]
        ranked = review_next(base, cfg.region_px, max(cfg.ks), cfg.min_tissue)
        results: dict[str, Any] = {}
        for k in sorted(set(cfg.ks)):
            review = [(i, rect) for i, rect, _ in ranked[:k]]
            rand = random_regions(slides, cfg.region_px, k, seed=cfg.seed + k,
                                  min_tissue=cfg.min_tissue)
            where = [s.known & ~roi_mask(s, [r for si, r in review + rand if si == i])
                     for i, s in enumerate(slides)]
            before = _scores([confusion(c, s, w, 2) for c, s, w in zip(base, slides, where)],
                             [s.name for s in slides], spec.classes)
            say(f"k = {k}: mIoU before {before['miou']:.4f} on {before['pixels']} uncorrected px")
            runs = {name: _experiment(cfg, work, f"k{k}-{name}", slides, model, rects, where,
                                      spec.classes, say)
                    for name, rects in (("review", review), ("random", rand))}
            results[str(k)] = _k_entry(k, before, runs, [s for _, _, s in ranked[:k]], device)
        report = {
            "benchmark": "finetune", "quick": cfg.quick,
            "model": {"path": str(model), "name": spec.name, "version": spec.version,
                      "mpp": spec.mpp, "tile": spec.tile, "classes": list(spec.classes)},
            "slides": built.info,
            "settings": {**{k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()
                            if k not in ("workdir", "model")},
                         "round": _jsonable(asdict(round_settings(cfg)))},
            "protocol": ("mIoU (background, tumour) on the real tiles outside every ROI of that k "
                         "(Review next and random alike), at the prediction's resolution; "
                         "miou_after is the round's new version whether or not it was activated, "
                         "miou_active_after the version active after the round"),
            "device": device, "cpu_threads": torch.get_num_threads(), "host": platform.node(),
            "k": results, "total_s": time.perf_counter() - t_start,
        }
        return report
    finally:
        if cfg.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


def _k_entry(k: int, before: dict[str, Any], runs: dict[str, dict[str, Any]],
             review_scores: Sequence[float], device: str) -> dict[str, Any]:
    rv, rd = runs["review"], runs["random"]

    def gain(run: dict[str, Any]) -> float | None:
        return None if run["miou_after"] is None else run["miou_after"] - before["miou"]

    g_rv, g_rd = gain(rv), gain(rd)
    target = TARGET_S.get(device, TARGET_S["cuda"])
    return {
        "miou_before": before["miou"], "miou_after": rv["miou_after"],
        "miou_after_random": rd["miou_after"], "dice_before": before["dice"],
        "miou_active_after": rv["miou_after"] if rv["activated"] else before["miou"],
        "miou_active_after_random": rd["miou_after"] if rd["activated"] else before["miou"],
        "gain": g_rv, "gain_random": g_rd,
        # ratio of gains: only meaningful when random ROIs helped at all
        "review_vs_random": (g_rv / g_rd) if g_rv is not None and g_rd is not None and g_rd > 0
        else None,
        "round_s": rv["round_s"], "round_s_random": rd["round_s"],
        "round_target_s": target, "round_within_target": max(rv["round_s"], rd["round_s"]) <= target,
        "eval_pixels": before["pixels"], "per_slide_before": before["per_slide"],
        "review_scores": list(review_scores), "review": rv, "random": rd,
    }


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(d, default=str))


def _fmt(v: float | None, spec: str = ".4f") -> str:
    return "–" if v is None else format(v, spec)


def markdown(report: dict[str, Any]) -> str:
    """The report as a markdown table (one row per k)."""
    lines = [f"# bench finetune{' (quick)' if report['quick'] else ''}", "",
             f"Model `{report['model']['name']}` ({report['model']['version']}); device "
             f"{report['device']} ({report['cpu_threads']} CPU threads); slides: "
             + ", ".join(f"{s['name']} ({s['tiles']} tiles, {s['size'][0]}×{s['size'][1]} px)"
                         for s in report["slides"]) + ".", "",
             report["protocol"] + ".", "",
             "| k | mIoU before | after (Review next) | after (random) | gain review / random "
             "| round s (review / random) | activated (review / random) |",
             "|---|---|---|---|---|---|---|"]
    for k, e in sorted(report["k"].items(), key=lambda t: int(t[0])):
        lines.append(
            f"| {k} | {_fmt(e['miou_before'])} | {_fmt(e['miou_after'])} | "
            f"{_fmt(e['miou_after_random'])} | {_fmt(e['gain'], '+.4f')} / "
            f"{_fmt(e['gain_random'], '+.4f')} | {e['round_s']:.0f} / {e['round_s_random']:.0f} | "
            f"{e['review']['activated']} / {e['random']['activated']} |")
    lines += ["", f"Total {report['total_s']:.0f} s. Round target ≤ "
              f"{TARGET_S.get(report['device'], TARGET_S['cuda']):.0f} s on {report['device']}.", ""]
    return "\n".join(lines)


def figures(report: dict[str, Any]) -> list[str]:
    """One line per k: before → after, random, ratio of gains, round time."""
    out = []
    for k, e in sorted(report["k"].items(), key=lambda t: int(t[0])):
        ratio = e["review_vs_random"]
        out.append(f"k={k}: mIoU {_fmt(e['miou_before'])} → {_fmt(e['miou_after'])} "
                   f"({_fmt(e['gain'], '+.4f')}) with Review next, {_fmt(e['miou_after_random'])} "
                   f"({_fmt(e['gain_random'], '+.4f')}) with random ROIs"
                   + (f", gain ×{ratio:.2f}" if ratio is not None else "")
                   + f"; round {e['round_s']:.0f} s / {e['round_s_random']:.0f} s on "
                   f"{report['device']} (target ≤ {e['round_target_s']:.0f} s)")
    return out


# -- command line ------------------------------------------------------------------------------


def register_bench(bench: argparse._SubParsersAction) -> None:
    """Add ``bench finetune`` to the ``cocopath-engine bench`` sub-parsers."""
    b = bench.add_parser("finetune", help="simulated pathologist: corrections → round → mIoU where "
                                          "nobody corrected (JSON + markdown)")
    b.add_argument("--quick", action="store_true", help=f"k = 10 only, {QUICK_STEPS} steps")
    b.add_argument("--out", type=Path, default=None, help="write the JSON here (and OUT.md beside it)")
    b.add_argument("--model", type=Path, default=None,
                   help="starting checkpoint (default: the shipped student)")
    b.add_argument("--teacher", type=Path, default=None, help="teacher checkpoint for the round")
    b.add_argument("--no-teacher", action="store_true", help="distil from the frozen student")
    b.add_argument("--steps", type=int, default=None, help="round steps (default: the round's)")
    b.add_argument("--k", default=None, help=f"comma-separated k values (default {','.join(map(str, KS))})")
    b.add_argument("--device", default="auto", help="auto, cpu or cuda")
    b.add_argument("--batch-size", type=int, default=None, help="round batch size (default: the round's)")
    b.add_argument("--patch", type=int, default=None, help="round patch side (default: the round's)")
    b.add_argument("--method", default=None, help="distillation config, a name or a .toml "
                                                  "(default: the round's, coco-full)")
    b.add_argument("--region-px", type=int, default=256, help="side of a reviewed region (pixels)")
    b.add_argument("--tiles", type=int, default=None, help="at most this many tiles per slide")
    b.add_argument("--shift", default="ebhi-polyp", choices=SHIFTS, help="the shifted slide's tiles")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--workdir", type=Path, default=None, help="keep slides, projects and caches here")
    b.set_defaults(func=_bench_command)


def _bench_command(args: argparse.Namespace) -> int:
    ks = KS
    if args.k:
        try:
            ks = tuple(int(v) for v in args.k.split(","))
        except ValueError:
            raise CocoPathError(f"--k {args.k!r}: give comma-separated whole numbers") from None
    if args.steps is not None and args.steps < 1:
        raise CocoPathError("--steps must be at least 1")
    for name in ("batch_size", "patch", "tiles"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise CocoPathError(f"--{name.replace('_', '-')} must be at least 1")
    cfg = BenchConfig(model=args.model, ks=ks, steps=args.steps, batch_size=args.batch_size,
                      patch=args.patch, method=args.method, use_teacher=not args.no_teacher,
                      teacher=args.teacher,
                      device=args.device, seed=args.seed, region_px=args.region_px,
                      shift=args.shift, tiles=args.tiles, workdir=args.workdir, quick=args.quick)
    import sys

    report = run_bench(cfg, say=lambda m: print(m, file=sys.stderr, flush=True))
    text = json.dumps(report, indent=1, default=str)
    if args.out:
        from engine.training.checkpoints import atomic_write

        atomic_write(args.out, text.encode())
        atomic_write(args.out.with_suffix(".md"), markdown(report).encode())
    else:
        print(text)
    for line in figures(report):
        print(line, file=sys.stderr if not args.out else sys.stdout)
    return 0

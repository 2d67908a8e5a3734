"""``cocopath-engine bench finetune``: a simulated pathologist corrects k regions, a round runs, and
mIoU is measured where nobody corrected anything.

1. Slides are built from real H&E tiles with their true masks (:mod:`engine.finetune.simulate`),
   one per image/mask folder: by default the EBHI adenocarcinoma folder and a shifted one
   (``--shift``, EBHI polyp by default); with ``--data DIR[,DIR…]`` any folders of the
   ``shared/data/seg/*`` layout (``images/`` and ``masks/`` of the same names). Only images whose
   *case* the model never trained or validated on are used: the shipped student was trained on a
   mixture split by case over six folders, and its card's case lists decide
   (:func:`~engine.finetune.simulate.unseen_pairs`). A folder the card trained on as a negative
   (polyps, benign and pre-malignant epithelium) has an all-background truth, as the model learnt it.
2. The starting model predicts every slide (prediction caches).
3. For each k: the pathologist reviews k regions chosen by Review next
   (:func:`~engine.finetune.review.rank_slides` on those caches: uncertainty and coverage, tissue
   only, every slide once before any twice: :func:`review_next`) and, in a separate project, k
   regions drawn at random among the tissue regions of all slides; each reviewed region becomes a
   correction ROI holding the true tumour outline.
4. Each project runs one round (:func:`engine.finetune.round.run_round`) from the same start; this
   is repeated for ``--seeds`` seeds (the round's seed and the random regions change; Review next's
   regions do not: the ranking is deterministic).
5. The new version predicts every slide again; mIoU (background and tumour, as in training) is
   measured on the real tiles outside every ROI of that k and seed, Review-next or random, so
   before, after and both strategies are compared on the very same pixels.

Per k and strategy the report gives the gains' mean ± sd over seeds and these verdicts, computed
from the numbers: every round ≥ before − 0.005 (the round's new version; and the version active
after it); mean gain at k = 10 ≥ +0.05; Review next's mean gain above random's by more than one sd
(the larger of the two strategies' sds); the round's wall time against the target. ``roi_errors``
counts the starting model's wrong pixels inside each strategy's ROIs: what the corrections can
teach, a diagnostic of why one strategy gains more.

``--quick``: k = 10 only, one seed, at most :data:`QUICK_TILES` tiles per slide (and, while rounds
count steps rather than seconds, :data:`QUICK_STEPS` steps). Results go to JSON with
``k → {miou_before, miou_after, …, seeds: […]}`` and a markdown table beside it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import platform
import shutil
import statistics
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
SEEDS = 3
QUICK_KS = (10,)
QUICK_SEEDS = 1
QUICK_STEPS = 40  # only for rounds that count steps (RoundSettings without budget_s)
QUICK_TILES = 48
SHIFTS = ("ebhi-polyp", "camelyon-tumour")
DEFAULT_SET = "ebhi-adenocarcinoma"
#: Round wall-time targets (issue 12): a minute on CPU, 20 s on a GPU.
TARGET_S = {"cpu": 60.0, "cuda": 20.0}
#: A round may lose at most this much mIoU on the unreviewed area.
NOT_WORSE_TOLERANCE = 0.005
#: Mean gain wanted at k = 10.
GAIN_TARGET = 0.05
GAIN_TARGET_K = 10
STRATEGIES = ("review", "random")
Say = Callable[[str], None]
Rect = tuple[int, int, int, int]


@dataclass(frozen=True)
class BenchConfig:
    """What to run. ``None`` round settings take :class:`RoundSettings`' defaults."""

    model: Path | None = None  # None: the shipped student (default_model_path())
    ks: tuple[int, ...] = KS
    steps: int | None = None  # passed to the round only when given
    budget_s: float | None = None  # the round's wall-clock budget (None: the round's default)
    batch_size: int | None = None
    patch: int | None = None
    method: str | None = None  # distillation config (name or .toml path)
    use_teacher: bool = True
    teacher: Path | None = None
    device: str = "auto"
    seed: int = 0  # the first seed
    seeds: int | None = None  # how many (None: SEEDS, or QUICK_SEEDS with quick)
    region_px: int = 256  # side of a reviewed region, level-0 pixels (256 µm at EBHI's ~1 µm/px)
    min_tissue: float = 0.5
    shift: str = "ebhi-polyp"
    data: tuple[Path, ...] = ()  # image/mask folders, one slide each (empty: the default sets)
    tiles: int | None = None  # at most this many tiles per slide (None: every one)
    border: int = 64
    workdir: Path | None = None  # kept when given; a temporary folder (removed) otherwise
    quick: bool = False

    @property
    def seed_list(self) -> list[int]:
        n = self.seeds if self.seeds is not None else (QUICK_SEEDS if self.quick else SEEDS)
        return [self.seed + i for i in range(n)]


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


def resolve_data(spec: str) -> tuple[Path, ...]:
    """``--data``: comma-separated folders, each a path or the name of a shared ``seg/`` folder;
    each must hold ``images/`` and ``masks/``."""
    from engine.shared_data import SharedDataMissing, data_path

    out: list[Path] = []
    for item in (v.strip() for v in spec.split(",")):
        if not item:
            continue
        path = Path(item).expanduser()
        if not path.is_dir():
            try:
                path = data_path("seg", item)
            except SharedDataMissing:
                raise CocoPathError(f"--data {item}: no such folder (nor a shared seg/ set of that "
                                    f"name)") from None
        if not (path / "images").is_dir() or not (path / "masks").is_dir():
            raise CocoPathError(f"--data {path}: expected images/ and masks/ folders inside "
                                f"(the layout of shared/data/seg/*)")
        out.append(path)
    if not out:
        raise CocoPathError("--data: give at least one folder")
    return tuple(out)


def slide_folders(cfg: BenchConfig) -> list[tuple[str, Path]]:
    """(slide name, folder) of every benchmark slide."""
    from engine.shared_data import data_path

    if not cfg.data:
        if cfg.shift not in SHIFTS:
            raise CocoPathError(f"unknown shift set {cfg.shift!r}; valid: {', '.join(SHIFTS)}")
        return [("adenocarcinoma-unseen", data_path("seg", DEFAULT_SET)),
                (f"{cfg.shift}-shift", data_path("seg", cfg.shift))]
    out: list[tuple[str, Path]] = []
    names: set[str] = set()
    for folder in cfg.data:
        name, n = f"{folder.name}-unseen", 2
        while name in names:
            name, n = f"{folder.name}-unseen-{n}", n + 1
        names.add(name)
        out.append((name, Path(folder)))
    return out


def make_slides(cfg: BenchConfig, card: dict[str, Any], out: Path, mpp: float) -> _Slides:
    """One slide per folder (see the module docstring), of the images the model never saw."""
    from engine.finetune.simulate import build_slide, is_negative, unseen_pairs

    slides, info = [], []
    for i, (name, folder) in enumerate(slide_folders(cfg)):
        pairs, split = unseen_pairs(folder, card, seed=0)
        if cfg.tiles is not None and len(pairs) > cfg.tiles:
            rng = np.random.default_rng(cfg.seed + i)
            pairs = [pairs[t] for t in sorted(rng.permutation(len(pairs))[:cfg.tiles])]
        negative = is_negative(folder, card)
        s = build_slide(out, name, pairs, mpp=mpp, border=cfg.border, source=folder.name,
                        seed=cfg.seed + i, negative=negative)
        slides.append(s)
        info.append({"name": s.name, "source": s.source, "folder": str(folder),
                     "tiles": len(s.tiles), "size": list(s.size), "mpp": s.mpp,
                     "truth": ("all background: the model trained on this folder as a negative"
                               if negative else "the masks (255 = tumour)"),
                     "tumour_fraction": float(s.truth[s.known].mean()), "split": split})
    return _Slides(slides, info)


def review_next(caches: Sequence[Any], region_px: int, k: int, min_tissue: float
                ) -> list[tuple[int, Rect, float]]:
    """The k regions a pathologist reviews with Review next: (slide index, rect, score), from
    :func:`~engine.finetune.review.rank_slides` over all the slides' caches (every slide once before
    any twice, then wherever a region is worth most)."""
    from engine.finetune.review import rank_slides

    picks = [(i, r.rect, r.score) for i, r in rank_slides(caches, region_px, n=k,
                                                          min_tissue=min_tissue)]
    if len(picks) < k:
        raise CocoPathError(f"Review next found only {len(picks)} region(s) of {region_px} px, not {k}")
    return picks


def round_settings(cfg: BenchConfig, seed: int | None = None) -> Any:
    """The round's settings: only what the benchmark was given, on the round's defaults."""
    from engine.finetune.round import RoundSettings

    names = {f.name for f in dataclasses.fields(RoundSettings)}
    kw: dict[str, Any] = {"seed": cfg.seed if seed is None else seed, "use_teacher": cfg.use_teacher}
    steps = cfg.steps
    if steps is None and cfg.quick and "budget_s" not in names:
        steps = QUICK_STEPS  # a round that counts steps: the quick run's few
    if steps is not None:
        kw["steps"] = steps
    if cfg.budget_s is not None:
        if "budget_s" not in names:
            raise CocoPathError("this version's rounds have no wall-clock budget "
                                "(RoundSettings.budget_s); pass --steps instead of --budget")
        kw["budget_s"] = float(cfg.budget_s)
    for name in ("batch_size", "patch", "method"):
        value = getattr(cfg, name)
        if value is not None:
            kw[name] = value
    if cfg.teacher is not None:
        kw["teacher"] = str(cfg.teacher)
    factory = getattr(RoundSettings, "for_device", None)
    if factory is not None:
        return factory(cfg.device, **kw)  # CPU: the round sized for it
    return RoundSettings(device=cfg.device, **kw)


def _scores(matrices: Sequence[np.ndarray], names: Sequence[str], classes: Sequence[str]
            ) -> dict[str, Any]:
    from engine.finetune.simulate import summarize

    total = summarize(sum(matrices), classes)  # type: ignore[arg-type]
    return {"miou": total["miou"], "dice": total["dice"], "pixels": total["pixels"],
            "per_slide": {n: summarize(m, classes)["miou"] for n, m in zip(names, matrices)},
            "tumour_called": {n: float(m[:, 1:].sum() / max(m.sum(), 1))
                              for n, m in zip(names, matrices)}}


def _experiment(cfg: BenchConfig, work: Path, tag: str, slides: Sequence[Any], model: Path,
                rects: Sequence[tuple[int, Rect]], where: Sequence[np.ndarray],
                classes: Sequence[str], say: Say, seed: int) -> dict[str, Any]:
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
    result = run_round(pdir, round_settings(cfg, seed), progress=_progress_lines(tag, say))
    wall = time.perf_counter() - t0
    out: dict[str, Any] = {
        "rois": [{"slide": slides[i].name, "rect": list(r)} for i, r in rects],
        "round": {k: v for k, v in result.to_dict().items() if k != "curves"},
        "round_s": float(result.seconds), "round_wall_s": wall,
        "status": result.status, "activated": bool(result.activated),
        "heldout_before": result.before, "heldout_after": result.after,
    }
    if not result.version:
        # "done" without a version: no step beat the parent, which stays (its mIoU is before's)
        out.update({"miou_after": None, "kept_parent": result.status == "done",
                    "message": result.message})
        say(f"  {tag}: no new version ({result.status}: {result.message})")
        return out
    path = registry.get(result.version).path
    mats = [confusion(predict(s.path, path, work / "cache" / tag / s.name, device=cfg.device),
                      s, w, len(classes)) for s, w in zip(slides, where)]
    after = _scores(mats, [s.name for s in slides], classes)
    out.update({"version": result.version, "kept_parent": False, "miou_after": after["miou"], "dice_after": after["dice"],
                "per_slide_after": after["per_slide"], "tumour_called_after": after["tumour_called"]})
    say(f"  {tag}: round {result.seconds:.0f} s ({result.status}, wall {wall:.0f} s), "
        f"mIoU after {after['miou']:.4f}")
    if cfg.workdir is None:  # nothing is kept: free the disk as we go
        shutil.rmtree(work / "cache" / tag, ignore_errors=True)
        shutil.rmtree(pdir, ignore_errors=True)
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


def _roi_errors(caches: Sequence[Any], slides: Sequence[Any], rects: Sequence[tuple[int, Rect]]
                ) -> dict[str, int]:
    """The starting model's wrong pixels, and the tumour pixels, inside the ROIs (real tiles)."""
    from engine.finetune.simulate import confusion, roi_mask

    wrong = tumour = pixels = 0
    for i, (cache, s) in enumerate(zip(caches, slides)):
        mine = [r for si, r in rects if si == i]
        if not mine:
            continue
        m = confusion(cache, s, s.known & roi_mask(s, mine), 2)
        wrong += int(m.sum() - np.trace(m))
        tumour += int(m[1].sum())
        pixels += int(m.sum())
    return {"wrong_px": wrong, "tumour_px": tumour, "pixels": pixels}


def run_bench(cfg: BenchConfig, say: Say | None = None) -> dict[str, Any]:
    """Run the benchmark; returns the report (see the module docstring)."""
    import torch

    from engine.finetune.simulate import confusion, predict, random_regions, roi_mask
    from engine.inference.spec import load_spec, read_card

    say = say or (lambda _m: None)
    if cfg.quick:
        cfg = dataclasses.replace(cfg, ks=QUICK_KS,
                                  tiles=cfg.tiles if cfg.tiles is not None else QUICK_TILES)
    if not cfg.ks or min(cfg.ks) < 1:
        raise CocoPathError("k must be at least 1")
    seeds = cfg.seed_list
    if not seeds:
        raise CocoPathError("--seeds must be at least 1")
    model = resolve_model(cfg.model)
    spec, card = load_spec(model), read_card(model)
    if len(spec.classes) != 2:
        raise CocoPathError(f"{model}: the benchmark scores background vs tumour; the model has "
                            f"{len(spec.classes)} classes")
    round_settings(cfg)  # a setting the round refuses fails now, not after the slides are built
    from engine.training.ship import EBHI_MPP_ESTIMATE

    device = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    work = Path(cfg.workdir) if cfg.workdir else Path(tempfile.mkdtemp(prefix="cocopath-bench-ft-"))
    work.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    try:
        say(f"building slides in {work}")
        built = make_slides(cfg, card, work / "slides", EBHI_MPP_ESTIMATE)
        slides = built.slides
        names = [s.name for s in slides]
        say("predicting with the starting model")
        t0 = time.perf_counter()
        base = [predict(s.path, model, work / "cache" / "start" / s.name, device=cfg.device)
                for s in slides]
        predict_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        ranked = review_next(base, cfg.region_px, max(cfg.ks), cfg.min_tissue)
        rank_s = time.perf_counter() - t0
        results: dict[str, Any] = {}
        for k in sorted(set(cfg.ks)):
            review = [(i, rect) for i, rect, _ in ranked[:k]]
            per_seed = []
            for seed in seeds:
                rand = random_regions(slides, cfg.region_px, k, seed=1000 * seed + k,
                                      min_tissue=cfg.min_tissue)
                where = [s.known & ~roi_mask(s, [r for si, r in review + rand if si == i])
                         for i, s in enumerate(slides)]
                before = _scores([confusion(c, s, w, 2) for c, s, w in zip(base, slides, where)],
                                 names, spec.classes)
                say(f"k = {k}, seed {seed}: mIoU before {before['miou']:.4f} on "
                    f"{before['pixels']} uncorrected px")
                runs = {name: _experiment(cfg, work, f"k{k}-s{seed}-{name}", slides, model, rects,
                                          where, spec.classes, say, seed)
                        for name, rects in (("review", review), ("random", rand))}
                errors = {"review": _roi_errors(base, slides, review),
                          "random": _roi_errors(base, slides, rand)}
                per_seed.append(_seed_entry(seed, before, runs, errors))
            results[str(k)] = _k_entry(per_seed, [s for _, _, s in ranked[:k]],
                                       [{"slide": names[i], "rect": list(r)} for i, r in review],
                                       device)
        report = {
            "benchmark": "finetune", "quick": cfg.quick,
            "model": {"path": str(model), "name": spec.name, "version": spec.version,
                      "mpp": spec.mpp, "tile": spec.tile, "classes": list(spec.classes)},
            "slides": built.info,
            "settings": {**{k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()
                            if k not in ("workdir", "model", "data")},
                         "data": [str(d) for d in cfg.data], "seed_list": seeds,
                         "round": _jsonable(asdict(round_settings(cfg)))},
            "protocol": ("mIoU (background, tumour) on the real tiles outside every ROI of that k "
                         "and seed (Review next and random alike), at the prediction's resolution; "
                         "miou_after is the round's new version whether or not it was activated "
                         "(a round that kept its parent because no step beat it scores the "
                         "parent), miou_active_after the version active after the round; k-level figures "
                         "are means over the seeds (the round's seed and the random regions change "
                         "with the seed, Review next's regions do not)"),
            "device": device, "cpu_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
            "host": platform.node(), "predict_s": predict_s, "rank_s": rank_s,
            "k": results, "targets": targets(results, device),
            "total_s": time.perf_counter() - t_start,
        }
        return report
    finally:
        if cfg.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


def _seed_entry(seed: int, before: dict[str, Any], runs: dict[str, dict[str, Any]],
                errors: dict[str, dict[str, int]]) -> dict[str, Any]:
    rv, rd = runs["review"], runs["random"]

    def after(run: dict[str, Any]) -> float | None:
        """The round's outcome: its new version, or the parent it kept when no step beat it."""
        if run["miou_after"] is None and run.get("kept_parent"):
            return before["miou"]
        return run["miou_after"]

    def active(run: dict[str, Any]) -> float:
        return run["miou_after"] if run["activated"] and run["miou_after"] is not None \
            else before["miou"]

    def gain(value: float | None) -> float | None:
        return None if value is None else value - before["miou"]

    return {
        "seed": seed, "miou_before": before["miou"], "dice_before": before["dice"],
        "miou_after": after(rv), "miou_after_random": after(rd),
        "miou_active_after": active(rv), "miou_active_after_random": active(rd),
        "gain": gain(after(rv)), "gain_random": gain(after(rd)),
        "gain_active": gain(active(rv)), "gain_active_random": gain(active(rd)),
        "eval_pixels": before["pixels"], "per_slide_before": before["per_slide"],
        "tumour_called_before": before["tumour_called"],
        "roi_errors": errors["review"], "roi_errors_random": errors["random"],
        "review": rv, "random": rd,
    }


def _stats(values: Sequence[float | None]) -> dict[str, Any]:
    """Mean, sample sd (None below two values), min, max and count of the values that exist."""
    v = [float(x) for x in values if x is not None]
    return {"mean": statistics.fmean(v) if v else None,
            "sd": statistics.stdev(v) if len(v) >= 2 else None,
            "min": min(v) if v else None, "max": max(v) if v else None, "n": len(v),
            "missing": len(values) - len(v)}


def _mean(values: Sequence[float | None]) -> float | None:
    return _stats(values)["mean"]


def beats(review: Sequence[float | None], random: Sequence[float | None]) -> dict[str, Any]:
    """Whether Review next's mean gain exceeds random's by more than one sd (the larger of the two
    strategies' sample sds); None below two seeds with a result each."""
    a, b = _stats(review), _stats(random)
    paired = [x - y for x, y in zip(review, random) if x is not None and y is not None]
    if a["mean"] is None or b["mean"] is None:
        return {"margin": None, "sd": None, "paired_sd": None, "beats": None}
    margin = a["mean"] - b["mean"]
    sd = max(a["sd"], b["sd"]) if a["sd"] is not None and b["sd"] is not None else None
    return {"margin": margin, "sd": sd,
            "paired_sd": statistics.stdev(paired) if len(paired) >= 2 else None,
            "beats": None if sd is None else bool(margin > sd)}


def _k_entry(per_seed: list[dict[str, Any]], review_scores: Sequence[float],
             review_rois: list[dict[str, Any]], device: str) -> dict[str, Any]:
    target = TARGET_S.get(device, TARGET_S["cuda"])
    col = lambda key: [e[key] for e in per_seed]  # noqa: E731
    walls = [e[s]["round_wall_s"] for e in per_seed for s in STRATEGIES]
    g_rv, g_rd = _stats(col("gain")), _stats(col("gain_random"))
    changes = [(e[f"gain{suffix}"], e["seed"], s) for e in per_seed
               for s, suffix in (("review", ""), ("random", "_random"))]
    kept = sum(1 for e in per_seed for s in STRATEGIES if e[s].get("kept_parent"))
    actives = [e[f"gain_active{suffix}"] for e in per_seed for suffix in ("", "_random")]
    known = [c for c in changes if c[0] is not None]
    worst = min(known, key=lambda c: c[0]) if known else None
    return {
        # means over the seeds, under the keys of the one-seed report
        "miou_before": _mean(col("miou_before")), "miou_after": _mean(col("miou_after")),
        "miou_after_random": _mean(col("miou_after_random")),
        "dice_before": _mean(col("dice_before")),
        "miou_active_after": _mean(col("miou_active_after")),
        "miou_active_after_random": _mean(col("miou_active_after_random")),
        "gain": g_rv["mean"], "gain_random": g_rd["mean"],
        "gain_sd": g_rv["sd"], "gain_random_sd": g_rd["sd"],
        "gain_stats": g_rv, "gain_random_stats": g_rd,
        "gain_active": _mean(col("gain_active")), "gain_active_random": _mean(col("gain_active_random")),
        "review_vs_random": (g_rv["mean"] / g_rd["mean"]) if g_rv["mean"] is not None
        and g_rd["mean"] is not None and g_rd["mean"] > 0 else None,
        "review_beats_random": beats(col("gain"), col("gain_random")),
        # what the pathologist sees after the round: the active version (a refused one counts as no change)
        "review_beats_random_active": beats(col("gain_active"), col("gain_active_random")),
        "not_worse": all(c[0] >= -NOT_WORSE_TOLERANCE for c in known) if known else None,
        "not_worse_active": all(g >= -NOT_WORSE_TOLERANCE for g in actives),
        "worst_change": None if worst is None else {"change": worst[0], "seed": worst[1],
                                                    "strategy": worst[2]},
        "rounds_without_version": len(changes) - len(known),  # failed or cancelled
        "rounds_kept_parent": kept,  # done, but no step beat the parent: gain 0
        "round_s": _mean([e["review"]["round_s"] for e in per_seed]),
        "round_s_random": _mean([e["random"]["round_s"] for e in per_seed]),
        "round_wall_s": _stats(walls), "round_target_s": target,
        "round_within_target": max(walls) <= target,
        "eval_pixels": _mean(col("eval_pixels")),
        "roi_errors": _mean([e["roi_errors"]["wrong_px"] for e in per_seed]),
        "roi_errors_random": _mean([e["roi_errors_random"]["wrong_px"] for e in per_seed]),
        "review_scores": list(review_scores), "review_rois": review_rois,
        "seeds": per_seed,
    }


def targets(results: dict[str, Any], device: str) -> dict[str, Any]:
    """The issue's targets, decided from the per-k entries."""
    entries = list(results.values())
    key = str(GAIN_TARGET_K)
    k10 = results.get(key)
    flags = [e["not_worse"] for e in entries if e["not_worse"] is not None]
    walls = [w for e in entries for s in e["seeds"] for w in
             (s["review"]["round_wall_s"], s["random"]["round_wall_s"])]
    target = TARGET_S.get(device, TARGET_S["cuda"])
    worst = [dict(e["worst_change"], k=int(k)) for k, e in results.items() if e["worst_change"]]
    return {
        "not_worse_tolerance": NOT_WORSE_TOLERANCE,
        "every_round_not_worse": all(flags) if flags else None,
        "every_round_not_worse_active": all(e["not_worse_active"] for e in entries),
        "worst_round": min(worst, key=lambda w: w["change"]) if worst else None,
        "rounds": sum(2 * len(e["seeds"]) for e in entries),
        "rounds_without_version": sum(e["rounds_without_version"] for e in entries),
        "rounds_kept_parent": sum(e["rounds_kept_parent"] for e in entries),
        "gain_target": GAIN_TARGET, "gain_target_k": GAIN_TARGET_K,
        "mean_gain_at_target_k": None if k10 is None else k10["gain"],
        "mean_gain_at_target_k_random": None if k10 is None else k10["gain_random"],
        "mean_gain_target_met": None if k10 is None or k10["gain"] is None
        else bool(k10["gain"] >= GAIN_TARGET),
        "mean_active_gain_at_target_k": None if k10 is None else k10["gain_active"],
        "mean_active_gain_at_target_k_random": None if k10 is None else k10["gain_active_random"],
        "review_beats_random": {k: e["review_beats_random"]["beats"] for k, e in results.items()},
        "review_beats_random_active": {k: (e.get("review_beats_random_active") or {}).get("beats")
                                       for k, e in results.items()},
        "round_target_s": target,
        "round_wall_s": {"mean": statistics.fmean(walls) if walls else None,
                         "max": max(walls) if walls else None, "n": len(walls)},
        "round_within_target": bool(walls) and max(walls) <= target,
        "guard": guard_rates(results),
    }


def _guard_lines(g: dict[str, Any] | None) -> list[str]:
    if not g:
        return []
    return [f"- The guard against the truth: {g['published_refused']} published version(s) not activated, "
            f"{g['false_rejections']} of them better on the unreviewed area (false-rejection rate "
            f"{_fmt(g['false_rejection_rate'], '.2f')}); {g['published_activated']} activated, "
            f"{g['false_acceptances']} of them worse (false-acceptance rate "
            f"{_fmt(g['false_acceptance_rate'], '.2f')})"
            + (f"; {g['activated_blends']} of the activated are blends of a step's weights with the parent's"
               if g.get("activated_blends") else "") + "."]


def guard_rates(results: dict[str, Any]) -> dict[str, Any]:
    """How the round's guard decided against what the slides' truth says: a published version it
    did not activate although it was better on the unreviewed area (a false rejection), and one
    it activated although it was worse there (a false acceptance), beyond the tolerance."""
    refused = accepted = false_rejections = false_acceptances = blended = 0
    for e in results.values():
        for s in e["seeds"]:
            for strategy, suffix in (("review", ""), ("random", "_random")):
                run, gain = s[strategy], s.get(f"gain{suffix}")
                if not run.get("version") or gain is None:
                    continue
                if run.get("activated"):
                    accepted += 1
                    false_acceptances += gain < -NOT_WORSE_TOLERANCE
                    blend = ((run.get("round") or {}).get("data") or {}).get("anchored", {}).get("blend")
                    blended += blend is not None and blend < 1.0
                else:
                    refused += 1
                    false_rejections += gain > NOT_WORSE_TOLERANCE
    return {"published_refused": refused, "published_activated": accepted,
            "false_rejections": false_rejections, "false_acceptances": false_acceptances,
            "activated_blends": blended,
            "false_rejection_rate": false_rejections / refused if refused else None,
            "false_acceptance_rate": false_acceptances / accepted if accepted else None}


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(d, default=str))


def _fmt(v: float | None, spec: str = ".4f") -> str:
    return "–" if v is None else format(v, spec)


def _pm(mean: float | None, sd: float | None) -> str:
    return _fmt(mean, "+.4f") + ("" if sd is None else f" ± {sd:.4f}")


def _yes(v: bool | None) -> str:
    return "–" if v is None else ("yes" if v else "**no**")


def markdown(report: dict[str, Any]) -> str:
    """The report as markdown: slides, one row per k and strategy, the targets, every seed."""
    t = report["targets"]
    lines = [f"# bench finetune{' (quick)' if report['quick'] else ''}", "",
             f"Model `{report['model']['name']}` ({report['model']['version']}); device "
             f"{report['device']} ({report['cpu_threads']} torch threads, "
             f"{report.get('cpu_count')} CPUs); seeds {report['settings'].get('seed_list')}.", "",
             "| slide | folder | tiles | size | truth | images from |", "|---|---|---|---|---|---|"]
    for s in report["slides"]:
        split = s.get("split") or {}
        lines.append(f"| {s['name']} | {s['source']} | {s['tiles']} | {s['size'][0]}×{s['size'][1]} "
                     f"| {s.get('truth', 'masks')} (tumour {100 * s['tumour_fraction']:.0f} %) "
                     f"| {split.get('from', '–')}; {len(split.get('cases') or [])} cases, "
                     f"{len(split.get('left_out_seen_cases') or [])} seen cases left out |")
    lines += ["", report["protocol"] + ".", "",
              "| k | strategy | mIoU before | after | gain mean ± sd | worst gain | active gain "
              "| beats random by > 1 sd | model's wrong px in ROIs | round wall s (mean / max) |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for k, e in sorted(report["k"].items(), key=lambda kv: int(kv[0])):
        b = e["review_beats_random"]
        for name, run, suffix in (("Review next", "review", ""), ("random", "random", "_random")):
            st = e[f"gain{suffix}_stats"]
            walls = [s[run]["round_wall_s"] for s in e["seeds"]]
            lines.append(
                f"| {k} | {name} | {_fmt(e['miou_before'])} | {_fmt(e['miou_after' + suffix])} | "
                f"{_pm(st['mean'], st['sd'])} | {_fmt(st['min'], '+.4f')} | "
                f"{_fmt(e['gain_active' + suffix], '+.4f')} | "
                + (f"{_yes(b['beats'])} (margin {_fmt(b['margin'], '+.4f')}, sd {_fmt(b['sd'])})"
                   if not suffix else "") + " | "
                f"{_fmt(e['roi_errors' + suffix], '.0f')} | "
                f"{statistics.fmean(walls):.0f} / {max(walls):.0f} |")
    worst = t["worst_round"]
    lines += ["", "## Targets", "",
              f"- Every round ≥ before − {t['not_worse_tolerance']} on the unreviewed area: "
              f"{_yes(t['every_round_not_worse'])} (new versions), "
              f"{_yes(t['every_round_not_worse_active'])} (active version after the round)"
              + (f"; worst {worst['change']:+.4f} (k = {worst['k']}, seed {worst['seed']}, "
                 f"{worst['strategy']})" if worst else "")
              + (f"; {t['rounds_kept_parent']} round(s) kept the parent (no step beat it: gain 0)"
                 if t.get("rounds_kept_parent") else "")
              + (f"; {t['rounds_without_version']} round(s) failed"
                 if t["rounds_without_version"] else "") + ".",
              f"- Mean gain at k = {t['gain_target_k']} ≥ +{t['gain_target']}: "
              f"{_yes(t['mean_gain_target_met'])} (Review next "
              f"{_fmt(t['mean_gain_at_target_k'], '+.4f')}, random "
              f"{_fmt(t['mean_gain_at_target_k_random'], '+.4f')}).",
              f"- Mean gain of the version active after the round at k = {t['gain_target_k']}: Review next "
              f"{_fmt(t.get('mean_active_gain_at_target_k'), '+.4f')}, random "
              f"{_fmt(t.get('mean_active_gain_at_target_k_random'), '+.4f')}.",
              "- Review next beats random by more than one sd: "
              + ", ".join(f"k = {k}: {_yes(v)}" for k, v in sorted(t["review_beats_random"].items(),
                                                                   key=lambda kv: int(kv[0])))
              + " (the round's new version); "
              + ", ".join(f"k = {k}: {_yes(v)}" for k, v in sorted(
                  (t.get("review_beats_random_active") or {}).items(), key=lambda kv: int(kv[0])))
              + " (the version active after the round).",
              f"- Round wall time ≤ {t['round_target_s']:.0f} s on {report['device']}: "
              f"{_yes(t['round_within_target'])} (mean {_fmt(t['round_wall_s']['mean'], '.0f')} s, "
              f"max {_fmt(t['round_wall_s']['max'], '.0f')} s over {t['round_wall_s']['n']} rounds).",
              *_guard_lines(t.get("guard")),
              "", "## Every seed", "",
              "| k | seed | mIoU before | after (Review next) | after (random) | activated "
              "(review / random) | round wall s (review / random) |", "|---|---|---|---|---|---|---|"]
    for k, e in sorted(report["k"].items(), key=lambda kv: int(kv[0])):
        for s in e["seeds"]:
            lines.append(f"| {k} | {s['seed']} | {_fmt(s['miou_before'])} | "
                         f"{_fmt(s['miou_after'])} ({_fmt(s['gain'], '+.4f')}) | "
                         f"{_fmt(s['miou_after_random'])} ({_fmt(s['gain_random'], '+.4f')}) | "
                         f"{s['review']['activated']} / {s['random']['activated']} | "
                         f"{s['review']['round_wall_s']:.0f} / {s['random']['round_wall_s']:.0f} |")
    lines += ["", f"Prediction of the slides by the starting model {report.get('predict_s', 0):.0f} s; "
              f"Review next ranking {report.get('rank_s', 0):.1f} s; total {report['total_s']:.0f} s.", ""]
    return "\n".join(lines)


def figures(report: dict[str, Any]) -> list[str]:
    """One line per k (before → after, gains mean ± sd, beats random, round time), then the targets."""
    out = []
    for k, e in sorted(report["k"].items(), key=lambda kv: int(kv[0])):
        b = e["review_beats_random"]
        out.append(f"k={k}: mIoU {_fmt(e['miou_before'])} → {_fmt(e['miou_after'])} "
                   f"({_pm(e['gain'], e['gain_sd'])}) with Review next, "
                   f"{_fmt(e['miou_after_random'])} ({_pm(e['gain_random'], e['gain_random_sd'])}) "
                   f"with random ROIs over {len(e['seeds'])} seed(s); beats random by > 1 sd: "
                   f"{_yes(b['beats'])}; round {e['round_wall_s']['mean']:.0f} s mean, "
                   f"{e['round_wall_s']['max']:.0f} s max on {report['device']} "
                   f"(target ≤ {e['round_target_s']:.0f} s)")
    t = report["targets"]
    out.append(f"targets: every round ≥ before − {t['not_worse_tolerance']}: "
               f"{_yes(t['every_round_not_worse'])} (active: {_yes(t['every_round_not_worse_active'])}); "
               f"mean gain at k = {t['gain_target_k']} ≥ +{t['gain_target']}: "
               f"{_yes(t['mean_gain_target_met'])}; round within {t['round_target_s']:.0f} s: "
               f"{_yes(t['round_within_target'])}")
    return out


# -- command line ------------------------------------------------------------------------------


def register_bench(bench: argparse._SubParsersAction) -> None:
    """Add ``bench finetune`` to the ``cocopath-engine bench`` sub-parsers."""
    b = bench.add_parser("finetune", help="simulated pathologist: corrections → round → mIoU where "
                                          "nobody corrected (JSON + markdown)")
    b.add_argument("--quick", action="store_true",
                   help=f"k = 10 only, {QUICK_SEEDS} seed, at most {QUICK_TILES} tiles per slide")
    b.add_argument("--out", type=Path, default=None, help="write the JSON here (and OUT.md beside it)")
    b.add_argument("--model", type=Path, default=None,
                   help="starting checkpoint (default: the shipped student)")
    b.add_argument("--data", default=None, metavar="DIR[,DIR…]",
                   help="image/mask folders (the layout of shared/data/seg/*; a bare name is a "
                        "shared seg/ set), one slide each, of the images whose case the model never "
                        "saw (default: ebhi-adenocarcinoma and the --shift set)")
    b.add_argument("--teacher", type=Path, default=None, help="teacher checkpoint for the round")
    b.add_argument("--no-teacher", action="store_true", help="distil from the frozen student")
    b.add_argument("--budget", type=float, default=None, metavar="S",
                   help="the round's wall-clock budget in seconds (default: the round's)")
    b.add_argument("--steps", type=int, default=None, help="round steps (default: the round's)")
    b.add_argument("--k", default=None, help=f"comma-separated k values (default {','.join(map(str, KS))})")
    b.add_argument("--seeds", type=int, default=None,
                   help=f"how many seeds (default {SEEDS}; {QUICK_SEEDS} with --quick)")
    b.add_argument("--device", default="auto", help="auto, cpu or cuda")
    b.add_argument("--batch-size", type=int, default=None, help="round batch size (default: the round's)")
    b.add_argument("--patch", type=int, default=None, help="round patch side (default: the round's)")
    b.add_argument("--method", default=None, help="the round's method: anchored, or a "
                                                  "distillation config name or .toml "
                                                  "(default: the round's)")
    b.add_argument("--region-px", type=int, default=256, help="side of a reviewed region (pixels)")
    b.add_argument("--tiles", type=int, default=None, help="at most this many tiles per slide")
    b.add_argument("--shift", default=None, choices=SHIFTS,
                   help="the default shifted slide's tiles (ebhi-polyp); not with --data")
    b.add_argument("--seed", type=int, default=0, help="the first seed")
    b.add_argument("--workdir", type=Path, default=None, help="keep slides, projects and caches here")
    b.set_defaults(func=_bench_command)


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    ks = KS
    if args.k:
        try:
            ks = tuple(int(v) for v in args.k.split(","))
        except ValueError:
            raise CocoPathError(f"--k {args.k!r}: give comma-separated whole numbers") from None
    if args.steps is not None and args.steps < 1:
        raise CocoPathError("--steps must be at least 1")
    if args.budget is not None and not args.budget > 0:
        raise CocoPathError("--budget must be a positive number of seconds")
    for name in ("batch_size", "patch", "tiles", "seeds"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise CocoPathError(f"--{name.replace('_', '-')} must be at least 1")
    if args.data and args.shift:
        raise CocoPathError("--shift picks the default shifted set; with --data, name every "
                            "folder there")
    return BenchConfig(model=args.model, ks=ks, steps=args.steps, budget_s=args.budget,
                       batch_size=args.batch_size, patch=args.patch, method=args.method,
                       use_teacher=not args.no_teacher, teacher=args.teacher, device=args.device,
                       seed=args.seed, seeds=args.seeds, region_px=args.region_px,
                       shift=args.shift or "ebhi-polyp",
                       data=resolve_data(args.data) if args.data else (), tiles=args.tiles,
                       workdir=args.workdir, quick=args.quick)


def _bench_command(args: argparse.Namespace) -> int:
    import sys

    cfg = config_from_args(args)
    report = run_bench(cfg, say=lambda m: print(m, file=sys.stderr, flush=True))
    return emit_report(args.out, report, markdown, figures)


def emit_report(out: Path | None, report: dict[str, Any], md: Callable[[dict[str, Any]], str],
                lines: Callable[[dict[str, Any]], list[str]]) -> int:
    """A benchmark's report: the JSON at ``out`` and its Markdown beside it, or the JSON on stdout;
    then its figures, one per line (on stderr when stdout holds the JSON)."""
    import sys

    if out:
        from engine.atomic import write_report

        write_report(out, report, md(report))
    else:
        print(json.dumps(report, indent=1, default=str))
    for line in lines(report):
        print(line, file=sys.stderr if not out else sys.stdout)
    return 0

"""One fine-tuning round: learn from the pathologist's corrections, measure, publish.

1. The current model is the registry's active version (an empty registry is seeded with the shipped
   default student, :func:`~engine.finetune.registry.default_model_path`).
2. Patches are gathered from the correction ROIs of the chosen slides at the model's µm/px (partial
   labels: outside every ROI, pixels are ignored), plus unlabelled tissue patches of the same
   slides; a share of the ROIs is held out, by region (:mod:`engine.finetune.data`).
3. With a teacher (given, the project's ``models/teacher.safetensors``, or the shipped one), the
   teacher is first adapted to the corrections for a few steps; then the student is trained with
   partial-label CE + Dice and CoCo-full distillation from that teacher on every patch
   (:mod:`engine.finetune.objective`). Without one, the student distils from a frozen copy of
   itself (what it knew), and the result says so.
4. The new student and the current one are measured on the held-out ROIs (labelled pixels only);
   the new version is published to the registry with its metrics, parent, data and settings, and
   made active if it is not worse (``activate``: "if-not-worse", "always", "never").

Cancellable at any point before publishing, with the registry unchanged; publishing is atomic
(a killed round leaves no half-written version). Importing this module needs no torch.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from engine.errors import CocoPathError
from engine.jobs import CancelToken, Progress

log = logging.getLogger(__name__)

ACTIVATE_CHOICES = ("if-not-worse", "always", "never")
#: The stage of the progress events that carry a held-out measurement during training.
EVAL_STAGE = "heldout"
STATUSES = ("done", "cancelled", "nothing-to-learn", "failed")

ProgressFn = Callable[[Progress], None]


@dataclass(frozen=True)
class RoundSettings:
    steps: int = 150  # CPU default sized to finish a round in minutes
    slides: tuple[str, ...] | None = None  # slide ids or paths in the project; None = all with ROIs
    use_teacher: bool = True  # adapt + distil from a teacher when one is given/registered
    teacher: str | None = None  # teacher checkpoint path
    holdout: float = 0.25  # share of ROIs held out (by region)
    batch_size: int = 8
    patch: int = 256
    unlabelled_per_roi: int = 4  # unlabelled tissue patches per ROI for distillation
    seed: int = 0
    device: str = "auto"
    activate: str = "if-not-worse"  # "if-not-worse" | "always" | "never"
    # -- additions ----------------------------------------------------------------------------
    lr: float = 3e-4  # student (and teacher adaptation) learning rate, poly decay
    method: str = "coco-full"  # distillation config (resources/configs/distill/<method>.toml)
    teacher_steps: int | None = None  # teacher adaptation steps (None: a fifth of ``steps``)
    paraphraser_steps: int | None = None  # paraphraser pre-training (None: a fifth of ``steps``)
    eval_every: int | None = None  # held-out measurement during training (None: 5 times a round)

    def validate(self) -> None:
        if self.steps < 1:
            raise CocoPathError(f"steps must be at least 1, not {self.steps}")
        if self.batch_size < 1:
            raise CocoPathError(f"batch size must be at least 1, not {self.batch_size}")
        if not 0 < self.holdout < 1:
            raise CocoPathError(f"the held-out share must be between 0 and 1, not {self.holdout}")
        if self.patch % 32 or self.patch < 64:
            raise CocoPathError(f"patch size {self.patch} must be a multiple of 32, at least 64")
        if self.activate not in ACTIVATE_CHOICES:
            raise CocoPathError(f"activate must be one of {', '.join(ACTIVATE_CHOICES)}, "
                                f"not {self.activate!r}")
        if self.unlabelled_per_roi < 0:
            raise CocoPathError("unlabelled patches per ROI cannot be negative")
        if not self.lr > 0:
            raise CocoPathError(f"the learning rate must be positive, not {self.lr}")

    @property
    def adapt_steps(self) -> int:
        return self.teacher_steps if self.teacher_steps is not None else max(1, self.steps // 5)

    @property
    def para_steps(self) -> int:
        return self.paraphraser_steps if self.paraphraser_steps is not None else max(1, self.steps // 5)

    @property
    def eval_interval(self) -> int:
        return self.eval_every if self.eval_every else max(1, self.steps // 5)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["slides"] = list(self.slides) if self.slides is not None else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RoundSettings:
        names = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        if kw.get("slides") is not None:
            kw["slides"] = tuple(str(s) for s in kw["slides"])
        return cls(**kw)


@dataclass(frozen=True)
class RoundResult:
    status: str  # "done" | "cancelled" | "nothing-to-learn" | "failed"
    version: str | None  # the new version, when one was published
    parent: str | None
    before: dict  # held-out metrics of the current model {"miou", "dice", "pixels", …}
    after: dict  # held-out metrics of the new one
    activated: bool
    seconds: float
    message: str
    curves: dict  # {"loss": [...], "heldout_miou": [(step, value), ...], ...}
    # -- addition: what the round used (slides, ROIs, patches, notes, device, teacher, batch) -----
    data: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"unknown round status {self.status!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (tuples become lists)."""
        import json

        return json.loads(json.dumps(asdict(self), default=str))


def run_round(project_dir: Path, settings: RoundSettings, progress: ProgressFn | None = None,
              cancel: CancelToken | None = None) -> RoundResult:
    """Run one round on the project in ``project_dir`` (see the module docstring). User errors
    (no model, a missing slide, classes that do not fit, …) give a "failed" result whose message
    says what to do; only programming errors raise."""
    from engine.finetune.data import GatherCancelled
    from engine.finetune.loop import RoundCancelled

    t0 = time.perf_counter()
    state = _State(progress)
    try:
        settings.validate()
        return _run(Path(project_dir), settings, state, cancel, t0)
    except (RoundCancelled, GatherCancelled):
        return RoundResult("cancelled", None, state.parent, state.before, {}, False,
                           time.perf_counter() - t0, "cancelled: the model registry is unchanged",
                           state.curves, state.data)
    except CocoPathError as exc:
        log.info("round failed: %s", exc)
        return RoundResult("failed", None, state.parent, state.before, {}, False,
                           time.perf_counter() - t0, str(exc), state.curves, state.data)


class _State:
    """What a round has learnt so far (for a cancelled or failed result), and its progress/ETA."""

    def __init__(self, progress: ProgressFn | None) -> None:
        self.progress = progress
        self.parent: str | None = None
        self.before: dict = {}
        self.data: dict = {}
        self.curves: dict[str, Any] = {"loss": [], "heldout_miou": [], "teacher_loss": [],
                                       "terms": {}, "batch_size": []}
        self.plan: dict[str, int] = {}
        self._stage_t0: dict[str, float] = {}

    def emit(self, stage: str, step: int, total: int, metrics: dict[str, float] | None = None,
             message: str = "") -> None:
        if self.progress is None:
            return
        now = time.perf_counter()
        t0 = self._stage_t0.setdefault(stage, now)
        m = dict(metrics or {})
        if stage in self.plan and step > 0:
            rate = (now - t0) / step
            later = list(self.plan)[list(self.plan).index(stage) + 1:]
            m["eta_s"] = rate * (total - step + sum(self.plan[s] for s in later))
        self.progress(Progress(stage, step, total, m, message))


def _resolve_teacher(settings: RoundSettings, registry: Any) -> Path | None:
    from engine.finetune.registry import default_teacher_path

    if not settings.use_teacher:
        return None
    if settings.teacher:
        p = Path(settings.teacher).expanduser()
        if not p.is_file():
            raise CocoPathError(f"{p}: no such teacher checkpoint")
        return p
    return registry.teacher_path() or default_teacher_path()


def _current_model(registry: Any) -> Any:
    from engine.finetune.registry import default_model_path

    current = registry.active()
    if current is not None:
        return current
    if registry.versions():
        raise CocoPathError(f"{registry.root}: no model version is active; activate one "
                            f"(`cocopath-engine models activate VERSION --project …`)")
    default = default_model_path()
    if default is None:
        raise CocoPathError("the project has no model and no default student is installed "
                            "(resources/models/cocopath-student-ebhi.safetensors, or "
                            "$COCOPATH_DEFAULT_MODEL); import one with `cocopath-engine models "
                            "import FILE --project …`")
    seeded = registry.ensure_seeded(default)
    if seeded is None:
        raise CocoPathError(f"{default}: the default model could not be added to the registry")
    return seeded


def _run(project_dir: Path, settings: RoundSettings, state: _State, cancel: CancelToken | None,
         t0: float) -> RoundResult:
    from engine.finetune.data import GatherOptions, gather
    from engine.finetune.loop import Batcher, check, heldout_scores, train_stage
    from engine.finetune.objective import FinetuneObjective, PartialSupervised, finetune_config, frozen_copy
    from engine.finetune.registry import ModelRegistry
    from engine.training.checkpoints import load_model
    from engine.training.trainer import pick_device, seed_everything

    registry = ModelRegistry.of_project(project_dir)
    from engine.annotations.project import Project  # a clear error before touching the registry

    Project.open(project_dir, quick_check=False).close()
    current = _current_model(registry)
    state.parent = current.version
    student, card = load_model(current.path)
    classes = list(card.get("classes") or ["background"] + [f"class {i}" for i in range(1, student.classes)])
    inp = card.get("input") or {}
    mean, std = inp.get("mean") or (0.485, 0.456, 0.406), inp.get("std") or (0.229, 0.224, 0.225)

    state.emit("gather", 0, 1, message="reading the correction ROIs")
    opts = GatherOptions(settings.patch, settings.holdout, settings.unlabelled_per_roi, settings.seed,
                         settings.slides)
    data = gather(project_dir, card, opts, lambda p: state.emit(p.stage, p.step, p.total, message=p.message),
                  cancel)
    if data is None:
        where = "the chosen slides" if settings.slides is not None else "any slide of the project"
        return RoundResult("nothing-to-learn", None, current.version, {}, {}, False,
                           time.perf_counter() - t0,
                           f"nothing to learn: no correction ROI on {where}; draw one (O) around "
                           f"a region you reviewed", state.curves, {})
    state.data = data.summary()
    notes = list(data.notes)

    device = pick_device(settings.device)
    seed_everything(settings.seed)
    teacher_path = _resolve_teacher(settings, registry)
    state.plan = {"teacher": settings.adapt_steps if teacher_path else 0,
                  "paraphraser": settings.para_steps, "student": settings.steps}
    state.data.update(device=str(device), parent=current.version)
    check(cancel)
    state.emit("evaluate", 0, 1, message=f"measuring {current.version} on the held-out ROIs")
    before = heldout_scores(student, data.heldout, mean, std, device, classes, settings.batch_size, cancel)
    state.before = before
    batcher = Batcher(data.train, data.unlabelled, mean, std, settings.seed)
    batch = settings.batch_size

    def backoff(stage: str) -> Callable[[int, int], None]:
        def note(step: int, size: int) -> None:
            state.curves["batch_size"].append((stage, step, size))
        return note

    if teacher_path is not None:
        teacher, t_card = load_model(teacher_path)
        if teacher.classes != student.classes:
            raise CocoPathError(f"{teacher_path}: the teacher predicts {teacher.classes} classes, the "
                                f"student {student.classes}; choose a teacher of the same classes")
        state.data["teacher"] = {"path": str(teacher_path), "model": t_card.get("model"),
                                 "adapted_steps": settings.adapt_steps}

        def on_teacher(step: int, total: int, terms: dict[str, float], size: int) -> None:
            state.curves["teacher_loss"].append(terms["total"])
            state.emit("teacher", step, total, _loss_terms(terms))

        res = train_stage(PartialSupervised(teacher), batcher, stage="teacher", steps=settings.adapt_steps,
                          batch_size=batch, lr=settings.lr, device=device, cancel=cancel, mix=False,
                          on_step=on_teacher, on_backoff=backoff("teacher"))
        batch = res.batch_size
        teacher_note = f"teacher {Path(teacher_path).name} adapted for {settings.adapt_steps} steps"
    else:
        teacher = frozen_copy(student)
        state.data["teacher"] = {"path": None, "frozen_student": current.version}
        teacher_note = (f"no teacher: distilled from the frozen current student ({current.version})"
                        + ("" if not settings.use_teacher else " (none found)"))
    notes.insert(0, teacher_note)
    check(cancel)

    config = finetune_config(settings.method, settings.para_steps)
    objective = FinetuneObjective(config, teacher, student).to(device)
    last: dict[int, dict] = {}  # the latest held-out measurement, by step
    try:
        objective.prepare(batcher.images(batch, device), cancel,
                          lambda p: state.emit(p.stage, p.step, p.total, dict(p.metrics)))
        check(cancel)

        def on_student(step: int, total: int, terms: dict[str, float], size: int) -> None:
            state.curves["loss"].append(terms["total"])
            for k, v in _loss_terms(terms).items():
                state.curves["terms"].setdefault(k, []).append(v)
            state.emit("student", step, total, _loss_terms(terms))
            if step % settings.eval_interval == 0 or step == total:
                m = heldout_scores(student, data.heldout, mean, std, device, classes, size, cancel)
                last.clear()
                last[step] = m
                state.curves["heldout_miou"].append((step, m["miou"]))
                state.emit(EVAL_STAGE, step, total, {"heldout_miou": m["miou"]})

        res = train_stage(objective, batcher, stage="student", steps=settings.steps, batch_size=batch,
                          lr=settings.lr, device=device, cancel=cancel, mix=True, on_step=on_student,
                          on_backoff=backoff("student"))
    finally:
        objective.close()
    state.data["batch_size"] = res.batch_size
    after = last.get(settings.steps) or heldout_scores(student, data.heldout, mean, std, device, classes,
                                                       res.batch_size, cancel)
    check(cancel)  # the last moment a cancel leaves the registry as it was

    activate = settings.activate == "always" or (
        settings.activate == "if-not-worse" and after["miou"] >= before["miou"])
    n_rois = len(data.summary()["train_rois"])
    n_slides = len(data.slides)
    note = f"fine-tuned on {n_rois} ROI{'s' if n_rois != 1 else ''} of {n_slides} slide{'s' if n_slides != 1 else ''}"
    meta = _card(card, student, settings, state.data, before, after, current.version, notes)
    metrics = {"heldout_miou": after["miou"], "heldout_miou_parent": before["miou"],
               "heldout_dice": after["dice"], "heldout_dice_parent": before["dice"],
               "heldout_pixels": after["pixels"]}
    state.emit("publish", 0, 1, message="publishing the new version")
    version = registry.publish(student.cpu(), meta, current.version, metrics, note, activate)
    verdict = ("active" if activate else
               "not activated (worse on the held-out ROIs)" if settings.activate == "if-not-worse"
               else "not activated")
    message = (f"{version.version} from {current.version}: held-out mIoU {before['miou']:.3f} → "
               f"{after['miou']:.3f} on {after['pixels']} px; {verdict}. " + "; ".join(notes))
    state.emit("publish", 1, 1, message=message)
    return RoundResult("done", version.version, current.version, before, after, activate,
                       time.perf_counter() - t0, message, state.curves, {**state.data, "notes": notes})


def _loss_terms(terms: dict[str, float]) -> dict[str, float]:
    """The terms worth plotting: the total and every ``loss*`` entry."""
    return {k: v for k, v in terms.items() if k == "total" or k.startswith("loss")}


def _card(card: dict[str, Any], student: Any, settings: RoundSettings, data: dict[str, Any],
          before: dict, after: dict, parent: str, notes: list[str]) -> dict[str, Any]:
    keep = {k: v for k, v in card.items()
            if k not in ("version", "registry", "imported_from", "metrics", "finetune", "format")}
    return {**keep, "role": "student", "model": student.config,
            "metrics": {"heldout": after, "heldout_parent": before},
            "finetune": {"parent": parent, "method": settings.method, "settings": settings.to_dict(),
                         "data": data, "notes": notes}}

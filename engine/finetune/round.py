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

    @classmethod
    def for_device(cls, device: str = "auto", **overrides: Any) -> RoundSettings:
        """Settings sized for where the round runs: the defaults on a GPU; on a CPU a batch of 4,
        80 student steps and 15 teacher / paraphraser steps. Measured on the 2-core development
        machine (CPU seconds, 256² patches, batch 4, mobile-unet student, unet-resnet34 teacher,
        coco-full): a student step 5.3 s (2.9 s of it the adversarial critic), a teacher step
        2.7 s, a paraphraser step 0.9 s: about 480 CPU-s, ~5 min on two cores; the defaults
        (batch 8, 150 steps) need about four times that."""
        name = device
        if device == "auto":
            import importlib.util

            name = "cpu"
            if importlib.util.find_spec("torch") is not None:
                import torch

                name = "cuda" if torch.cuda.is_available() else "cpu"
        sized: dict[str, Any] = {"device": device}
        if name == "cpu":
            sized.update(batch_size=4, steps=80, teacher_steps=15, paraphraser_steps=15)
        return cls(**{**sized, **overrides})

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
                            "(resources/models/cocopath-student-tumour.safetensors, or "
                            "$COCOPATH_DEFAULT_MODEL); import one with `cocopath-engine models "
                            "import FILE --project …`")
    seeded = registry.ensure_seeded(default)
    if seeded is None:
        raise CocoPathError(f"{default}: the default model could not be added to the registry")
    return seeded


def _run(project_dir: Path, settings: RoundSettings, state: _State, cancel: CancelToken | None,
         t0: float) -> RoundResult:
    from engine.annotations.project import Project
    from engine.finetune.registry import ModelRegistry

    Project.open(project_dir, quick_check=False).close()  # a clear error before touching the registry
    registry = ModelRegistry.of_project(project_dir)
    current = _current_model(registry)
    state.parent = current.version
    r = _Round(project_dir, settings, state, cancel, registry, current)
    if not r.gather():
        where = "the chosen slides" if settings.slides is not None else "any slide of the project"
        return RoundResult("nothing-to-learn", None, current.version, {}, {}, False,
                           time.perf_counter() - t0,
                           f"nothing to learn: no correction ROI on {where}; draw one (O) around "
                           f"a region you reviewed", state.curves, {})
    r.prepare()
    teacher = r.teacher()
    after = r.train_student(teacher)
    return r.publish(after, t0)


class _Round:
    """The steps of :func:`run_round` over shared state (heavy imports happen here, not at import)."""

    def __init__(self, project_dir: Path, settings: RoundSettings, state: _State,
                 cancel: CancelToken | None, registry: Any, current: Any) -> None:
        from engine.training.checkpoints import load_model

        self.project_dir, self.settings, self.state, self.cancel = project_dir, settings, state, cancel
        self.registry, self.current = registry, current
        self.student, self.card = load_model(current.path)
        k = self.student.classes
        self.classes = list(self.card.get("classes") or ["background"] + [f"class {i}" for i in range(1, k)])
        inp = self.card.get("input") or {}
        self.mean = inp.get("mean") or (0.485, 0.456, 0.406)
        self.std = inp.get("std") or (0.229, 0.224, 0.225)
        self.notes: list[str] = []
        self.batch = settings.batch_size

    def gather(self) -> bool:
        """Cut the round's patches; False when there is nothing to learn."""
        from engine.finetune.data import GatherOptions, gather

        s, state = self.settings, self.state
        state.emit("gather", 0, 1, message="reading the correction ROIs")
        opts = GatherOptions(s.patch, s.holdout, s.unlabelled_per_roi, s.seed, s.slides)
        self.data = gather(self.project_dir, self.card, opts,
                           lambda p: state.emit(p.stage, p.step, p.total, message=p.message), self.cancel)
        if self.data is None:
            return False
        state.data = self.data.summary()
        self.notes = list(self.data.notes)
        return True

    def prepare(self) -> None:
        """Device, seeds, the teacher's path and the config (a wrong method fails here, early);
        then the current model's held-out scores."""
        from engine.finetune.loop import Batcher, check
        from engine.finetune.objective import finetune_config
        from engine.training.trainer import pick_device, seed_everything

        s, state = self.settings, self.state
        self.device = pick_device(s.device)
        seed_everything(s.seed)
        self.teacher_path = _resolve_teacher(s, self.registry)
        self.config = finetune_config(s.method, s.para_steps)
        has_para = any(c.kind == "paraphraser" for c in self.config.connectors)
        state.plan = {"teacher": s.adapt_steps if self.teacher_path else 0,
                      "paraphraser": self.config.paraphraser_steps if has_para else 0, "student": s.steps}
        state.data.update(device=str(self.device), parent=self.current.version)
        check(self.cancel)
        state.emit("evaluate", 0, 1, message=f"measuring {self.current.version} on the held-out ROIs")
        state.before = self.scores(self.batch)
        self.batcher = Batcher(self.data.train, self.data.unlabelled, self.mean, self.std, s.seed)

    def scores(self, batch: int) -> dict:
        from engine.finetune.loop import heldout_scores

        return heldout_scores(self.student, self.data.heldout, self.mean, self.std, self.device,
                              self.classes, batch, self.cancel)

    def _backoff(self, stage: str) -> Callable[[int, int], None]:
        def note(step: int, size: int) -> None:
            self.state.curves["batch_size"].append((stage, step, size))
        return note

    def teacher(self) -> Any:
        """The teacher adapted to the corrections, or a frozen copy of the current student."""
        from engine.finetune.loop import check, train_stage
        from engine.finetune.objective import PartialSupervised, frozen_copy
        from engine.training.checkpoints import load_model

        s, state, version = self.settings, self.state, self.current.version
        if self.teacher_path is None:
            state.data["teacher"] = {"path": None, "frozen_student": version}
            self.notes.insert(0, f"no teacher{' found' if s.use_teacher else ''}: distilled from the "
                                 f"frozen current student ({version})")
            return frozen_copy(self.student)
        teacher, t_card = load_model(self.teacher_path)
        if teacher.classes != self.student.classes:
            raise CocoPathError(f"{self.teacher_path}: the teacher predicts {teacher.classes} classes, the "
                                f"student {self.student.classes}; choose a teacher of the same classes")
        state.data["teacher"] = {"path": str(self.teacher_path), "model": t_card.get("model"),
                                 "adapted_steps": s.adapt_steps}

        def on_step(step: int, total: int, terms: dict[str, float], size: int) -> None:
            state.curves["teacher_loss"].append(terms["total"])
            state.emit("teacher", step, total, _loss_terms(terms))

        res = train_stage(PartialSupervised(teacher), self.batcher, stage="teacher", steps=s.adapt_steps,
                          batch_size=self.batch, lr=s.lr, device=self.device, cancel=self.cancel, mix=False,
                          on_step=on_step, on_backoff=self._backoff("teacher"))
        self.batch = res.batch_size
        self.notes.insert(0, f"teacher {Path(self.teacher_path).name} adapted for {s.adapt_steps} steps")
        check(self.cancel)
        return teacher

    def train_student(self, teacher: Any) -> dict:
        """Paraphraser pre-training, then the student's steps with held-out measurements; returns
        the new student's held-out scores."""
        from engine.finetune.loop import check, train_stage
        from engine.finetune.objective import FinetuneObjective

        s, state = self.settings, self.state
        objective = FinetuneObjective(self.config, teacher, self.student).to(self.device)
        last: dict[int, dict] = {}  # the latest held-out measurement, by step
        try:
            objective.prepare(self.batcher.images(self.batch, self.device), self.cancel,
                              lambda p: state.emit(p.stage, p.step, p.total, dict(p.metrics)))
            check(self.cancel)

            def on_step(step: int, total: int, terms: dict[str, float], size: int) -> None:
                state.curves["loss"].append(terms["total"])
                for k, v in _loss_terms(terms).items():
                    state.curves["terms"].setdefault(k, []).append(v)
                state.emit("student", step, total, _loss_terms(terms))
                if step % s.eval_interval == 0 or step == total:
                    last.clear()
                    last[step] = self.scores(size)
                    state.curves["heldout_miou"].append((step, last[step]["miou"]))
                    state.emit(EVAL_STAGE, step, total, {"heldout_miou": last[step]["miou"]})

            res = train_stage(objective, self.batcher, stage="student", steps=s.steps, batch_size=self.batch,
                              lr=s.lr, device=self.device, cancel=self.cancel, mix=True, on_step=on_step,
                              on_backoff=self._backoff("student"))
        finally:
            objective.close()
        state.data["batch_size"] = res.batch_size
        after = last.get(s.steps) or self.scores(res.batch_size)
        check(self.cancel)  # the last moment a cancel leaves the registry as it was
        return after

    def publish(self, after: dict, t0: float) -> RoundResult:
        s, state, parent = self.settings, self.state, self.current.version
        before = state.before
        activate = s.activate == "always" or (s.activate == "if-not-worse" and after["miou"] >= before["miou"])
        summary = self.data.summary()
        n, held, slides = len(summary["train_rois"]), len(summary["heldout_rois"]), len(self.data.slides)
        note = (f"fine-tuned on {n} ROI{'s' if n != 1 else ''} of {slides} slide{'s' if slides != 1 else ''}"
                f" ({held} held out)")
        meta = _card(self.card, self.student, s, state.data, before, after, parent, self.notes)
        metrics = {"heldout_miou": after["miou"], "heldout_miou_parent": before["miou"],
                   "heldout_dice": after["dice"], "heldout_dice_parent": before["dice"],
                   "heldout_pixels": after["pixels"]}
        state.emit("publish", 0, 1, message="publishing the new version")
        version = self.registry.publish(self.student.cpu(), meta, parent, metrics, note, activate)
        verdict = ("active" if activate else "not activated (worse on the held-out ROIs)"
                   if s.activate == "if-not-worse" else "not activated")
        message = (f"{version.version} from {parent}: held-out mIoU {before['miou']:.3f} → "
                   f"{after['miou']:.3f} on {after['pixels']} px; {verdict}. " + "; ".join(self.notes))
        state.emit("publish", 1, 1, message=message)
        return RoundResult("done", version.version, parent, before, after, activate,
                           time.perf_counter() - t0, message, state.curves,
                           {**state.data, "notes": self.notes})


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

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
from engine.oserrors import one_line, writing

log = logging.getLogger(__name__)

ACTIVATE_CHOICES = ("if-not-worse", "always", "never")
ANCHORED = "anchored"
#: A round's wall-clock budget by device when the settings give none (issue: a minute on 2 cores).
DEFAULT_BUDGET_S = {"cpu": 60.0, "cuda": 20.0}
#: The stage of the progress events that carry a held-out measurement during training.
EVAL_STAGE = "heldout"
STATUSES = ("done", "cancelled", "nothing-to-learn", "failed")

ProgressFn = Callable[[Progress], None]


@dataclass(frozen=True)
class RoundSettings:
    steps: int | None = None  # a fixed student step count; None: as many as the budget allows
    slides: tuple[str, ...] | None = None  # slide ids or paths in the project; None = all with ROIs
    use_teacher: bool = True  # distillation methods: adapt + distil from a teacher when there is one
    teacher: str | None = None  # teacher checkpoint path
    holdout: float = 0.25  # share of ROIs held out (by region)
    batch_size: int = 8
    patch: int = 256
    unlabelled_per_roi: int = 4  # unlabelled tissue patches per ROI for distillation
    seed: int = 0
    device: str = "auto"
    activate: str = "if-not-worse"  # "if-not-worse" | "always" | "never"
    # -- additions ----------------------------------------------------------------------------
    lr: float | None = None  # None: the method's default (anchored 1e-3, distillation 3e-4), poly decay
    method: str = "anchored"  # "anchored" (engine.finetune.anchored) or a distillation config name
    teacher_steps: int | None = None  # teacher adaptation steps (None: a fifth of the student's)
    paraphraser_steps: int | None = None  # paraphraser pre-training (None: a fifth of the student's)
    eval_every: int | None = None  # held-out measurement during training (None: 5 times a round)
    budget_s: float | None = None  # wall-clock seconds of the whole round (None: 60 on CPU, 20 on GPU)
    replay_tiles: int = 32  # tiles of the base training data kept and checked (anchored)
    trainable_blocks: int = 2  # anchored: the last decoder blocks that learn, with the head
    force: bool = False  # fine-tune on a slide far coarser than the model reads
    new_classes: tuple[str, ...] = ()  # project classes the model lacks, learnt as new output classes
    check_first: tuple[str, ...] = ()  # slides nobody corrected whose masks are checked first (ids or paths)

    def validate(self) -> None:
        if self.steps is not None and self.steps < 1:
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
        if self.lr is not None and not self.lr > 0:
            raise CocoPathError(f"the learning rate must be positive, not {self.lr}")
        if self.budget_s is not None and not 0 < self.budget_s < 86400:
            raise CocoPathError(f"the time budget must be between 0 and 86400 seconds, not {self.budget_s}")
        if self.replay_tiles < 0:
            raise CocoPathError("replay tiles cannot be negative")
        if self.trainable_blocks < 0:
            raise CocoPathError("trainable decoder blocks cannot be negative")
        if self.new_classes and self.method != ANCHORED:
            raise CocoPathError(f"new output classes are learnt by the {ANCHORED} method only, not {self.method}")
        if any(not str(n).strip() for n in self.new_classes):
            raise CocoPathError("a new output class needs a name")

    @classmethod
    def for_device(cls, device: str = "auto", **overrides: Any) -> RoundSettings:
        """Settings sized for where the round runs. The anchored method needs nothing: its budget
        sizes it. A distillation method on a CPU gets a batch of 4 and 15 teacher / paraphraser
        steps (measured on the 2-core development machine, 256² patches, mobile-unet student,
        unet-resnet34 teacher, coco-full: a student step 5.3 s, a teacher step 2.7 s, a
        paraphraser step 0.9 s)."""
        sized: dict[str, Any] = {"device": device}
        if device_name(device) == "cpu" and overrides.get("method", cls.method) != ANCHORED:
            sized.update(batch_size=4, teacher_steps=15, paraphraser_steps=15)
        return cls(**{**sized, **overrides})

    def budget_for(self, device: str) -> float:
        """The round's wall-clock budget on ``device`` ("cpu" or "cuda")."""
        if self.budget_s is not None:
            return float(self.budget_s)
        return DEFAULT_BUDGET_S["cuda" if str(device).startswith("cuda") else "cpu"]

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else (1e-3 if self.method == ANCHORED else 3e-4)

    @property
    def nominal_steps(self) -> int:
        """The student's steps for a distillation method (budget-sized ones are known only later)."""
        return self.steps if self.steps is not None else 80

    @property
    def adapt_steps(self) -> int:
        return self.teacher_steps if self.teacher_steps is not None else max(1, self.nominal_steps // 5)

    @property
    def para_steps(self) -> int:
        return self.paraphraser_steps if self.paraphraser_steps is not None else max(1, self.nominal_steps // 5)

    @property
    def eval_interval(self) -> int:
        return self.eval_every if self.eval_every else max(1, self.nominal_steps // 5)

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
        for name in ("new_classes", "check_first"):
            if kw.get(name) is not None:
                kw[name] = tuple(str(s) for s in kw[name])
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
    says what to do, as do a full disk, a read-only folder and running out of memory (one line);
    only programming errors raise."""
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
    except Exception as exc:  # a full disk or out of memory where no step names it: still one line
        message = str(exc) if isinstance(exc, CocoPathError) else one_line(exc)
        if message is None:
            raise
        log.info("round failed: %s", message, exc_info=not isinstance(exc, CocoPathError))
        return RoundResult("failed", None, state.parent, state.before, {}, False,
                           time.perf_counter() - t0, message, state.curves, state.data)


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
        self.deadline: float | None = None  # a budgeted round: the ETA is the time left until then

    def emit(self, stage: str, step: int, total: int, metrics: dict[str, float] | None = None,
             message: str = "") -> None:
        if self.progress is None:
            return
        now = time.perf_counter()
        t0 = self._stage_t0.setdefault(stage, now)
        m = dict(metrics or {})
        if "eta_s" not in m:  # the caller's own estimate wins
            if stage in self.plan and step > 0:
                rate = (now - t0) / step
                later = list(self.plan)[list(self.plan).index(stage) + 1:]
                m["eta_s"] = rate * (total - step + sum(self.plan[s] for s in later))
            elif self.deadline is not None:
                m["eta_s"] = max(0.0, self.deadline - now)
        self.progress(Progress(stage, step, total, m, message))


def device_name(device: str) -> str:
    """"cpu" or "cuda" for a device setting ("auto" asks torch, when it is installed)."""
    if device != "auto":
        return "cuda" if device.startswith("cuda") else "cpu"
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        return "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


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
    with writing(registry.root):
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
    r = _Round(project_dir, settings, state, cancel, registry, current, t0)
    if settings.method == ANCHORED:  # a budgeted round: its ETA is the time left of the budget
        state.deadline = t0 + settings.budget_for(device_name(settings.device))
    if not r.gather():
        where = "the chosen slides" if settings.slides is not None else "any slide of the project"
        return RoundResult("nothing-to-learn", None, current.version, {}, {}, False,
                           time.perf_counter() - t0,
                           f"nothing to learn: no correction ROI on {where}; draw one (O) around "
                           f"a region you reviewed", state.curves, {})
    if settings.method == ANCHORED:
        return r.publish(r.train_anchored(), t0)
    r.prepare()
    teacher = r.teacher()
    after = r.train_student(teacher)
    return r.publish(after, t0)


class _Round:
    """The steps of :func:`run_round` over shared state (heavy imports happen here, not at import)."""

    def __init__(self, project_dir: Path, settings: RoundSettings, state: _State,
                 cancel: CancelToken | None, registry: Any, current: Any, t0: float | None = None) -> None:
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
        self.t0 = time.perf_counter() if t0 is None else t0
        self.replay: tuple[dict | None, dict | None] = (None, None)
        self.best_step: int | None = None  # the anchored method's kept step (0: the parent itself)
        self.kd_weights: dict[str, float] | None = None  # anchored: KD weight by patch set (None: defaults)
        self.shares: dict[str, float] | None = None  # anchored: batch share by patch set (None: defaults)
        self.replay_truth = True  # anchored: the replay tiles' true masks are a target too
        self.elsewhere: dict[str, Any] | None = None  # the slides nobody corrected, before and after
        self.others_before: list[Any] = []  # their class maps by the parent (non-anchored methods)

    def gather(self) -> bool:
        """Cut the round's patches; False when there is nothing to learn."""
        from engine.finetune.data import GatherOptions, gather

        s, state = self.settings, self.state
        state.emit("gather", 0, 1, message="reading the correction ROIs")
        opts = GatherOptions(s.patch, s.holdout, s.unlabelled_per_roi, s.seed, s.slides, s.force, s.new_classes,
                             check_first=s.check_first)
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
                      "paraphraser": self.config.paraphraser_steps if has_para else 0, "student": s.nominal_steps}
        state.data.update(device=str(self.device), parent=self.current.version)
        check(self.cancel)
        state.emit("evaluate", 0, 1, message=f"measuring {self.current.version} on the held-out ROIs")
        state.before = self.scores(self.batch)
        if self.data.others:
            from engine.finetune.loop import class_maps

            state.emit("evaluate", 0, 1, message="predicting the slides nobody corrected")
            self.others_before = class_maps(self.student, self.data.others, self.mean, self.std, self.device,
                                            self.batch, self.cancel)
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
                          batch_size=self.batch, lr=s.learning_rate, device=self.device, cancel=self.cancel, mix=False,
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
            objective.prepare(lambda size: self.batcher.images(size, self.device), self.cancel,
                              lambda p: state.emit(p.stage, p.step, p.total, dict(p.metrics)),
                              batch=self.batch, on_backoff=lambda size: self._backoff("paraphraser")(0, size))
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

            res = train_stage(objective, self.batcher, stage="student", steps=s.nominal_steps, batch_size=self.batch,
                              lr=s.learning_rate, device=self.device, cancel=self.cancel, mix=True, on_step=on_step,
                              on_backoff=self._backoff("student"))
        finally:
            objective.close()
        state.data["batch_size"] = res.batch_size
        after = last.get(s.nominal_steps) or self.scores(res.batch_size)
        if self.data.others:
            from engine.finetune.elsewhere import drift
            from engine.finetune.loop import class_maps

            now = class_maps(self.student, self.data.others, self.mean, self.std, self.device, res.batch_size,
                             self.cancel)
            self.elsewhere = drift(self.others_before, now, self.data.others, self.data.other_slides, self.classes)
        check(self.cancel)  # the last moment a cancel leaves the registry as it was
        return after

    def train_anchored(self) -> dict:
        """The anchored method (:mod:`engine.finetune.anchored`) within the round's time budget;
        returns the kept step's held-out scores (the parent's when no step beat it)."""
        from engine.finetune.anchored import (CAPS, AnchoredTrainer, Pools, StepPlan, build_cache, cached_classes,
                                              check_anchorable, first_trainable, grow_head, limit)
        from engine.finetune.data import new_class_merge
        from engine.finetune.loop import check
        from engine.finetune.replay import replay_sample
        from engine.training.trainer import pick_device, seed_everything

        s, state = self.settings, self.state
        check_anchorable(self.student)
        self.device = pick_device(s.device)
        seed_everything(s.seed)
        where = "cuda" if self.device.type == "cuda" else "cpu"
        budget = s.budget_for(where)
        state.deadline = self.t0 + budget
        caps = CAPS[where]
        state.emit("cache", 0, 1, message="reading the replay sample of the model's training data")
        replay = replay_sample(self.card, s.patch, s.replay_tiles, s.seed, part="train")
        checked = replay_sample(self.card, s.patch, s.replay_tiles, s.seed, part="val")
        self.notes += [f"replay: {replay.note}", f"replay check: {checked.note}"]
        sets = {"heldout": (limit(self.data.heldout, caps["heldout"], s.seed), False, "none"),
                "train": (limit(self.data.train, caps["train"], s.seed), True, "unlabelled"),
                "tissue": (limit(self.data.unlabelled, caps["tissue"], s.seed), True, "unlabelled"),
                "replay": (replay.patches, self.replay_truth, "labelled"),
                "check": (checked.patches, False, "none"),
                "elsewhere": (self.data.others, False, "none")}
        total, done = sum(len(v[0]) for v in sets.values()), 0

        def on_batch(n: int) -> None:
            nonlocal done
            done += n
            state.emit("cache", done, total, message="computing what stays frozen (encoder, parent)")

        first = first_trainable(self.student, s.trainable_blocks)
        t_cache = time.perf_counter()
        caches = {k: build_cache(self.student, v[0], self.mean, self.std, self.device, supervise=v[1], kd=v[2],
                                 first=first, batch=s.batch_size, cancel=self.cancel, on_batch=on_batch)
                  for k, v in sets.items()}
        cache_s = time.perf_counter() - t_cache
        others = caches.pop("elsewhere")
        pools = Pools(**caches)
        merge = None
        if len(self.data.classes) > len(self.classes):  # new output classes, after the parent was cached
            merge = new_class_merge(self.classes, self.data.classes)
            grow_head(self.student, len(self.data.classes) - len(self.classes))
            self.classes = list(self.data.classes)
            state.data["new_classes"] = self.classes[max(merge) + 1:]
        trainer = AnchoredTrainer(self.student, pools, self.classes, self.device, first=first,
                                  lr=s.learning_rate, batch_size=s.batch_size, seed=s.seed,
                                  kd_weights=self.kd_weights, shares=self.shares, merge=merge)
        plan = StepPlan(deadline=state.deadline, steps=s.steps)
        state.data.update(device=str(self.device), parent=self.current.version, batch_size=s.batch_size)

        def on_step(step: int, steps: int, terms: dict[str, float]) -> None:
            state.curves["loss"].append(terms["total"])
            for k, v in _loss_terms(terms).items():
                state.curves["terms"].setdefault(k, []).append(v)
            state.emit("student", step, steps, {**_loss_terms(terms), "eta_s": plan.eta(step)})

        def on_score(step: int, steps: int, held: float, rep: float | None) -> None:
            state.curves["heldout_miou"].append((step, held))
            if rep is not None:
                state.curves.setdefault("replay_miou", []).append((step, rep))
            m = {"heldout_miou": held, "eta_s": plan.eta(step)}
            if rep is not None:
                m["replay_miou"] = rep
            state.emit(EVAL_STAGE, step, steps, m)

        res = trainer.run(plan, self.cancel, on_step, on_score)
        if len(others):
            from engine.finetune.elsewhere import drift

            before = [y for _, pred in cached_classes(None, others, self.device) for y in pred]
            now = [y for _, pred in cached_classes(self.student, others, self.device, first=first) for y in pred]
            self.elsewhere = drift(before, now, self.data.others, self.data.other_slides,
                                   self.classes if merge is None else self.classes[:max(merge) + 1], merge)
        state.before = res.before
        self.replay = (res.replay_before, res.replay_after)
        self.best_step = res.best_step
        state.curves["heldout_miou"].insert(0, (0, res.before["miou"]))
        state.data["anchored"] = {
            "best_step": res.best_step, "steps": res.steps, "train_seconds": res.seconds,
            "budget_s": budget, "cache_mb": round(sum(c.nbytes for c in caches.values()) / 2**20, 1),
            "patches": {k: len(c) for k, c in caches.items()}, "step_s": plan.step_s, "score_s": plan.score_s,
            "lr": s.learning_rate, "cache_s": cache_s, "setup_s": t_cache - self.t0,
            "trained": f"the last {len(trainer.trained) - 1} decoder block(s) and the head",
            "frozen": "the encoder, the decoder blocks before them, every normalisation layer's statistics",
            "replay_sources": replay.sources, "check_sources": checked.sources,
            "blend": res.blend, "blends": [list(b) for b in res.blends]}
        if res.best_step == 0:
            self.notes.append(f"no step beat {self.current.version} on the held-out ROIs")
        elif res.blend < 1.0:
            self.notes.append(f"kept a blend of {res.blend:.0%} step {res.best_step} of {res.steps} and "
                              f"{1 - res.blend:.0%} the parent's weights: the step alone gained more on the "
                              f"held-out ROIs but lost on the replay check; the blend is not worse there")
        elif not res.passed_replay:
            tried = f" (and so did its blends with the parent, down to {min(b[0] for b in res.blends):.0%})" \
                if res.blends else ""
            self.notes.append(f"kept step {res.best_step} of {res.steps}: the best on the held-out ROIs, but every "
                              f"step that gained there lost on the replay check{tried}")
        else:
            self.notes.append(f"kept step {res.best_step} of {res.steps} (best on the held-out ROIs)")
        check(self.cancel)  # the last moment a cancel leaves the registry as it was
        return res.after

    def guard(self, after: dict) -> dict[str, Any]:
        """Parent and new version on the held-out ROIs and on the replay sample: which is worse;
        and the slides nobody corrected: which changed too much to be made active unseen."""
        from engine.finetune.anchored import REPLAY_TOLERANCE
        from engine.finetune.elsewhere import reason as elsewhere_reason

        before = self.state.before
        rep_b, rep_a = self.replay
        held = {"before": before["miou"], "after": after["miou"], "ok": after["miou"] >= before["miou"]}
        rep = None
        if rep_b is not None and rep_a is not None:
            rep = {"before": rep_b["miou"], "after": rep_a["miou"], "tolerance": REPLAY_TOLERANCE,
                   "ok": rep_a["miou"] >= rep_b["miou"] - REPLAY_TOLERANCE}
        reasons = []  # every check it fails, named
        if not held["ok"]:
            reasons.append(f"worse on the held-out ROIs (mIoU {held['before']:.3f} → {held['after']:.3f})")
        if rep is not None and not rep["ok"]:
            reasons.append(f"worse on the replay sample of its training data (mIoU {rep['before']:.3f} → "
                           f"{rep['after']:.3f})")
        reasons.append(elsewhere_reason(self.elsewhere))
        reason = "; and ".join(r for r in reasons if r)
        return {"heldout": held, "replay": rep, "elsewhere": self.elsewhere, "reason": reason}

    def publish(self, after: dict, t0: float) -> RoundResult:
        s, state, parent = self.settings, self.state, self.current.version
        before = state.before
        guard = self.guard(after)
        not_worse = not guard["reason"]
        activate = s.activate == "always" or (s.activate == "if-not-worse" and not_worse)
        if self.best_step == 0:
            guard.update(activated=False, reason=f"no step beat {parent} on the held-out ROIs")
            state.data["guard"] = guard
            message = (f"nothing new: no step of the round beat {parent} on the held-out ROIs "
                       f"(mIoU {before['miou']:.3f} on {before['pixels']} px); {parent} stays as it was. "
                       + "; ".join(self.notes))
            state.emit("publish", 1, 1, message=message)
            return RoundResult("done", None, parent, before, after, False, time.perf_counter() - t0, message,
                               state.curves, {**state.data, "notes": self.notes})
        guard["activated"] = activate
        state.data["guard"] = guard
        summary = self.data.summary()
        n, held, slides = len(summary["train_rois"]), len(summary["heldout_rois"]), len(self.data.slides)
        note = (f"fine-tuned on {n} ROI{'s' if n != 1 else ''} of {slides} slide{'s' if slides != 1 else ''}"
                f" ({held} held out)")
        meta = _card(self.card, self.student, s, state.data, before, after, parent, self.notes, self.replay)
        meta["classes"] = list(self.classes)
        metrics = {"heldout_miou": after["miou"], "heldout_miou_parent": before["miou"],
                   "heldout_dice": after["dice"], "heldout_dice_parent": before["dice"],
                   "heldout_pixels": after["pixels"], "heldout_ok": guard["heldout"]["ok"]}
        if guard["replay"] is not None:  # ok: within the replay check's tolerance, as the round judged it
            metrics.update(replay_miou=guard["replay"]["after"], replay_miou_parent=guard["replay"]["before"],
                           replay_ok=guard["replay"]["ok"])
        if guard["elsewhere"] is not None:
            rows = guard["elsewhere"]["slides"]
            names = [r["name"] for r in rows]
            metrics["elsewhere"] = {(r["name"] if names.count(r["name"]) == 1 else f"{r['name']} (slide {r['id']})"):
                                    {k: r[k] for k in ("before", "after", "changed", "ok")} for r in rows}
        state.emit("publish", 0, 1, message="publishing the new version")
        with writing(self.registry.root):  # a failed write leaves no version (the registry's commit)
            version = self.registry.publish(self.student.cpu(), meta, parent, metrics, note, activate)
        verdict = ("active" if activate else f"not activated ({guard['reason']})"
                   if s.activate == "if-not-worse" else "not activated")
        if activate and guard["reason"]:
            verdict += f" although {guard['reason']} (activate: always)"
        rep = guard["replay"]
        replay_text = "" if rep is None else f"; replay sample {rep['before']:.3f} → {rep['after']:.3f}"
        if guard["elsewhere"] is not None:
            from engine.finetune.elsewhere import summary

            replay_text += f"; {summary(guard['elsewhere'])}"
        message = (f"{version.version} from {parent}: held-out mIoU {before['miou']:.3f} → "
                   f"{after['miou']:.3f} on {after['pixels']} px{replay_text}; {verdict}. " + "; ".join(self.notes))
        state.emit("publish", 1, 1, message=message)
        return RoundResult("done", version.version, parent, before, after, activate,
                           time.perf_counter() - t0, message, state.curves,
                           {**state.data, "notes": self.notes})


def _loss_terms(terms: dict[str, float]) -> dict[str, float]:
    """The terms worth plotting: the total and every ``loss*`` entry."""
    return {k: v for k, v in terms.items() if k == "total" or k.startswith("loss")}


def _card(card: dict[str, Any], student: Any, settings: RoundSettings, data: dict[str, Any],
          before: dict, after: dict, parent: str, notes: list[str],
          replay: tuple[dict | None, dict | None] = (None, None)) -> dict[str, Any]:
    keep = {k: v for k, v in card.items()
            if k not in ("version", "registry", "imported_from", "metrics", "finetune", "format")}
    metrics: dict[str, Any] = {"heldout": after, "heldout_parent": before}
    if replay[0] is not None and replay[1] is not None:
        metrics.update(replay=replay[1], replay_parent=replay[0])
    return {**keep, "role": "student", "model": student.config,
            "metrics": metrics,
            "finetune": {"parent": parent, "method": settings.method, "settings": settings.to_dict(),
                         "data": data, "notes": notes}}

"""A round as a subprocess: the command line that starts it and the events it prints.

The app runs ``finetune_argv(project, settings)`` in a subprocess (training never holds the GUI's
GIL) and reads its stdout line by line with :func:`parse_event`. With ``--events`` the command
prints one JSON object per line, flushed::

    {"event": "progress", "data": {"stage": "student", "step": 40, "total": 150,
                                   "metrics": {"total": 0.61, "loss_ce": 0.3, …}, "eta_s": 80.5}}
    {"event": "eval", "data": {"step": 40, "heldout_miou": 0.71}}
    {"event": "log", "data": {"message": "…"}}
    {"event": "error", "data": {"message": "…"}}
    {"event": "result", "data": RoundResult.to_dict()}          ← always the last line

Stopping the process with SIGTERM (or Ctrl+C) cancels the round cleanly: its last event is a
result with status "cancelled" and the registry is unchanged. No torch here.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.finetune.round import EVAL_STAGE, RoundSettings
from engine.jobs import Progress

EVENT_KINDS = ("progress", "eval", "result", "error", "log")


@dataclass(frozen=True)
class FinetuneEvent:
    kind: str  # "progress" | "eval" | "result" | "error" | "log"
    data: dict = field(default_factory=dict)

    def to_line(self) -> str:
        """One JSON line (no newline); non-finite numbers become null."""
        return json.dumps({"event": self.kind, "data": _finite(self.data)}, ensure_ascii=False,
                          default=str, allow_nan=False)


def _finite(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def parse_event(line: str) -> FinetuneEvent | None:
    """The event on one stdout line, or None for anything else (log text, garbage, a cut line)."""
    if not isinstance(line, str):
        return None
    text = line.strip()
    if not text.startswith("{") or not text.endswith("}"):
        return None
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):
        return None
    if not isinstance(obj, dict):
        return None
    kind, data = obj.get("event"), obj.get("data", {})
    if kind not in EVENT_KINDS or not isinstance(data, dict):
        return None
    return FinetuneEvent(kind, data)


def iter_events(lines: Iterable[str]) -> Iterator[FinetuneEvent]:
    """The events among ``lines`` (other lines skipped)."""
    for line in lines:
        ev = parse_event(line)
        if ev is not None:
            yield ev


def progress_event(p: Progress) -> FinetuneEvent:
    """A round's :class:`~engine.jobs.Progress` as the event the app reads."""
    metrics = dict(p.metrics)
    if p.stage == EVAL_STAGE:
        return FinetuneEvent("eval", {"step": p.step, "heldout_miou": metrics.get("heldout_miou")})
    eta = metrics.pop("eta_s", None)
    data: dict[str, Any] = {"stage": p.stage, "step": p.step, "total": p.total, "metrics": metrics,
                            "eta_s": eta}
    if p.message:
        data["message"] = p.message
    return FinetuneEvent("progress", data)


def finetune_argv(project_dir: Path, settings: RoundSettings, explicit: Collection[str] = ()) -> list[str]:
    """The command line of a round over ``project_dir`` with ``settings``, printing events.

    Settings at their default value are left out, so the round's process sizes steps and batch for
    its device (smaller on a CPU); the names in ``explicit`` are passed even at their default.
    """
    d = RoundSettings()
    argv = [sys.executable, "-m", "engine.cli", "finetune", "--project", str(project_dir)]
    if settings.slides is not None:
        argv += ["--slides", *[str(s) for s in settings.slides]]
    if not settings.use_teacher:
        argv.append("--no-teacher")
    elif settings.teacher:
        argv += ["--teacher", str(settings.teacher)]
    options = (("steps", "--steps"), ("holdout", "--holdout"), ("batch_size", "--batch-size"),
               ("patch", "--patch"), ("unlabelled_per_roi", "--unlabelled-per-roi"), ("seed", "--seed"),
               ("device", "--device"), ("activate", "--activate"), ("lr", "--lr"), ("method", "--method"),
               ("teacher_steps", "--teacher-steps"), ("paraphraser_steps", "--paraphraser-steps"),
               ("eval_every", "--eval-every"), ("budget_s", "--budget"), ("replay_tiles", "--replay-tiles"),
               ("trainable_blocks", "--trainable-blocks"))
    for name, flag in options:
        value = getattr(settings, name)
        if value is not None and (value != getattr(d, name) or name in explicit):
            argv += [flag, str(value)]
    if settings.force:
        argv.append("--force")
    for name in settings.new_classes:
        argv += ["--new-class", str(name)]
    if settings.check_first:
        argv += ["--check-first", *[str(s) for s in settings.check_first]]
    argv.append("--events")
    return argv

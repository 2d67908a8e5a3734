"""The round as a subprocess: its command line and the events the app reads from it."""

from __future__ import annotations

import json
import math
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from engine.cli import build_parser
from engine.finetune.commands import settings_from_args
from engine.finetune.job import FinetuneEvent, finetune_argv, iter_events, parse_event, progress_event
from engine.finetune.round import EVAL_STAGE, RoundResult, RoundSettings
from engine.jobs import Progress


@pytest.mark.parametrize("line", [
    "", "   ", "\n", "hello", "WARNING engine.x: something", "{", "}", "{}", "[1, 2]", "null", "42",
    '"a string"', '{"event": "progress"', '{"event": "progress", "data": [1]}',
    '{"event": "explode", "data": {}}', '{"kind": "progress", "data": {}}', '{"event": 5, "data": {}}',
    '{"event": "result", "data": "done"}', "{" * 100_000 + "}" * 100_000, '{"event": "log", "data": {}} trailing',
    "\x00\x01\x02", '{"event": "progress", "data": {"step": NaN}',
])
def test_parse_event_returns_none_for_anything_that_is_not_an_event(line: str) -> None:
    assert parse_event(line) is None


def test_parse_event_reads_every_kind_and_rejects_non_strings() -> None:
    for kind in ("progress", "eval", "result", "error", "log"):
        ev = parse_event(f'  {{"event": "{kind}", "data": {{"x": 1}}}}\r\n')
        assert ev == FinetuneEvent(kind, {"x": 1})
    assert parse_event('{"event": "log"}') == FinetuneEvent("log", {})
    assert parse_event(None) is None  # type: ignore[arg-type]
    assert parse_event(b'{"event": "log", "data": {}}') is None  # type: ignore[arg-type]


def test_events_round_trip_and_stay_valid_json() -> None:
    ev = FinetuneEvent("progress", {"stage": "student", "step": 3, "total": 9,
                                    "metrics": {"total": float("nan"), "loss_ce": 0.5}, "eta_s": math.inf})
    line = ev.to_line()
    json.loads(line)  # strict JSON: no NaN / Infinity
    back = parse_event(line)
    assert back.data["metrics"] == {"total": None, "loss_ce": 0.5} and back.data["eta_s"] is None
    result = RoundResult("done", "v0002", "v0001", {"miou": 0.4}, {"miou": 0.8}, True, 3.5, "ok",
                         {"heldout_miou": [(4, 0.7)]}, {"notes": ["n"]})
    back = parse_event(FinetuneEvent("result", result.to_dict()).to_line())
    assert back.data["curves"]["heldout_miou"] == [[4, 0.7]] and back.data["activated"] is True
    lines = ["noise", ev.to_line(), "", FinetuneEvent("result", result.to_dict()).to_line()]
    assert [e.kind for e in iter_events(lines)] == ["progress", "result"]


def test_progress_becomes_progress_and_eval_events() -> None:
    ev = progress_event(Progress("student", 4, 10, {"total": 0.5, "loss_ce": 0.2, "eta_s": 12.0}, "hi"))
    assert ev == FinetuneEvent("progress", {"stage": "student", "step": 4, "total": 10,
                                            "metrics": {"total": 0.5, "loss_ce": 0.2}, "eta_s": 12.0,
                                            "message": "hi"})
    ev = progress_event(Progress(EVAL_STAGE, 4, 10, {"heldout_miou": 0.75}))
    assert ev == FinetuneEvent("eval", {"step": 4, "heldout_miou": 0.75})
    assert progress_event(Progress("gather", 0, 1)).data["eta_s"] is None


@pytest.mark.parametrize("settings", [
    RoundSettings(),
    RoundSettings(steps=40, slides=("3", "/data/a b.svs"), use_teacher=False, holdout=0.5, batch_size=2,
                  patch=128, unlabelled_per_roi=0, seed=7, device="cpu", activate="always", lr=1e-3,
                  method="coco", teacher_steps=5, paraphraser_steps=3, eval_every=10),
    RoundSettings(teacher="/models/teacher.safetensors", activate="never"),
])
def test_finetune_argv_runs_the_same_round(settings: RoundSettings) -> None:
    argv = finetune_argv(Path("/projects/p 1"), settings)
    assert argv[:4] == [sys.executable, "-m", "engine.cli", "finetune"] and argv[-1] == "--events"
    args = build_parser().parse_args(argv[3:])
    assert args.project == Path("/projects/p 1") and args.events
    # sizes left at their defaults are chosen by the round's process for its device (smaller on a CPU)
    default, sized = RoundSettings(), RoundSettings.for_device(settings.device)
    expected = replace(settings, **{k: getattr(sized, k) for k in ("steps", "batch_size", "teacher_steps",
                                                                     "paraphraser_steps")
                                    if getattr(settings, k) == getattr(default, k)})
    assert settings_from_args(args) == expected


def test_explicit_settings_are_passed_even_at_their_default() -> None:
    default = RoundSettings()
    assert "--steps" not in finetune_argv(Path("/p"), default)  # sized by the round's process
    argv = finetune_argv(Path("/p"), default, explicit=("steps",))
    assert argv[argv.index("--steps") + 1] == str(default.steps)
    assert settings_from_args(build_parser().parse_args(argv[3:])).steps == default.steps


def test_settings_dict_round_trip_and_validation() -> None:
    s = RoundSettings(slides=("a", "b"), steps=9)
    assert RoundSettings.from_dict({**s.to_dict(), "unknown": 1}) == s
    for bad, why in ((dict(steps=0), "steps"), (dict(holdout=1.0), "held-out"), (dict(patch=100), "multiple of 32"),
                     (dict(activate="maybe"), "activate"), (dict(batch_size=0), "batch size"),
                     (dict(lr=0.0), "learning rate")):
        with pytest.raises(Exception, match=why):
            RoundSettings(**bad).validate()


def test_settings_for_the_cpu_are_smaller_and_overridable() -> None:
    cpu = RoundSettings.for_device("cpu")
    assert (cpu.batch_size, cpu.steps, cpu.adapt_steps, cpu.para_steps) == (4, 80, 15, 15)
    assert RoundSettings.for_device("cuda") == RoundSettings(device="cuda")
    assert RoundSettings.for_device("cpu", steps=10, seed=3).steps == 10
    cpu.validate()

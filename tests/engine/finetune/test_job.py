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
    RoundSettings(budget_s=45.0, replay_tiles=0, force=True, device="cpu"),
    RoundSettings(new_classes=("Stroma", "Necrosis zone")),
    RoundSettings(check_first=("2", "/data/viewed last.svs")),
])
def test_finetune_argv_runs_the_same_round(settings: RoundSettings) -> None:
    argv = finetune_argv(Path("/projects/p 1"), settings)
    assert argv[:4] == [sys.executable, "-m", "engine.cli", "finetune"] and argv[-1] == "--events"
    args = build_parser().parse_args(argv[3:])
    assert args.project == Path("/projects/p 1") and args.events
    # sizes left at their defaults are chosen by the round's process for its device (smaller on a CPU)
    default, sized = RoundSettings(), RoundSettings.for_device(settings.device, method=settings.method)
    expected = replace(settings, **{k: getattr(sized, k) for k in ("steps", "batch_size", "teacher_steps",
                                                                     "paraphraser_steps")
                                    if getattr(settings, k) == getattr(default, k)})
    assert settings_from_args(args) == expected


def test_explicit_settings_are_passed_even_at_their_default() -> None:
    default = RoundSettings()
    argv = finetune_argv(Path("/p"), default)
    assert "--steps" not in argv and "--budget" not in argv  # sized by the round's process
    argv = finetune_argv(Path("/p"), default, explicit=("replay_tiles",))
    assert argv[argv.index("--replay-tiles") + 1] == str(default.replay_tiles)
    argv = finetune_argv(Path("/p"), RoundSettings(budget_s=30.0))
    assert argv[argv.index("--budget") + 1] == "30.0"
    assert settings_from_args(build_parser().parse_args(argv[3:])).budget_s == 30.0


def test_settings_dict_round_trip_and_validation() -> None:
    s = RoundSettings(slides=("a", "b"), steps=9, new_classes=("Stroma",), check_first=("4",))
    assert RoundSettings.from_dict({**s.to_dict(), "unknown": 1}) == s
    for bad, why in ((dict(steps=0), "steps"), (dict(holdout=1.0), "held-out"), (dict(patch=100), "multiple of 32"),
                     (dict(activate="maybe"), "activate"), (dict(batch_size=0), "batch size"),
                     (dict(lr=0.0), "learning rate"), (dict(budget_s=0.0), "budget"),
                     (dict(replay_tiles=-1), "replay")):
        with pytest.raises(Exception, match=why):
            RoundSettings(**bad).validate()


def test_settings_for_the_cpu_are_smaller_and_overridable() -> None:
    # the anchored method (default) is sized by its budget: a minute on a CPU, 20 s on a GPU
    anchored = RoundSettings.for_device("cpu")
    assert anchored == RoundSettings(device="cpu") and anchored.steps is None
    assert (anchored.budget_for("cpu"), anchored.budget_for("cuda"), anchored.learning_rate) == (60.0, 20.0, 1e-3)
    assert RoundSettings(budget_s=12.5).budget_for("cpu") == 12.5
    cpu = RoundSettings.for_device("cpu", method="coco-full")
    assert (cpu.batch_size, cpu.nominal_steps, cpu.adapt_steps, cpu.para_steps, cpu.learning_rate) == (4, 80, 15, 15, 3e-4)
    assert RoundSettings.for_device("cuda", method="coco-full") == RoundSettings(device="cuda", method="coco-full")
    assert RoundSettings.for_device("cpu", steps=10, seed=3).steps == 10
    cpu.validate()

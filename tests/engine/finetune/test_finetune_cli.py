"""``cocopath-engine finetune`` and ``models``: events the app can read, clean cancel, a killed
round that leaves the registry as it was, one-line errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from engine.cli import main
from engine.finetune.job import parse_event
from engine.finetune.registry import ModelRegistry

QUICK = ["--patch", "64", "--batch-size", "4", "--lr", "3e-3", "--teacher-steps", "2",
         "--paraphraser-steps", "2", "--unlabelled-per-roi", "2", "--device", "cpu"]


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_finetune_events_are_parsable_and_end_with_the_result(
        project_dir: Path, checkpoints: dict, tiny_method: str, capsys: pytest.CaptureFixture) -> None:
    ModelRegistry.of_project(project_dir).import_model(checkpoints["student"])
    code = main(["finetune", "--project", str(project_dir), "--events", "--steps", "4", "--eval-every", "2",
                 "--teacher", str(checkpoints["teacher"]), "--method", tiny_method, *QUICK])
    lines = capsys.readouterr().out.splitlines()
    assert code == 0
    events = [parse_event(line) for line in lines]
    assert all(events), [line for line, e in zip(lines, events) if e is None]  # stdout holds events only
    assert events[-1].kind == "result" and [e.kind for e in events].count("result") == 1
    result = events[-1].data
    assert result["status"] == "done" and result["version"] == "v0002" and result["parent"] == "v0001"
    assert set(result["before"]) >= {"miou", "dice", "pixels"} and result["after"]["pixels"] > 0
    progress = [e.data for e in events if e.kind == "progress"]
    assert {p["stage"] for p in progress} >= {"gather", "teacher", "paraphraser", "student"}
    student = [p for p in progress if p["stage"] == "student"]
    assert [p["step"] for p in student] == [1, 2, 3, 4] and all(p["total"] == 4 for p in student)
    assert all("loss_ce" in p["metrics"] and p["eta_s"] is not None for p in student)
    assert [e.data["step"] for e in events if e.kind == "eval"] == [2, 4]
    assert ModelRegistry.of_project(project_dir).get("v0002").parent == "v0001"


def test_sigterm_cancels_with_a_result_and_an_unchanged_registry(
        project_dir: Path, checkpoints: dict, tiny_method: str, capsys: pytest.CaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """What the app's Cancel does: SIGTERM; the round stops at the next step and says so."""
    from engine.finetune.commands import _Printer

    reg = ModelRegistry.of_project(project_dir)
    reg.import_model(checkpoints["student"])
    before = _snapshot(reg.root)
    handler = signal.getsignal(signal.SIGTERM)
    real = _Printer.progress

    def progress(self, p) -> None:
        real(self, p)
        if p.stage == "student" and p.step == 1:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(_Printer, "progress", progress)
    code = main(["finetune", "--project", str(project_dir), "--events", "--steps", "50", "--no-teacher",
                 "--method", tiny_method, *QUICK])
    events = [parse_event(line) for line in capsys.readouterr().out.splitlines()]
    assert code == 130
    assert events[-1].kind == "result" and events[-1].data["status"] == "cancelled"
    assert max(e.data["step"] for e in events if e.kind == "progress" and e.data["stage"] == "student") <= 2
    assert _snapshot(reg.root) == before
    assert signal.getsignal(signal.SIGTERM) == handler  # the round's handler was removed


def test_a_killed_round_leaves_the_registry_unchanged(project_dir: Path, checkpoints: dict,
                                                      tiny_method: str) -> None:
    reg = ModelRegistry.of_project(project_dir)
    reg.import_model(checkpoints["student"])
    before = _snapshot(reg.root)
    argv = [sys.executable, "-m", "engine.cli", "finetune", "--project", str(project_dir), "--events",
            "--steps", "500", "--threads", "1", "--teacher", str(checkpoints["teacher"]),
            "--method", tiny_method, *QUICK]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    seen = []
    try:
        for line in proc.stdout:
            ev = parse_event(line)
            assert ev is not None, line
            seen.append(ev)
            if ev.kind == "progress" and ev.data["stage"] == "student":
                os.kill(proc.pid, signal.SIGKILL)  # mid-round, as a crash or the task manager would
                break
    finally:
        proc.kill()
        proc.wait(30)
    assert proc.returncode == -signal.SIGKILL
    assert any(e.kind == "progress" and e.data["stage"] == "teacher" for e in seen)
    assert _snapshot(reg.root) == before


def test_finetune_errors_are_one_line(tmp_path: Path, project_dir: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["finetune", "--project", str(tmp_path / "nowhere"), "--steps", "2"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("cocopath-engine: ") and "no such project folder" in err[0]
    assert main(["finetune", "--project", str(project_dir), "--events"]) == 1  # no model anywhere
    events = [parse_event(line) for line in capsys.readouterr().out.splitlines()]
    assert [e.kind for e in events[-2:]] == ["error", "result"]
    assert events[-1].data["status"] == "failed" and "models import" in events[-1].data["message"]


def test_models_commands(project_dir: Path, checkpoints: dict, tmp_path: Path,
                         capsys: pytest.CaptureFixture) -> None:
    p = ["--project", str(project_dir)]
    assert main(["models", "list", *p]) == 0
    assert "no model versions yet" in capsys.readouterr().out
    assert main(["models", "import", str(checkpoints["student"]), *p, "--note", "mine"]) == 0
    assert main(["models", "import", str(checkpoints["broken"]), *p, "--json"]) == 0
    out = capsys.readouterr().out
    assert "imported as v0001 (mine)" in out and json.loads(out[out.index("{"):])["version"] == "v0002"
    assert main(["models", "activate", "v0002", *p]) == 0
    assert main(["models", "list", *p, "--json"]) == 0
    listing = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert listing["active"] == "v0002" and [r["version"] for r in listing["versions"]] == ["v0001", "v0002"]
    assert [r["active"] for r in listing["versions"]] == [False, True]
    assert main(["models", "export", "v0001", str(tmp_path / "x.safetensors"), *p]) == 0
    assert (tmp_path / "x.json").is_file() and (tmp_path / "x.safetensors").is_file()
    capsys.readouterr()
    for argv, why in ((["models", "rollback", *p], "has no parent"),
                      (["models", "activate", "v0007", *p], "no model version 'v0007'"),
                      (["models", "import", str(tmp_path / "x.json"), *p], "only .safetensors"),
                      (["models", "list", "--project", str(tmp_path / "none")], "no such project folder")):
        assert main(argv) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and why in err[0], err

"""A round on a full disk or with a read-only model registry: a "failed" result whose message is one
line naming the folder and what is wrong, the command line's exit status 1, and the registry as it
was (no half-written version, no temporary folder, the active version unchanged)."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest
from fault_fixtures import DiskFull, leftovers, read_only, snapshot

from engine.cli import main
from engine.finetune.registry import ModelRegistry
from engine.finetune.round import RoundSettings, run_round
from engine.training.checkpoints import load_model


def settings(**kw) -> RoundSettings:
    base = dict(patch=64, batch_size=4, unlabelled_per_roi=2, device="cpu", steps=10, lr=3e-3, activate="always")
    return RoundSettings(**{**base, **kw})


@pytest.fixture
def registry(project_dir: Path, checkpoints: dict) -> ModelRegistry:
    reg = ModelRegistry.of_project(project_dir)
    reg.import_model(checkpoints["broken"])  # a round beats it: there is a version to publish
    return reg


def says(message: str, folder: Path, why: str) -> None:
    """One line naming ``folder`` (or a file in it) and what is wrong."""
    assert "\n" not in message and str(folder) in message and why in message.lower(), message


def in_registry(reg: ModelRegistry, *names: str):
    def matches(p: Path) -> bool:
        return p.is_relative_to(reg.root) and any(n in p.name for n in names)
    return matches


@pytest.mark.parametrize("where", ["weights", "card", "record"])
def test_a_full_disk_while_publishing_leaves_the_registry_as_it_was(
        where: str, project_dir: Path, registry: ModelRegistry, monkeypatch: pytest.MonkeyPatch) -> None:
    before = snapshot(registry.root)
    name = {"weights": "model.safetensors", "card": "model.json", "record": "version.json"}[where]
    fault = DiskFull(monkeypatch, in_registry(registry, name))
    result = run_round(project_dir, settings())
    assert fault.hits == 1
    assert result.status == "failed" and result.version is None
    says(result.message, registry.root, "no space left on device")
    assert snapshot(registry.root) == before and leftovers(registry.root) == []
    assert registry.active().version == "v0001"


def test_a_full_disk_when_activating_keeps_the_old_version_active(
        project_dir: Path, registry: ModelRegistry, monkeypatch: pytest.MonkeyPatch) -> None:
    DiskFull(monkeypatch, in_registry(registry, "active.json"))
    result = run_round(project_dir, settings())
    assert result.status == "failed"
    says(result.message, registry.root, "no space left on device")
    monkeypatch.undo()
    assert registry.active().version == "v0001" and leftovers(registry.root) == []
    for v in registry.versions():  # what was committed is whole
        load_model(v.path)


def test_a_full_disk_when_seeding_the_default_model(project_dir: Path, checkpoints: dict,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COCOPATH_DEFAULT_MODEL", str(checkpoints["student"]))
    reg = ModelRegistry.of_project(project_dir)
    DiskFull(monkeypatch, in_registry(reg, "model.safetensors"), code=errno.EDQUOT)
    result = run_round(project_dir, settings())
    assert result.status == "failed"
    says(result.message, reg.root, "disk quota exceeded")
    assert reg.versions() == [] and leftovers(reg.root) == []


def test_a_read_only_registry(project_dir: Path, registry: ModelRegistry, monkeypatch: pytest.MonkeyPatch) -> None:
    before = snapshot(registry.root)
    code = read_only(monkeypatch, registry.root)
    try:
        result = run_round(project_dir, settings())
    finally:
        registry.root.chmod(0o700)
    why = "read-only file system" if code == errno.EROFS else "permission denied"
    assert result.status == "failed"
    says(result.message, registry.root, why)
    monkeypatch.undo()
    assert snapshot(registry.root) == before and leftovers(registry.root) == []


@pytest.mark.parametrize("events", [False, True])
def test_the_command_line_says_it_in_one_line(events: bool, project_dir: Path, registry: ModelRegistry,
                                              monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    DiskFull(monkeypatch, in_registry(registry, "model.safetensors"))
    argv = ["finetune", "--project", str(project_dir), "--device", "cpu", "--patch", "64", "--steps", "10",
            "--lr", "3e-3", "--unlabelled-per-roi", "2", "--threads", "1"]
    capsys.readouterr()
    assert main([*argv, *(["--events"] if events else [])]) == 1
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    if events:
        last = [json.loads(x) for x in out.splitlines() if x.startswith("{")][-2:]
        assert last[0]["event"] == "error"
        says(last[0]["data"]["message"], registry.root, "no space left on device")
        assert last[1]["event"] == "result" and last[1]["data"]["status"] == "failed"
    else:
        last = err.splitlines()[-1]  # after the progress lines
        assert last.startswith("cocopath-engine: ") and "cocopath-engine" not in err[:-len(last) - 1]
        says(last, registry.root, "no space left on device")

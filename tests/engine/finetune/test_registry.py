"""The model registry: versions, activation, rollback to exact weights, atomic publishing, import
and export of safetensors only."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from finetune_fixtures import card, save_tiny, tiny_model

from engine.finetune.registry import ModelRegistry, RegistryError, default_model_path, file_sha256
from engine.inference.spec import load_spec
from engine.training.checkpoints import load_model, save_model


def _child(model: torch.nn.Module, shift: float = 0.05) -> torch.nn.Module:
    with torch.no_grad():
        for p in model.parameters():
            p.add_(shift)
    return model


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_rollback_restores_the_exact_weights(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path / "models")
    v1 = reg.import_model(save_tiny(tmp_path / "s.safetensors", seed=5))
    assert reg.active() == v1 and v1.parent is None  # the first version becomes active
    digest1 = reg.weights_digest("v0001")
    original, _ = load_model(v1.path)
    model = _child(tiny_model(5))
    v2 = reg.publish(model, card(model), "v0001", {"heldout_miou": 0.7}, "round 1", activate=True)
    assert (v2.version, v2.parent, reg.active().version) == ("v0002", "v0001", "v0002")
    assert reg.weights_digest("v0002") != digest1
    back = reg.rollback()
    assert back.version == "v0001" and reg.active().version == "v0001"
    assert file_sha256(reg.active().path) == digest1
    restored, _ = load_model(reg.active().path)
    for (k, a), (_, b) in zip(original.state_dict().items(), restored.state_dict().items()):
        assert torch.equal(a, b), k
    with pytest.raises(RegistryError, match="no parent"):
        reg.rollback()
    assert [v.version for v in reg.versions()] == ["v0001", "v0002"]  # every version kept
    assert reg.get("v0002").metrics == {"heldout_miou": 0.7} and reg.get("v0002").note == "round 1"


def test_each_version_has_its_own_prediction_cache_key(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path / "models")
    src = save_tiny(tmp_path / "s.safetensors", seed=5)
    a, b = reg.import_model(src), reg.import_model(src)  # the same file, twice
    model = _child(tiny_model(5))
    c = reg.publish(model, card(model), a.version, {}, "", activate=False)
    specs = [load_spec(v.path) for v in (a, b, c)]
    assert len({s.version for s in specs}) == 3
    assert all(v.version in s.version for v, s in zip((a, b, c), specs))
    assert specs[0].classes == ("background", "tumour")


def test_a_failed_publish_leaves_no_version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reg = ModelRegistry(tmp_path / "models")
    reg.import_model(save_tiny(tmp_path / "s.safetensors"))
    before = _snapshot(reg.root)

    def half_then_fail(path: Path, model: object, meta: dict) -> None:
        Path(path).write_bytes(b"\x00" * 100)  # a half-written file…
        raise OSError("disk full")  # …then the write fails

    monkeypatch.setattr("engine.training.checkpoints.save_model", half_then_fail)
    model = tiny_model(1)
    with pytest.raises(OSError, match="disk full"):
        reg.publish(model, card(model), "v0001", {}, "", activate=True)
    assert _snapshot(reg.root) == before  # no version, no temp folder, active unchanged


KILLED_WRITER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import engine.training.checkpoints as ck
    from engine.finetune.registry import ModelRegistry
    sys.path[:0] = [{fixtures!r}, {tests!r}]
    from finetune_fixtures import TINY, card
    from engine.models import create_model

    def slow_save(path, model, meta):
        Path(path).write_bytes(b"half a checkpoint")
        print("writing", flush=True)
        time.sleep(60)

    ck.save_model = slow_save
    model = create_model("mobile-unet-small", **TINY)
    ModelRegistry(Path({root!r})).publish(model, card(model), "v0001", {{}}, "", activate=True)
""")


def test_a_killed_publish_leaves_no_half_version(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path / "models")
    reg.import_model(save_tiny(tmp_path / "s.safetensors"))
    before = _snapshot(reg.root)
    code = KILLED_WRITER.format(fixtures=str(Path(__file__).parent), tests=str(Path(__file__).parents[2]),
                               root=str(reg.root))
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "writing"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(30)
    leftovers = [p for p in reg.root.iterdir() if p.name.startswith(".tmp-")]
    assert len(leftovers) == 1  # the killed writer's folder…
    assert [v.version for v in reg.versions()] == ["v0001"]  # …is never read as a version
    assert reg.active().version == "v0001"
    model = tiny_model(2)
    v = reg.publish(model, card(model), "v0001", {}, "next", activate=False)
    assert v.version == "v0002"
    assert not leftovers[0].exists()  # cleaned by the next writer
    assert {k: b for k, b in _snapshot(reg.root).items() if not k.startswith("v0002")} == before


def test_a_live_writers_temp_folder_is_left_alone(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path / "models")
    live = reg.root / f".tmp-{os.getpid()}-abc"
    dead = reg.root / ".tmp-999999999-abc"
    for d in (live, dead):
        d.mkdir(parents=True)
        (d / "model.safetensors").write_bytes(b"partial")
    assert reg.versions() == [] and reg.active() is None
    assert reg.clean() == [dead] and live.exists()


def test_activate_replaces_active_json_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reg = ModelRegistry(tmp_path / "models")
    src = save_tiny(tmp_path / "s.safetensors")
    reg.import_model(src)
    reg.import_model(src)
    assert reg.active().version == "v0001"
    old = (reg.root / "active.json").read_bytes()

    def crash(*_a: object) -> None:
        raise OSError("power cut")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        reg.activate("v0002")
    monkeypatch.undo()
    assert (reg.root / "active.json").read_bytes() == old  # the old pointer, whole
    assert sorted(p.name for p in reg.root.iterdir()) == ["active.json", "v0001", "v0002"]
    assert reg.activate("v0002").version == reg.active().version == "v0002"
    assert json.loads((reg.root / "active.json").read_text())["previous"] == "v0001"
    with pytest.raises(RegistryError, match=r"no model version 'v0009'.*v0001, v0002"):
        reg.activate("v0009")


def test_import_refuses_pickles_and_foreign_files(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path / "models")
    model = tiny_model(0)
    pt = tmp_path / "model.pt"
    torch.save(model.state_dict(), pt)
    disguised = tmp_path / "disguised.safetensors"
    disguised.write_bytes(pt.read_bytes())
    from safetensors.torch import save_file

    bare = tmp_path / "bare.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(bare))
    wrong = tmp_path / "wrong.safetensors"
    other = tiny_model(0)
    save_model(wrong, other, {**card(other), "model": {**other.config, "classes": 3}})
    for path, why in ((pt, "only .safetensors"), (disguised, "pickles"), (bare, "without CoCoPath metadata"),
                      (wrong, "do not fit")):
        with pytest.raises(RegistryError, match=why):
            reg.import_model(path)
    assert reg.versions() == [] and not any(reg.root.glob(".tmp-*"))


def test_export_writes_the_weights_and_the_card(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path / "models")
    v = reg.import_model(save_tiny(tmp_path / "s.safetensors"), note="shipped")
    out = reg.export_model(v.version, tmp_path / "out" / "mine.safetensors")
    assert out.read_bytes() == v.path.read_bytes()
    assert json.loads(out.with_suffix(".json").read_text()) == v.card
    with pytest.raises(RegistryError, match="must end in .safetensors"):
        reg.export_model(v.version, tmp_path / "mine.pt")
    assert reg.import_model(out).version == "v0002"  # an exported version imports again


def test_ensure_seeded_imports_the_default_only_into_an_empty_registry(tmp_path: Path) -> None:
    reg = ModelRegistry.of_project(tmp_path)
    assert reg.root == tmp_path / "models"
    assert reg.ensure_seeded(None) is None and reg.versions() == []
    default = save_tiny(tmp_path / "default.safetensors")
    v = reg.ensure_seeded(default)
    assert v.version == "v0001" and reg.active() == v and "default" in v.note
    assert reg.ensure_seeded(save_tiny(tmp_path / "other.safetensors", seed=9)) == v
    assert len(reg.versions()) == 1


def test_default_model_path_env_then_resources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import engine.finetune.registry as registry

    repo = tmp_path / "repo"
    (repo / "resources" / "models").mkdir(parents=True)
    monkeypatch.setattr(registry, "SHIPPED_MODELS", repo / "resources" / "models")
    monkeypatch.delenv("COCOPATH_DEFAULT_MODEL", raising=False)
    assert default_model_path() is None
    shipped = save_tiny(repo / "resources" / "models" / "cocopath-student-ebhi.safetensors")
    assert default_model_path() == shipped
    mine = save_tiny(tmp_path / "mine.safetensors")
    monkeypatch.setenv("COCOPATH_DEFAULT_MODEL", str(mine))
    assert default_model_path() == mine
    monkeypatch.setenv("COCOPATH_DEFAULT_MODEL", str(tmp_path / "missing.safetensors"))
    assert default_model_path() is None  # what the user set wins: never another model in its place

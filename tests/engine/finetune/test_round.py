"""A round end to end on a tiny project: it learns, measures, publishes, and stops cleanly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from finetune_fixtures import card, make_project, tiny_model

from engine.finetune.data import GatherOptions, gather
from engine.finetune.loop import Batcher, RoundError, train_stage
from engine.finetune.objective import FinetuneObjective, PartialSupervised
from engine.finetune.registry import ModelRegistry
from engine.finetune.round import RoundSettings, run_round
from engine.inference.spec import load_spec
from engine.jobs import CancelToken


def fast(method: str, **kw) -> RoundSettings:
    base = dict(steps=4, patch=64, batch_size=4, lr=3e-3, teacher_steps=2, paraphraser_steps=2,
                unlabelled_per_roi=2, method=method, device="cpu")
    return RoundSettings(**{**base, **kw})


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_round_improves_heldout_miou_over_a_broken_start(project_dir: Path, checkpoints: dict,
                                                         tiny_method: str) -> None:
    reg = ModelRegistry.of_project(project_dir)
    reg.import_model(checkpoints["broken"])  # says "background" everywhere
    events = []
    result = run_round(project_dir, fast(tiny_method, steps=12, teacher_steps=4, eval_every=4,
                                         teacher=str(checkpoints["teacher"])), events.append)
    assert result.status == "done", result.message
    assert (result.version, result.parent, result.activated) == ("v0002", "v0001", True)
    assert result.before["pixels"] == result.after["pixels"] > 0
    assert result.after["miou"] > result.before["miou"] + 0.2, (result.before, result.after)
    assert reg.active().version == "v0002"
    v = reg.get("v0002")
    assert v.metrics["heldout_miou"] == pytest.approx(result.after["miou"])
    assert v.metrics["heldout_miou_parent"] == pytest.approx(result.before["miou"])
    ft = v.card["finetune"]
    assert ft["parent"] == "v0001" and ft["data"]["teacher"]["path"].endswith("teacher.safetensors")
    assert len(ft["data"]["train_rois"]) == 3 and len(ft["data"]["heldout_rois"]) == 1
    assert ft["settings"]["steps"] == 12 and v.card["input"]["mpp"] == 1.0
    assert "v0002" in load_spec(v.path).version
    stages = [e.stage for e in events]
    for stage in ("gather", "evaluate", "teacher", "paraphraser", "student", "heldout", "publish"):
        assert stage in stages
    assert stages.index("teacher") < stages.index("paraphraser") < stages.index("student")
    assert [s for s, _ in result.curves["heldout_miou"]] == [4, 8, 12]
    assert len(result.curves["loss"]) == 12 and len(result.curves["teacher_loss"]) == 4
    assert {"loss_ce", "loss_dice", "loss_kd", "loss_coco", "loss_ft", "loss_adv"} <= set(result.curves["terms"])
    assert any("eta_s" in e.metrics for e in events if e.stage == "student")
    assert "teacher teacher.safetensors adapted for 4 steps" in result.message
    assert result.to_dict()["curves"]["heldout_miou"][-1] == [12, result.after["miou"]]


def test_without_a_teacher_the_round_distils_from_the_frozen_student(
        project_dir: Path, checkpoints: dict, tiny_method: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COCOPATH_DEFAULT_MODEL", str(checkpoints["student"]))
    reg = ModelRegistry.of_project(project_dir)
    assert reg.versions() == []
    result = run_round(project_dir, fast(tiny_method, use_teacher=False, activate="never"))
    assert result.status == "done", result.message
    assert "no teacher: distilled from the frozen current student (v0001)" in result.message
    assert reg.get("v0001").note.startswith("the default model")  # seeded from the shipped student
    assert reg.active().version == "v0001" and not result.activated  # activate="never"
    assert reg.get("v0002").card["finetune"]["data"]["teacher"] == {"path": None, "frozen_student": "v0001"}


@pytest.mark.parametrize("stage", ["gather", "teacher", "student"])
def test_cancel_leaves_the_registry_unchanged(project_dir: Path, checkpoints: dict, tiny_method: str,
                                              stage: str) -> None:
    reg = ModelRegistry.of_project(project_dir)
    reg.import_model(checkpoints["student"])
    before = _snapshot(reg.root)
    token = CancelToken()

    def progress(p) -> None:
        if p.stage == stage:
            token.cancel()

    result = run_round(project_dir, fast(tiny_method, steps=50, teacher=str(checkpoints["teacher"])),
                       progress, token)
    assert result.status == "cancelled" and result.version is None
    assert "registry is unchanged" in result.message
    assert _snapshot(reg.root) == before
    assert len(result.curves["loss"]) <= 1


def test_out_of_memory_halves_the_batch_and_goes_on(project_dir: Path, checkpoints: dict, tiny_method: str,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A GPU that fits two patches (simulated: more raise CUDA's out-of-memory error)."""
    calls: list[int] = []
    for cls in (PartialSupervised, FinetuneObjective):
        real = cls.forward

        def limited(self, images, target, _real=real):
            calls.append(images.shape[0])
            if images.shape[0] > 2 and self.training:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return _real(self, images, target)

        monkeypatch.setattr(cls, "forward", limited)
    ModelRegistry.of_project(project_dir).import_model(checkpoints["student"])
    result = run_round(project_dir, fast(tiny_method, batch_size=8, teacher=str(checkpoints["teacher"])))
    assert result.status == "done", result.message
    assert result.curves["batch_size"] == [("teacher", 0, 4), ("teacher", 0, 2)]
    assert result.data["batch_size"] == 2
    assert len(result.curves["loss"]) == 4 and len(result.curves["teacher_loss"]) == 2
    assert max(c for c in calls[3:]) == 2  # after backing off, never more than fits


def test_out_of_memory_with_one_patch_fails_clearly(project_dir: Path, checkpoints: dict,
                                                    tiny_method: str) -> None:
    model = tiny_model(0)
    data = gather(project_dir, card(model), GatherOptions(patch=64))

    class NoMemory(PartialSupervised):
        def forward(self, images, target):
            raise RuntimeError("CUDA error: out of memory")

    with pytest.raises(RoundError, match="out of memory even with a batch of one patch"):
        train_stage(NoMemory(model), Batcher(data.train, [], (0.5,) * 3, (0.2,) * 3, 0), stage="student",
                    steps=2, batch_size=4, lr=1e-3, device=torch.device("cpu"))

    class Broken(PartialSupervised):
        def forward(self, images, target):
            raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    with pytest.raises(RuntimeError, match="shapes"):  # not memory: never retried
        train_stage(Broken(model), Batcher(data.train, [], (0.5,) * 3, (0.2,) * 3, 0), stage="student",
                    steps=2, batch_size=4, lr=1e-3, device=torch.device("cpu"))


def test_no_model_and_nothing_to_learn_are_clear(tmp_path: Path, tumour_slide: Path, checkpoints: dict,
                                                 tiny_method: str) -> None:
    make_project(tmp_path / "p", tumour_slide, rois=[]).close()
    result = run_round(tmp_path / "p", fast(tiny_method))
    assert result.status == "failed" and "no default student is installed" in result.message
    assert "models import" in result.message
    reg = ModelRegistry.of_project(tmp_path / "p")
    assert reg.versions() == []
    reg.import_model(checkpoints["student"])
    result = run_round(tmp_path / "p", fast(tiny_method))
    assert result.status == "nothing-to-learn" and "no correction ROI" in result.message
    assert [v.version for v in reg.versions()] == ["v0001"]
    bad = run_round(tmp_path / "p", fast(tiny_method, patch=100))
    assert bad.status == "failed" and "multiple of 32" in bad.message
    missing = run_round(tmp_path / "nowhere", fast(tiny_method))
    assert missing.status == "failed" and "no such project folder" in missing.message

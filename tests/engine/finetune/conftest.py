"""Fixtures for fine-tuning tests (building blocks in ``finetune_fixtures``): a tiny slide and
project, tiny checkpoints, a distillation config with a small critic; torch on one thread (on the
shared 2-core machine, two threads that spin-wait made a tiny training step 5-10× slower)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from finetune_fixtures import make_project, save_tiny, slide_rgb, write_slide


@pytest.fixture(autouse=True)
def _torch_threads() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _no_default_model(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Tests never pick up a student or teacher shipped in resources/models."""
    missing = tmp_path_factory.mktemp("none") / "missing.safetensors"
    monkeypatch.setenv("COCOPATH_DEFAULT_MODEL", str(missing))
    monkeypatch.setenv("COCOPATH_DEFAULT_TEACHER", str(missing))
    monkeypatch.setattr("engine.finetune.registry.SHIPPED_MODELS", missing.parent)


@pytest.fixture(scope="session")
def tumour_slide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_slide(tmp_path_factory.mktemp("slide") / "tumour.tif", slide_rgb())


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("ckpt")
    return {"broken": save_tiny(d / "broken.safetensors", seed=1, broken=True),
            "student": save_tiny(d / "student.safetensors", seed=2),
            "teacher": save_tiny(d / "teacher.safetensors", seed=3)}


@pytest.fixture
def project_dir(tmp_path: Path, tumour_slide: Path) -> Path:
    folder = tmp_path / "project"
    make_project(folder, tumour_slide).close()
    return folder


@pytest.fixture(scope="session")
def tiny_method() -> str:
    """coco-full with every loss and connector, but a small critic (a round in seconds)."""
    return str(Path(__file__).with_name("tiny-coco-full.toml"))

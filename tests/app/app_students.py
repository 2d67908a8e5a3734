"""Untrained students and the project's model registry for the Training, Models and Review next
docks' tests. A module of its own (not conftest) so test files import it by a name no other test
folder shares."""

from __future__ import annotations

from pathlib import Path

import torch

from engine.finetune.registry import ModelRegistry, ModelVersion
from engine.models import create_model
from engine.training.checkpoints import save_model
from qt_probe import wait_drawn

META = {"classes": ["background", "tumour"], "input": {"mpp": 2.0, "tile": 256}}


def student(seed: int) -> torch.nn.Module:
    """An untrained ``mobile-unet-small`` (2 classes), its weights set by ``seed``."""
    torch.manual_seed(seed)
    return create_model("mobile-unet-small", classes=2)


def save_student(path: Path, seed: int) -> Path:
    """:func:`student` saved with its card (:data:`META`) at ``path``."""
    model = student(seed)
    return save_model(path, model, {**META, "model": model.config})


def publish_student(reg: ModelRegistry, seed: int, parent: str, metrics: dict, note: str) -> ModelVersion:
    """:func:`student` published as a round's child of ``parent``, not active."""
    model = student(seed)
    return reg.publish(model, {**META, "model": model.config}, parent=parent, metrics=metrics, note=note,
                       activate=False)


def open_registry(qtbot, window, slide: Path) -> ModelRegistry:
    """Open ``slide`` in ``window``, wait until it is drawn and the Training dock is ready; the
    project's model registry."""
    assert window.open_path(slide)
    wait_drawn(qtbot, window.view)
    ta = window.training
    qtbot.waitUntil(lambda: ta.ready and ta.registry is not None, timeout=10000)
    return ModelRegistry.of_project(window.annotations.project.folder)

"""Models for the app's tests: a constant "tumour everywhere" model (the prediction overlay and the
Model panel), untrained students and the project's model registry (the Training, Models and Review
next docks). A module of its own (not conftest) so test files import it by a name no other test
folder shares."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from engine.finetune.registry import ModelRegistry, ModelVersion
from engine.models import create_model
from engine.models.registry import register_model
from engine.training.checkpoints import save_model
from qt_probe import wait_drawn

class Uniform(nn.Module):
    """Constant logits per class (its only weights), whatever the input."""

    def __init__(self, classes: int = 2) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        return self.logits.view(1, -1, 1, 1).expand(n, -1, h, w) + 0 * x[:, :1]


@register_model("test-uniform")
def _uniform(classes: int = 2) -> nn.Module:  # type: ignore[return-value]
    return Uniform(classes)


def save_uniform(path: Path, mpp: float | None = 2.0, tile: int = 256) -> Path:
    """A ``test-uniform`` model with logits background 0, tumour 8 (tumour everywhere), saved with
    its card (no normalisation) at ``path``."""
    model = create_model("test-uniform", classes=2)
    with torch.no_grad():
        model.logits.copy_(torch.tensor([0.0, 8.0]))
    return save_model(path, model, {"model": model.config, "classes": ["background", "tumour"],
                                    "input": {"mpp": mpp, "tile": tile, "mean": [0, 0, 0],
                                              "std": [1, 1, 1]}})


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
    qtbot.waitUntil(lambda: ta.ready and ta.versions.registry is not None, timeout=10000)
    return ModelRegistry.of_project(window.annotations.project.folder)

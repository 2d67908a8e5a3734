"""Distillation and task losses, one per file, registered by name.

Every loss is a plain function of tensors returning ``dict[str, Tensor]``. Entries whose key starts
with ``loss`` are optimised: the distiller multiplies them by the configured weight and sums them;
any other entry (e.g. ``gp``, ``wasserstein``) is only logged.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from engine.distill.losses.adversarial import adversarial_loss
from engine.distill.losses.coco import coco_loss
from engine.distill.losses.coco_gram import coco_gram_loss
from engine.distill.losses.cwd import cwd_loss
from engine.distill.losses.factor_transfer import factor_loss
from engine.distill.losses.kd import pixel_kd_loss
from engine.distill.losses.segmentation import segmentation_loss
from engine.distill.losses.skd_pairwise import pairwise_loss

LossFn = Callable[..., dict[str, Tensor]]

LOSSES: dict[str, LossFn] = {
    "segmentation": segmentation_loss,
    "kd": pixel_kd_loss,
    "coco": coco_loss,
    "coco_gram": coco_gram_loss,
    "adversarial": adversarial_loss,
    "factor_transfer": factor_loss,
    "skd_pairwise": pairwise_loss,
    "cwd": cwd_loss,
}


def get_loss(name: str) -> LossFn:
    if name not in LOSSES:
        raise KeyError(f"unknown loss {name!r}; valid: {', '.join(sorted(LOSSES))}")
    return LOSSES[name]


__all__ = ["LOSSES", "LossFn", "get_loss"]

"""Evaluation of a segmentation model over a split: any image size (reflect-pad to the network's
stride, crop back), one confusion matrix over all pixels of the split."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engine.jobs import CancelToken, Progress
from engine.training.loader import SegDataset
from engine.training.metrics import ConfusionMatrix


def predict_logits(model: nn.Module, image: Tensor, stride: int = 32) -> Tensor:
    """``image`` B×3×H×W (any H, W) → logits B×K×H×W, padding to a multiple of ``stride`` and cropping."""
    h, w = image.shape[-2:]
    ph, pw = (-h) % stride, (-w) % stride
    if ph or pw:
        mode = "reflect" if ph < h and pw < w else "replicate"
        image = F.pad(image, (0, pw, 0, ph), mode=mode)
    return model(image)[..., :h, :w]


@torch.no_grad()
def evaluate(
    model: nn.Module, dataset: SegDataset, class_names: list[str] | None = None,
    device: torch.device | str = "cpu", progress: Callable[[Progress], None] | None = None,
    cancel: CancelToken | None = None,
) -> dict[str, Any]:
    """mIoU, Dice, pixel accuracy and per-class IoU/Dice over ``dataset`` (no augmentation)."""
    was = model.training
    model.eval().to(device)
    k = int(getattr(model, "classes", 2))
    cm = ConfusionMatrix(k)
    stride = int(getattr(model, "stride", 32))
    t0 = time.perf_counter()
    for i in range(len(dataset)):
        if cancel is not None and cancel.cancelled:
            break
        img, mask = dataset[i]
        pred = predict_logits(model, img[None].to(device), stride).argmax(1)[0].cpu().numpy()
        cm.update(mask.numpy(), pred)
        if progress is not None:
            progress(Progress("eval", i + 1, len(dataset)))
    model.train(was)
    out = cm.summary(class_names)
    out["images"] = len(dataset)
    out["seconds"] = time.perf_counter() - t0
    return out

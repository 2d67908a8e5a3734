"""Task loss on labels: pixel cross-entropy + soft Dice.

Dice is computed per image (mean over classes), then averaged over the batch, so the loss of a batch
is the mean of its images' losses: splitting a batch across data-parallel processes gives the same
gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def segmentation_loss(
    logits: Tensor, target: Tensor, dice_weight: float = 1.0, ignore_index: int = 255
) -> dict[str, Tensor]:
    """``logits`` B×K×H×W, ``target`` B×H×W int64 class indices → ``loss_ce``, ``loss_dice``."""
    ce = F.cross_entropy(logits.float(), target, ignore_index=ignore_index)
    out = {"loss_ce": ce}
    if dice_weight:
        valid = (target != ignore_index).unsqueeze(1).float()
        prob = logits.float().softmax(1) * valid
        onehot = F.one_hot(target.clamp(0, logits.shape[1] - 1), logits.shape[1])
        onehot = onehot.permute(0, 3, 1, 2).float() * valid
        inter = (prob * onehot).sum((2, 3))
        denom = prob.sum((2, 3)) + onehot.sum((2, 3))
        dice = (2 * inter + 1.0) / (denom + 1.0)  # B×K, smoothed
        out["loss_dice"] = dice_weight * (1 - dice.mean(1)).mean()
    return out



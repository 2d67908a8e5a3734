"""Losses for partial labels: only pixels a pathologist reviewed carry a label.

A correction ROI labels every pixel inside it (a class, or background); pixels outside every ROI
are :data:`IGNORE` (255). The supervised loss sees only labelled pixels (a batch of unlabelled
patches gives exactly zero, never NaN); the pixel-wise distillation term sees only the others, so
that where the pathologist said something, the teacher's older opinion does not argue with it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

IGNORE = 255


def partial_label_loss(logits: Tensor, target: Tensor, dice_weight: float = 1.0,
                       ignore_index: int = IGNORE, per_image: bool = False) -> dict[str, Tensor]:
    """Cross-entropy + soft Dice over labelled pixels only.

    ``logits`` B×K×H×W, ``target`` B×H×W int64 (``ignore_index`` where unknown) →
    ``loss_ce`` (mean over labelled pixels; 0 when there are none; ``per_image``: mean over each
    image's labelled pixels, then over the images with any, so an image labelling few pixels counts
    as much as one labelling many) and ``loss_dice`` (soft Dice per image with labelled pixels,
    smoothed, mean over classes, then over those images; 0 when there are none). Unlabelled pixels
    get no gradient from either.
    """
    valid = target != ignore_index
    n = valid.sum()
    safe = torch.where(valid, target, torch.zeros_like(target))
    ce_map = F.cross_entropy(logits.float(), safe, reduction="none") * valid
    if per_image:
        per = valid.flatten(1).sum(1)
        ce = (ce_map.flatten(1).sum(1) / per.clamp_min(1)).sum() / (per > 0).sum().clamp_min(1)
    else:
        ce = ce_map.sum() / n.clamp_min(1)
    out = {"loss_ce": ce}
    if dice_weight:
        k = logits.shape[1]
        v = valid.unsqueeze(1).float()
        prob = logits.float().softmax(1) * v
        onehot = F.one_hot(safe.clamp(0, k - 1), k).permute(0, 3, 1, 2).float() * v
        inter = (prob * onehot).sum((2, 3))
        denom = prob.sum((2, 3)) + onehot.sum((2, 3))
        dice = (2 * inter + 1.0) / (denom + 1.0)  # B×K, smoothed
        has = valid.flatten(1).any(1).float()  # images with at least one labelled pixel
        per_image = (1 - dice.mean(1)) * has
        out["loss_dice"] = dice_weight * per_image.sum() / has.sum().clamp_min(1)
    return out


def masked_kd_loss(student_logits: Tensor, teacher_logits: Tensor, mask: Tensor,
                   temperature: float = 1.0) -> dict[str, Tensor]:
    """Pixel KD, KL(softmax(T/τ) ‖ softmax(S/τ))·τ², on the pixels where ``mask`` (B×H×W bool) is
    set, averaged over all pixels (so its scale matches :func:`engine.distill.losses.kd` when the
    mask is full) → ``loss_kd``."""
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"kd: logits shapes differ {tuple(student_logits.shape)} vs "
                         f"{tuple(teacher_logits.shape)}")
    t = temperature
    log_s = F.log_softmax(student_logits.float() / t, dim=1)
    log_t = F.log_softmax(teacher_logits.float().detach() / t, dim=1)
    kl = (log_t.exp() * (log_t - log_s)).sum(1) * mask.float()
    return {"loss_kd": kl.mean() * t * t}

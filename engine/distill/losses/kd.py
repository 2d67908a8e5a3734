"""Pixel-wise knowledge distillation (Hinton et al. 2015, per pixel as in Liu et al. 2019, SKD).

KL(softmax(z_T/τ) ‖ softmax(z_S/τ)) at every pixel, times τ², averaged over pixels and batch.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def pixel_kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0) -> dict[str, Tensor]:
    """``student_logits``, ``teacher_logits``: B×K×H×W → ``loss_kd`` (scalar)."""
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"kd: logits shapes differ {tuple(student_logits.shape)} vs {tuple(teacher_logits.shape)}")
    t = temperature
    log_s = F.log_softmax(student_logits.float() / t, dim=1)
    log_t = F.log_softmax(teacher_logits.float().detach() / t, dim=1)
    kl = (log_t.exp() * (log_t - log_s)).sum(1)  # B×H×W
    return {"loss_kd": kl.mean() * t * t}

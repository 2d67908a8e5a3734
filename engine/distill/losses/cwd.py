"""Channel-wise distillation (Shu et al. 2021, CWD): each channel's map becomes a distribution over
space, softmax(z/τ); loss = τ² · Σ KL(teacher ‖ student) / (B·C). Applied to logits (C = classes)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def cwd_loss(student: Tensor, teacher: Tensor, tau: float = 4.0) -> dict[str, Tensor]:
    """B×C×h×w each (same shape) → ``loss_cwd``."""
    if student.shape != teacher.shape:
        raise ValueError(f"cwd: shapes differ {tuple(student.shape)} vs {tuple(teacher.shape)}")
    b, c = student.shape[:2]
    s = F.log_softmax(student.float().flatten(2) / tau, dim=2)
    t = F.log_softmax(teacher.float().detach().flatten(2) / tau, dim=2)
    kl = (t.exp() * (t - s)).sum()
    return {"loss_cwd": kl * tau * tau / (b * c)}

"""SKD pair-wise distillation (Liu et al. 2019, "Structured Knowledge Distillation for Semantic
Segmentation"): one layer's pooled N×N self-similarity, S = Aᵀ·A of unit-norm position vectors,
matched between teacher and student by squared error / N² / B."""

from __future__ import annotations

import torch
from torch import Tensor

from engine.distill.losses.coco import pooled_positions


def pairwise_loss(student_feat: Tensor, teacher_feat: Tensor, grid: int | None = 16) -> dict[str, Tensor]:
    """Features B×C×h×w (any C, same h×w) → ``loss_pairwise``."""
    ps = pooled_positions(student_feat, grid)
    s_s = torch.bmm(ps.transpose(1, 2), ps)
    with torch.no_grad():
        pt = pooled_positions(teacher_feat.detach(), grid)
        s_t = torch.bmm(pt.transpose(1, 2), pt)
    if s_s.shape != s_t.shape:
        raise ValueError(f"skd_pairwise: grids differ {tuple(s_s.shape)} vs {tuple(s_t.shape)}")
    n = s_s.shape[-1]
    return {"loss_pairwise": ((s_t - s_s) ** 2).sum() / (n * n) / s_s.shape[0]}

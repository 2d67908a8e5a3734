"""CoCo: cross-layer correlation distillation (our reading of CoCo DistillNet; the loss was never
released).

For each network X with two features A, B (B×C×h×w on the same h×w grid — the shallow encoder
layer and the decoder layer at H/4), both are average-pooled to a ``grid``×``grid`` grid (bounding the
N² memory), flattened to B×C×N, every spatial position's channel vector is L2-normalised, and

    G_X = Aᵀ·B   (B×N×N: how each position in one layer relates to each position in the other)

so A and B of one network need the same channel count C (the models' H/4 decoder block is built
with as many channels as the H/4 encoder feature). Teacher and student may have any C: both give
N×N, no adapter needed. Loss = Σ (G_T − G_S)² / N² / B.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def pooled_positions(x: Tensor, grid: int | None) -> Tensor:
    """B×C×h×w → B×C×N with unit-norm channel vector at every position (after pooling to ``grid``)."""
    if grid and (x.shape[-2] > grid or x.shape[-1] > grid):
        x = F.adaptive_avg_pool2d(x, (min(grid, x.shape[-2]), min(grid, x.shape[-1])))
    return F.normalize(x.float().flatten(2), dim=1, eps=1e-6)


def cross_layer_correlation(a: Tensor, b: Tensor, grid: int | None = 16) -> Tensor:
    """G = Aᵀ·B for one network: B×N×N."""
    if a.shape[1] != b.shape[1] or a.shape[-2:] != b.shape[-2:]:
        raise ValueError(
            f"coco: the two layers of one network need equal channels and grid, got "
            f"{tuple(a.shape[1:])} and {tuple(b.shape[1:])}"
        )
    pa, pb = pooled_positions(a, grid), pooled_positions(b, grid)
    return torch.bmm(pa.transpose(1, 2), pb)


def coco_loss(
    student_a: Tensor, student_b: Tensor, teacher_a: Tensor, teacher_b: Tensor, grid: int | None = 16
) -> dict[str, Tensor]:
    """Features B×C×h×w (student C_s, teacher C_t, same h×w) → ``loss_coco``."""
    g_s = cross_layer_correlation(student_a, student_b, grid)
    with torch.no_grad():
        g_t = cross_layer_correlation(teacher_a.detach(), teacher_b.detach(), grid)
    if g_s.shape != g_t.shape:
        raise ValueError(f"coco: student grid {tuple(g_s.shape)} differs from teacher's {tuple(g_t.shape)}")
    n = g_s.shape[-1]
    return {"loss_coco": ((g_t - g_s) ** 2).sum() / (n * n) / g_s.shape[0]}

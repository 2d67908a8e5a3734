"""CoCo-Gram: the alternative, FSP-like reading of cross-layer correlation (Yim et al. 2017).

G_X = A·Bᵀ / N  (B×C_a×C_b: how each channel of one layer relates to each channel of the other).
Channel Gram matrices of teacher and student only compare if the channels match, so the student's
two features first go through 1×1 adapters (:class:`engine.distill.connectors.Adapter`) to the
teacher's channel counts. Loss = mean over entries of (G_T − G_S)².
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def channel_gram(a: Tensor, b: Tensor, grid: int | None = 16) -> Tensor:
    """B×C_a×h×w, B×C_b×h×w → B×C_a×C_b Gram over (pooled) positions."""
    if a.shape[-2:] != b.shape[-2:]:
        raise ValueError(f"coco_gram: layers need one grid, got {tuple(a.shape[-2:])} and {tuple(b.shape[-2:])}")
    if grid and a.shape[-1] > grid:
        a, b = F.adaptive_avg_pool2d(a, grid), F.adaptive_avg_pool2d(b, grid)
    fa, fb = a.float().flatten(2), b.float().flatten(2)
    return torch.bmm(fa, fb.transpose(1, 2)) / fa.shape[-1]


def coco_gram_loss(
    student_a: Tensor, student_b: Tensor, teacher_a: Tensor, teacher_b: Tensor, grid: int | None = 16
) -> dict[str, Tensor]:
    """Adapted student features and teacher features (same channels pairwise) → ``loss_coco_gram``."""
    g_s = channel_gram(student_a, student_b, grid)
    with torch.no_grad():
        g_t = channel_gram(teacher_a.detach(), teacher_b.detach(), grid)
    if g_s.shape != g_t.shape:
        raise ValueError(f"coco_gram: Gram shapes differ {tuple(g_s.shape)} vs {tuple(g_t.shape)}; adapt the student")
    return {"loss_coco_gram": ((g_t - g_s) ** 2).mean()}

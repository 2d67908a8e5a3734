"""Factor Transfer (Kim et al. 2018): the teacher's factor (paraphraser encoder output) and the
student's factor (translator output) are flattened, L2-normalised and compared by L1.
Paraphraser pre-training uses :func:`paraphraser_reconstruction_loss` (MSE to the teacher feature).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def factor_loss(student_factor: Tensor, teacher_factor: Tensor) -> dict[str, Tensor]:
    """B×F×h×w each → ``loss_ft`` (mean absolute difference of the unit-norm factors)."""
    if student_factor.shape != teacher_factor.shape:
        raise ValueError(f"factor_transfer: shapes differ {tuple(student_factor.shape)} vs {tuple(teacher_factor.shape)}")
    fs = F.normalize(student_factor.float().flatten(1), dim=1)
    ft = F.normalize(teacher_factor.float().detach().flatten(1), dim=1)
    return {"loss_ft": (fs - ft).abs().mean()}


def paraphraser_reconstruction_loss(reconstruction: Tensor, feature: Tensor) -> dict[str, Tensor]:
    """Unsupervised paraphraser objective → ``loss_paraphrase`` (MSE to the frozen teacher feature)."""
    return {"loss_paraphrase": F.mse_loss(reconstruction.float(), feature.float().detach())}

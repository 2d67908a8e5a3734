"""How much each loss term pulls on the student: the check that found the inert factor-transfer term.

A term whose gradient on the student's parameters is a small fraction of cross-entropy's does next to
nothing, whatever its loss value; one many times larger drowns the labels. :func:`gradient_balance`
measures each weighted term's gradient norm on a few batches, as a ratio to ``loss_ce``'s.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

from engine.distill.distiller import Distiller


def uses_unsaved_state(sources: Iterable[str]) -> bool:
    """Whether a term reads the critic or a connector (not saved with the student)."""
    return any(src == "critic" or src.startswith("connector.") for src in sources)


def gradient_balance(distiller: Distiller, batches: Iterable[tuple[Tensor, Tensor, dict[str, Tensor] | None]],
                     skip_unsaved: bool = True) -> dict[str, dict[str, float | None]]:
    """Per loss term: mean weighted value, mean gradient norm on the student's parameters and that
    norm over ``loss_ce``'s, over ``batches`` of (images, labels, stored teacher outputs or None).

    ``skip_unsaved`` leaves out the terms reading the critic or a connector: read back from a
    saved student, those modules would be fresh, not the ones it trained with."""
    params = [p for p in distiller.student.parameters() if p.requires_grad]
    sums: dict[str, list[float]] = {}
    n = 0
    for images, target, teacher in batches:
        n += 1
        terms = distiller(images, target, teacher)
        for key, val in terms.items():
            if not key.startswith("loss") or not val.requires_grad:
                continue
            if skip_unsaved and uses_unsaved_state(distiller.term_inputs.get(key, ())):
                continue
            grads = torch.autograd.grad(val, params, retain_graph=True, allow_unused=True)
            norm = torch.sqrt(sum((g.float() ** 2).sum() for g in grads if g is not None))
            acc = sums.setdefault(key, [0.0, 0.0])
            acc[0] += float(val.detach())
            acc[1] += float(norm)
    if not n:
        raise ValueError("gradient_balance needs at least one batch")
    ce = sums["loss_ce"][1] / n if "loss_ce" in sums else 0.0
    return {k: {"loss": v / n, "grad_norm": g / n, "vs_ce": (g / n) / ce if ce else None} for k, (v, g) in sums.items()}

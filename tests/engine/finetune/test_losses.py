"""Partial-label losses: pixels outside the correction ROIs never count; corrections beat the teacher."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from finetune_fixtures import tiny_model

from engine.finetune.losses import IGNORE, masked_kd_loss, partial_label_loss
from engine.finetune.objective import FinetuneObjective, finetune_config


def _target() -> torch.Tensor:
    t = torch.full((3, 16, 16), IGNORE, dtype=torch.long)
    t[0, 2:10, 3:12] = 1  # a reviewed region with tumour…
    t[0, 10:14, :] = 0  # …and reviewed background
    t[1, :, :8] = 0  # half reviewed, all background
    return t  # image 2: nothing reviewed


def test_partial_loss_ignores_pixels_outside_rois() -> None:
    torch.manual_seed(0)
    target = _target()
    logits = torch.randn(3, 2, 16, 16, requires_grad=True)
    terms = partial_label_loss(logits, target)
    (terms["loss_ce"] + terms["loss_dice"]).backward()
    outside = (target == IGNORE).unsqueeze(1).expand_as(logits)
    assert logits.grad[outside].abs().max() == 0  # no gradient where nobody looked
    assert logits.grad[~outside].abs().sum() > 0
    scrambled = logits.detach().clone()
    scrambled[outside] = torch.randn(int(outside.sum())) * 50  # anything outside the ROIs
    again = partial_label_loss(scrambled, target)
    for k in terms:
        assert torch.allclose(terms[k], again[k]), k
    assert torch.allclose(terms["loss_ce"], F.cross_entropy(logits.detach(), target, ignore_index=IGNORE))


def test_per_image_cross_entropy_counts_a_thin_correction_as_much_as_a_large_one() -> None:
    # image 0 labels 4 pixels (a thin septum), all wrong; image 1 labels 200, all right
    target = torch.full((2, 16, 16), IGNORE, dtype=torch.long)
    target[0, 0, :4] = 0
    target[1, :, :] = 1
    target[1, :7, :8] = IGNORE
    logits = torch.zeros(2, 2, 16, 16)
    logits[:, 1] = 3.0  # tumour everywhere
    wrong, right = F.cross_entropy(torch.tensor([[0.0, 3.0]]), torch.tensor([0])), \
        F.cross_entropy(torch.tensor([[0.0, 3.0]]), torch.tensor([1]))
    pooled = partial_label_loss(logits, target, 0.0)["loss_ce"]
    each = partial_label_loss(logits, target, 0.0, per_image=True)["loss_ce"]
    assert pooled == pytest.approx(float(4 * wrong + 200 * right) / 204, rel=1e-5)  # the thin one drowns
    assert each == pytest.approx(float(wrong + right) / 2, rel=1e-5)
    # an image with no labelled pixel counts for nothing, and the mean over none is 0, not nan
    target[1] = IGNORE
    assert partial_label_loss(logits, target, 0.0, per_image=True)["loss_ce"] == pytest.approx(float(wrong), rel=1e-5)
    target[0] = IGNORE
    assert partial_label_loss(logits, target, 0.0, per_image=True)["loss_ce"] == 0


def test_partial_loss_of_unlabelled_patches_is_zero_not_nan() -> None:
    logits = torch.randn(2, 2, 8, 8, requires_grad=True)
    terms = partial_label_loss(logits, torch.full((2, 8, 8), IGNORE, dtype=torch.long))
    assert float(terms["loss_ce"].detach()) == 0.0 and float(terms["loss_dice"].detach()) == 0.0
    (terms["loss_ce"] + terms["loss_dice"]).backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().max() == 0


def test_partial_loss_falls_as_predictions_match_the_labels() -> None:
    target = _target()
    onehot = F.one_hot(target.clamp(0, 1), 2).permute(0, 3, 1, 2).float()
    good = partial_label_loss(onehot * 20 - 10, target)
    bad = partial_label_loss(-(onehot * 20 - 10), target)
    assert float(good["loss_ce"]) < 1e-3 < float(bad["loss_ce"])
    assert float(good["loss_dice"]) < 0.05 < float(bad["loss_dice"])


def test_masked_kd_only_counts_masked_pixels() -> None:
    torch.manual_seed(1)
    s = torch.randn(2, 2, 8, 8, requires_grad=True)
    t = torch.randn(2, 2, 8, 8)
    mask = torch.zeros(2, 8, 8, dtype=torch.bool)
    mask[:, :4] = True
    masked_kd_loss(s, t, mask)["loss_kd"].backward()
    assert s.grad[:, :, 4:].abs().max() == 0 and s.grad[:, :, :4].abs().sum() > 0
    assert float(masked_kd_loss(s, t, torch.zeros_like(mask))["loss_kd"].detach()) == 0.0
    full = masked_kd_loss(s, t, torch.ones_like(mask))["loss_kd"]
    from engine.distill.losses.kd import pixel_kd_loss

    assert torch.allclose(full, pixel_kd_loss(s, t)["loss_kd"])


def test_objective_lets_corrections_win_over_the_teacher(tiny_method: str) -> None:
    """Where every pixel is corrected, pixel KD is zero: the teacher cannot pull the student back
    to its old answer there. On unreviewed pixels it teaches as the config says."""
    teacher, student = tiny_model(3).eval(), tiny_model(4)
    objective = FinetuneObjective(finetune_config(tiny_method, 0), teacher, student)
    try:
        images = torch.randn(2, 3, 64, 64)
        labelled = objective(images, torch.ones(2, 64, 64, dtype=torch.long))
        unlabelled = objective(images, torch.full((2, 64, 64), IGNORE, dtype=torch.long))
    finally:
        objective.close()
    labelled = {k: float(v.detach()) for k, v in labelled.items()}
    unlabelled = {k: float(v.detach()) for k, v in unlabelled.items()}
    assert labelled["loss_kd"] == 0.0 and labelled["loss_ce"] > 0
    assert unlabelled["loss_kd"] > 0 and unlabelled["loss_ce"] == 0.0
    for term in ("loss_coco", "loss_ft", "loss_adv"):  # the rest of coco-full runs on every patch
        assert term in labelled and term in unlabelled
    assert labelled["total"] == pytest.approx(sum(v for k, v in labelled.items() if k.startswith("loss")))

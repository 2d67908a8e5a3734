from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engine.distill.connectors import Adapter, Paraphraser, Translator
from engine.distill.losses import LOSSES, get_loss
from engine.distill.losses.adversarial import Discriminator, adversarial_loss, critic_loss, gradient_penalty
from engine.distill.losses.coco import coco_loss
from engine.distill.losses.coco_gram import coco_gram_loss
from engine.distill.losses.cwd import cwd_loss
from engine.distill.losses.factor_transfer import factor_loss, paraphraser_reconstruction_loss
from engine.distill.losses.kd import pixel_kd_loss
from engine.distill.losses.segmentation import segmentation_loss
from engine.distill.losses.skd_pairwise import pairwise_loss


def _feat(c: int, h: int = 8, w: int = 8, b: int = 2, grad: bool = False) -> Tensor:
    return torch.randn(b, c, h, w, requires_grad=grad)


def _check_terms(out: dict[str, Tensor], student: list[Tensor], teacher: list[Tensor] = ()) -> None:  # type: ignore[assignment]
    keys = [k for k in out if k.startswith("loss")]
    assert keys
    total = sum(out[k] for k in keys)
    assert total.shape == () and torch.isfinite(total)
    total.backward()
    for s in student:
        assert s.grad is not None and torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0
    for t in teacher:
        assert t.grad is None  # the teacher is never trained by a distillation loss


def coco_by_loops(sa: Tensor, sb: Tensor, ta: Tensor, tb: Tensor) -> float:
    """Direct transcription: normalise each position's channel vector, G[i,j] = <A_i, B_j>."""
    b, _, h, w = sa.shape
    n = h * w
    total = 0.0
    for k in range(b):
        def unit(x: Tensor) -> list[Tensor]:
            cols = [x[k, :, p // w, p % w] for p in range(n)]
            return [c / c.norm() for c in cols]
        usa, usb, uta, utb = unit(sa), unit(sb), unit(ta), unit(tb)
        for i in range(n):
            for j in range(n):
                gs = float(sum(usa[i][c] * usb[j][c] for c in range(sa.shape[1])))
                gt = float(sum(uta[i][c] * utb[j][c] for c in range(ta.shape[1])))
                total += (gt - gs) ** 2
    return total / (n * n) / b


def test_coco_equals_a_direct_loop_implementation() -> None:
    g = torch.Generator().manual_seed(1)
    sa, sb = torch.randn(2, 3, 3, 4, generator=g), torch.randn(2, 3, 3, 4, generator=g)
    ta, tb = torch.randn(2, 5, 3, 4, generator=g), torch.randn(2, 5, 3, 4, generator=g)
    got = float(coco_loss(sa, sb, ta, tb, grid=None)["loss_coco"])
    assert got == pytest.approx(coco_by_loops(sa, sb, ta, tb), rel=1e-5)


def test_coco_is_zero_for_identical_features_and_positive_otherwise() -> None:
    a, b = _feat(6), _feat(6)
    assert float(coco_loss(a, b, a.clone(), b.clone())["loss_coco"]) == pytest.approx(0.0, abs=1e-10)
    assert float(coco_loss(a, b, b.clone(), a.clone())["loss_coco"]) > 1e-3


def test_coco_needs_no_adapter_across_networks_and_pools_to_its_grid() -> None:
    sa, sb = _feat(4, 32, 32, grad=True), _feat(4, 32, 32, grad=True)
    ta, tb = _feat(16, 32, 32, grad=True), _feat(16, 32, 32, grad=True)
    out = coco_loss(sa, sb, ta, tb, grid=8)
    _check_terms(out, [sa, sb], [ta, tb])
    with pytest.raises(ValueError, match="equal channels"):
        coco_loss(_feat(4), _feat(5), _feat(6), _feat(6))


def test_coco_gram_with_adapters_matches_manual_fsp() -> None:
    sa, sb = _feat(4, grad=True), _feat(3, grad=True)
    ta, tb = _feat(6), _feat(5)
    ad_a, ad_b = Adapter(4, 6), Adapter(3, 5)
    xa, xb = ad_a(sa), ad_b(sb)
    out = coco_gram_loss(xa, xb, ta, tb, grid=None)
    fa, fb = xa.flatten(2), xb.flatten(2)
    manual = ((ta.flatten(2) @ tb.flatten(2).transpose(1, 2) / 64 - fa @ fb.transpose(1, 2) / 64) ** 2).mean()
    assert out["loss_coco_gram"].item() == pytest.approx(manual.item(), rel=1e-5)
    _check_terms(out, [sa, sb])
    assert ad_a.proj[0].weight.grad is not None


def test_pixel_kd() -> None:
    s, t = _feat(3, grad=True), _feat(3, grad=True)
    assert float(pixel_kd_loss(t.detach(), t.detach())["loss_kd"]) == pytest.approx(0.0, abs=1e-6)
    out = pixel_kd_loss(s, t, temperature=2.0)
    kl = F.kl_div(F.log_softmax(s / 2, 1), F.softmax(t / 2, 1), reduction="none").sum(1).mean() * 4
    assert out["loss_kd"].item() == pytest.approx(kl.item(), rel=1e-5)
    _check_terms(out, [s], [t])


def test_skd_pairwise_by_loop() -> None:
    s, t = _feat(3, 2, 2, b=1, grad=True), _feat(7, 2, 2, b=1)
    out = pairwise_loss(s, t, grid=None)
    us = F.normalize(s.detach().flatten(2)[0], dim=0)
    ut = F.normalize(t.flatten(2)[0], dim=0)
    manual = sum(float(ut[:, i] @ ut[:, j] - us[:, i] @ us[:, j]) ** 2 for i in range(4) for j in range(4)) / 16
    assert out["loss_pairwise"].item() == pytest.approx(manual, rel=1e-5)
    _check_terms(out, [s])


def test_cwd() -> None:
    s, t = _feat(2, grad=True), _feat(2, grad=True)
    assert float(cwd_loss(t.detach(), t.detach())["loss_cwd"]) == pytest.approx(0.0, abs=1e-6)
    out = cwd_loss(s, t, tau=4.0)
    ps, pt = F.log_softmax(s.flatten(2) / 4, 2), F.softmax(t.flatten(2) / 4, 2)
    manual = (pt * (pt.log() - ps)).sum() * 16 / (2 * 2)
    assert out["loss_cwd"].item() == pytest.approx(manual.item(), rel=1e-5)
    _check_terms(out, [s], [t])


def test_factor_transfer_loss_and_paraphraser_reconstruction_improves() -> None:
    s, t = _feat(4, grad=True), _feat(4)
    assert float(factor_loss(t, t)["loss_ft"]) == pytest.approx(0.0, abs=1e-7)
    _check_terms(factor_loss(s, t), [s])
    torch.manual_seed(0)
    feature = torch.relu(torch.randn(4, 16, 8, 8))
    para = Paraphraser(16, 4)
    opt = torch.optim.Adam(para.parameters(), lr=3e-3)
    losses = []
    for _ in range(200):  # no BatchNorm (as the reference): slower than with it, still learns
        loss = paraphraser_reconstruction_loss(para(feature), feature)["loss_paraphrase"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    assert para.encode(feature).shape == (4, 4, 8, 8)
    assert Translator(6, 4)(torch.randn(2, 6, 8, 8)).shape == (2, 4, 8, 8)


def test_segmentation_loss() -> None:
    logits = _feat(2, grad=True)
    target = torch.randint(0, 2, (2, 8, 8))
    out = segmentation_loss(logits, target)
    assert set(out) == {"loss_ce", "loss_dice"}
    assert out["loss_ce"].item() == pytest.approx(F.cross_entropy(logits, target).item(), rel=1e-6)
    _check_terms(out, [logits])
    perfect = F.one_hot(target, 2).permute(0, 3, 1, 2).float() * 50
    assert float(segmentation_loss(perfect, target)["loss_dice"]) < 1e-3


class LinearCritic(nn.Module):
    """D(x) = Σ w·x per sample: ∇ₓD = w everywhere, so ‖∇D‖ = ‖w‖ is known."""

    def __init__(self, w: Tensor) -> None:
        super().__init__()
        self.w = nn.Parameter(w)

    def forward(self, x: Tensor) -> Tensor:
        return (x * self.w).sum((1, 2, 3)).view(-1, 1, 1, 1)


def test_wgan_gp_penalty_on_a_linear_critic() -> None:
    w = torch.zeros(1, 2, 4, 4)
    w[0, 0, 0, 0], w[0, 1, 2, 3] = 2.0, 2.0  # ‖w‖ = √8
    critic = LinearCritic(w)
    real, fake = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4)
    gp = gradient_penalty(critic, real, fake)
    assert gp.item() == pytest.approx((8 ** 0.5 - 1) ** 2, rel=1e-6)
    unit = LinearCritic(torch.full((1, 2, 4, 4), 1 / (32 ** 0.5)))
    assert gradient_penalty(unit, real, fake).item() == pytest.approx(0.0, abs=1e-10)
    s_logits, t_logits = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4)
    out = critic_loss(critic, s_logits, t_logits, gp_weight=10.0)
    expected = (critic(torch.tanh(s_logits)).mean() - critic(torch.tanh(t_logits)).mean()).item() + 10 * gp.item()
    assert out["loss_critic"].item() == pytest.approx(expected, rel=1e-5)
    out["loss_critic"].backward()
    assert critic.w.grad is not None


def test_discriminator_and_adversarial_term() -> None:
    disc = Discriminator(2)
    score = disc(torch.tanh(torch.randn(2, 2, 64, 64)))
    assert score.shape == (2, 1, 4, 4)
    n_sn = sum(1 for m in disc.modules() if isinstance(m, nn.Conv2d) and hasattr(m, "parametrizations"))
    assert n_sn == 4
    logits = torch.randn(2, 2, 64, 64, requires_grad=True)
    _check_terms(adversarial_loss(logits, disc), [logits])


def test_loss_registry_lists_names() -> None:
    assert {"coco", "coco_gram", "kd", "adversarial", "factor_transfer", "skd_pairwise", "cwd"} <= set(LOSSES)
    with pytest.raises(KeyError, match="coco_gram"):
        get_loss("fsp")

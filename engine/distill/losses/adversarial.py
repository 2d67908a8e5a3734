"""Adversarial distillation with a WGAN-GP critic on tanh(logits) (as in CoCo DistillNet, after
Liu et al. 2019's holistic distillation).

Critic: 4 spectral-norm 4×4 stride-2 convs (64-128-256-512, LeakyReLU 0.1), self-attention after the
256 and 512 layers, a final conv to a score map. Critic loss
L_D = E[D(S)] − E[D(T)] + λ_gp·E[(‖∇D(x̂)‖₂ − 1)²] on random interpolations x̂; the student's term is
−E[D(S)] (weighted by λ_adv in the config).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm


class SelfAttention(nn.Module):
    """SAGAN self-attention: x + γ·softmax(QᵀK)·V, γ starts at 0."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.q = nn.Conv2d(channels, max(1, channels // 8), 1)
        self.k = nn.Conv2d(channels, max(1, channels // 8), 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        q = self.q(x).flatten(2).transpose(1, 2)  # B×N×c'
        k = self.k(x).flatten(2)  # B×c'×N
        attn = torch.softmax(torch.bmm(q, k), dim=-1)  # B×N×N
        v = self.v(x).flatten(2)  # B×C×N
        out = torch.bmm(v, attn.transpose(1, 2)).view(b, c, h, w)
        return x + self.gamma * out


class Discriminator(nn.Module):
    """Critic over class maps (B×K×H×W, already tanh-squashed) → B×1×h×w score map."""

    def __init__(self, in_channels: int, widths: tuple[int, ...] = (64, 128, 256, 512)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = in_channels
        for i, w in enumerate(widths):
            layers += [spectral_norm(nn.Conv2d(cin, w, 4, 2, 1)), nn.LeakyReLU(0.1)]
            if i >= len(widths) - 2:
                layers.append(SelfAttention(w))
            cin = w
        layers.append(nn.Conv2d(cin, 1, 3, 1, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def gradient_penalty(critic: nn.Module, real: Tensor, fake: Tensor, alpha: Tensor | None = None) -> Tensor:
    """E[(‖∇ₓ D(x̂)‖₂ − 1)²] with x̂ = α·real + (1−α)·fake, one α per sample (random unless given).

    D's output is summed over its score map per sample, so the gradient norm is that of the
    sample's total score.
    """
    if alpha is None:
        alpha = torch.rand(real.shape[0], 1, 1, 1, device=real.device, dtype=real.dtype)
    x = (alpha * real.detach() + (1 - alpha) * fake.detach()).requires_grad_(True)
    score = critic(x).flatten(1).sum(1)
    (grad,) = torch.autograd.grad(score.sum(), x, create_graph=True)
    return ((grad.flatten(1).norm(2, dim=1) - 1) ** 2).mean()


def critic_loss(critic: nn.Module, student_logits: Tensor, teacher_logits: Tensor, gp_weight: float = 10.0) -> dict[str, Tensor]:
    """The critic's objective on detached logits → ``loss_critic`` (+ logged ``gp``, ``wasserstein``)."""
    fake = torch.tanh(student_logits.detach().float())
    real = torch.tanh(teacher_logits.detach().float())
    d_fake, d_real = critic(fake).mean(), critic(real).mean()
    gp = gradient_penalty(critic, real, fake)
    return {"loss_critic": d_fake - d_real + gp_weight * gp, "gp": gp.detach(),
            "wasserstein": (d_real - d_fake).detach()}


def adversarial_loss(student_logits: Tensor, critic: nn.Module) -> dict[str, Tensor]:
    """The student's term −E[D(tanh(S))] → ``loss_adv``."""
    return {"loss_adv": -critic(torch.tanh(student_logits.float())).mean()}

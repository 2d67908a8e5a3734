"""Connectors: small trainable modules between a network's features and a loss.

- :class:`Adapter` — 1×1 conv + BN, maps student channels to teacher channels (FSP-like CoCo-Gram).
- :class:`Paraphraser` — Factor Transfer's teacher-side auto-encoder: 3 conv3×3
  (C_t→C_t→C_s→C_s, stride 1, LeakyReLU 0.1) and 3 transposed convs back; its encoder output is
  the teacher's *factor*. Trained unsupervised to reconstruct the frozen teacher feature, then frozen.
  No BatchNorm, as in the reference implementation (Kim et al. 2018): a frozen factor must not
  depend on batch statistics.
- :class:`Translator` — the student-side conv stack producing the student's factor (no BatchNorm
  either).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn


class Adapter(nn.Module):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.proj = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False),
                                  nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


def _conv(cin: int, cout: int, transpose: bool = False) -> nn.Module:
    layer = nn.ConvTranspose2d if transpose else nn.Conv2d
    return nn.Sequential(layer(cin, cout, 3, 1, 1), nn.LeakyReLU(0.1))


class Paraphraser(nn.Module):
    """Auto-encoder of a teacher feature; ``encode`` gives the factor (``factor_channels`` deep)."""

    def __init__(self, in_channels: int, factor_channels: int) -> None:
        super().__init__()
        c, f = in_channels, factor_channels
        self.encoder = nn.Sequential(_conv(c, c), _conv(c, f), _conv(f, f))
        self.decoder = nn.Sequential(_conv(f, f, True), _conv(f, c, True), _conv(c, c, True))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


class Translator(nn.Module):
    """Student feature → factor: 3 conv3×3 with LeakyReLU 0.1."""

    def __init__(self, in_channels: int, factor_channels: int) -> None:
        super().__init__()
        c, f = in_channels, factor_channels
        self.encoder = nn.Sequential(_conv(c, c), _conv(c, f), _conv(f, f))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)


CONNECTORS: dict[str, Callable[..., nn.Module]] = {
    "adapter": Adapter, "paraphraser": Paraphraser, "translator": Translator,
}


def create_connector(kind: str, **kw: Any) -> nn.Module:
    if kind not in CONNECTORS:
        raise KeyError(f"unknown connector {kind!r}; valid: {', '.join(sorted(CONNECTORS))}")
    return CONNECTORS[kind](**kw)

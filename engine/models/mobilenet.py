"""MobileNetV2 encoder (Sandler et al. 2018) written from scratch, returning a feature pyramid.

``forward`` returns features at strides 1, 2, 4, 8, 16, 32 with ``out_channels`` listing their
channels (16·w, 24·w, 32·w, 96·w, last) for width multiplier ``w``; at ``w = 1`` the H/4 feature
has 24 channels, the student's shallow distillation layer.
"""

from __future__ import annotations

import torch
from torch import nn

from engine.models.blocks import ConvNormAct

# (expansion t, channels c, repeats n, first stride s), as in the paper's Table 2.
_SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
             (6, 160, 3, 2), (6, 320, 1, 1))


def _div8(v: float) -> int:
    out = max(8, int(v + 4) // 8 * 8)
    return out + 8 if out < 0.9 * v else out


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int, norm: str) -> None:
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(ConvNormAct(cin, hidden, 1, norm=norm, act="relu6"))
        layers += [
            ConvNormAct(hidden, hidden, 3, stride, groups=hidden, norm=norm, act="relu6"),
            ConvNormAct(hidden, cout, 1, norm=norm, act=None),
        ]
        self.conv = nn.Sequential(*layers)
        self.use_res = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res else self.conv(x)


class MobileNetV2Encoder(nn.Module):
    """MobileNetV2 ``features``; ``last_channels=None`` drops the final 1×1 conv (smaller student)."""

    def __init__(
        self, width: float = 1.0, in_channels: int = 3, last_channels: int | None = 1280,
        norm: str = "bn",
    ) -> None:
        super().__init__()
        cin = _div8(32 * width)
        feats: list[nn.Module] = [ConvNormAct(in_channels, cin, 3, 2, norm=norm, act="relu6")]
        self._taps: list[int] = []  # indices in ``features`` whose outputs are returned
        for t, c, n, s in _SETTINGS:
            cout = _div8(c * width)
            for i in range(n):
                feats.append(InvertedResidual(cin, cout, s if i == 0 else 1, t, norm))
                cin = cout
            if c in (16, 24, 32, 96):
                self._taps.append(len(feats) - 1)
        if last_channels:
            feats.append(ConvNormAct(cin, last_channels, 1, norm=norm, act="relu6"))
            cin = last_channels
        self._taps.append(len(feats) - 1)
        self.features = nn.Sequential(*feats)
        chans = [in_channels]
        for idx in self._taps[:-1]:
            chans.append(feats[idx].conv[-1][0].out_channels)  # type: ignore[index]
        chans.append(cin)
        self.out_channels: tuple[int, ...] = tuple(chans)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = [x]
        taps = set(self._taps)
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in taps:
                out.append(x)
        return out

    def tap_path(self, stride_index: int) -> str:
        """Module path (relative to the encoder) of the feature at ``2**stride_index`` stride."""
        return f"features.{self._taps[stride_index - 1]}"

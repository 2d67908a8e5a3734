"""U-Net decoder over any encoder that follows the pyramid contract, and the segmentation model.

A :class:`SegmentationModel` exposes ``feature_layers``: names → module paths of the layers the
distiller reads with forward hooks (``enc_shallow`` = the encoder's H/4 feature, ``dec_shallow`` =
the decoder block whose output is on the same H/4 grid, ``enc_deep`` = the H/32 feature).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from engine.models.blocks import ConvNormAct


class DecoderBlock(nn.Module):
    """Upsample ×2, concatenate the skip feature, two 3×3 conv-norm-ReLU."""

    def __init__(self, cin: int, skip: int, cout: int, norm: str) -> None:
        super().__init__()
        self.conv1 = ConvNormAct(cin + skip, cout, 3, norm=norm)
        self.conv2 = ConvNormAct(cout, cout, 3, norm=norm)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.conv2(self.conv1(x))


class UNetDecoder(nn.Module):
    """Five decoder blocks from H/32 back to H; ``blocks.2`` outputs at H/4."""

    def __init__(self, encoder_channels: Sequence[int], channels: Sequence[int], norm: str) -> None:
        super().__init__()
        if len(channels) != 5:
            raise ValueError(f"decoder_channels needs 5 values (H/16 … H), got {len(channels)}")
        skips = list(encoder_channels[1:-1])[::-1] + [0]  # /16, /8, /4, /2, none at full size
        ins = [encoder_channels[-1], *channels[:-1]]
        self.blocks = nn.ModuleList(
            DecoderBlock(i, s, o, norm) for i, s, o in zip(ins, skips, channels)
        )
        self.out_channels = tuple(channels)

    @staticmethod
    def skips(feats: list[torch.Tensor]) -> list[torch.Tensor | None]:
        """The skip feature of each block (from the encoder's pyramid ``feats``; None: no skip)."""
        return feats[1:-1][::-1] + [None]

    def run(self, x: torch.Tensor, skips: Sequence[torch.Tensor | None], start: int = 0,
            stop: int | None = None) -> torch.Tensor:
        """Blocks ``start`` … ``stop - 1`` on ``x``; ``skips[i]`` is block ``start + i``'s skip."""
        for block, skip in zip(list(self.blocks)[start:stop], skips):
            x = block(x, skip)
        return x

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        return self.run(feats[-1], self.skips(feats))


class SegmentationModel(nn.Module):
    """Encoder → U-Net decoder → 3×3 conv head giving ``classes`` logits at full resolution.

    Input sizes must be multiples of :attr:`stride`; evaluation pads and crops back.
    """

    stride = 32

    def __init__(
        self,
        encoder: nn.Module,
        feature_layers: dict[str, str],
        decoder_channels: Sequence[int],
        classes: int,
        norm: str,
        config: dict[str, Any],
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = UNetDecoder(encoder.out_channels, decoder_channels, norm)  # type: ignore[arg-type]
        self.head = nn.Conv2d(decoder_channels[-1], classes, 3, padding=1)
        self.classes = classes
        self.feature_layers = {**feature_layers, "dec_shallow": "decoder.blocks.2", "logits": "head"}
        self.config = config  # name + kwargs: enough to rebuild it with create_model
        modules = dict(self.named_modules())
        for name, path in self.feature_layers.items():
            if path not in modules:
                raise KeyError(f"feature layer {name!r} points at missing module {path!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.decoder(self.encoder(x)))

    def feature_channels(self, name: str) -> int:
        """Channels of a named feature layer, found by a tiny dry run (cached)."""
        cache: dict[str, int] = self.__dict__.setdefault("_chan_cache", {})
        if name not in cache:
            from engine.models.recorders import FeatureRecorder

            was_training = self.training
            self.eval()
            with torch.no_grad(), FeatureRecorder(self, self.feature_layers) as rec:
                self(torch.zeros(1, 3, self.stride, self.stride, device=self.head.weight.device))
                for n, t in rec.outputs().items():
                    cache[n] = t.shape[1]
            self.train(was_training)
        return cache[name]

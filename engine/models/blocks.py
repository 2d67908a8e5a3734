"""Small building blocks shared by the encoders and decoders: conv + norm + activation, norms by name."""

from __future__ import annotations

from torch import nn

NORMS = ("bn", "gn")


def make_norm(kind: str, channels: int) -> nn.Module:
    """Return a normalisation layer: ``"bn"`` BatchNorm2d, ``"gn"`` GroupNorm (batch-size independent).

    GroupNorm makes a network's loss independent of how a batch is split across processes, which is
    what the CPU data-parallel parity test needs (SyncBatchNorm is CUDA-only in torch).
    """
    if kind == "bn":
        return nn.BatchNorm2d(channels)
    if kind == "gn":
        groups = next(g for g in (8, 4, 2, 1) if channels % g == 0)
        return nn.GroupNorm(groups, channels)
    raise KeyError(f"unknown norm {kind!r}; valid: {', '.join(NORMS)}")


class ConvNormAct(nn.Sequential):
    """``Conv2d → norm → activation`` (ReLU, ReLU6 or none)."""

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel: int = 3,
        stride: int = 1,
        groups: int = 1,
        norm: str = "bn",
        act: str | None = "relu",
    ) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
            make_norm(norm, cout),
        ]
        if act == "relu":
            layers.append(nn.ReLU(inplace=True))
        elif act == "relu6":
            layers.append(nn.ReLU6(inplace=True))
        elif act is not None:
            raise KeyError(f"unknown activation {act!r}; valid: relu, relu6, None")
        super().__init__(*layers)

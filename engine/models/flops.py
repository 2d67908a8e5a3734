"""Parameter and FLOP counts. FLOPs here are multiply-accumulates (MACs) of Conv2d, ConvTranspose2d
and Linear layers, counted by forward hooks on one forward pass; norms, activations and
interpolation are ignored (they are a few percent). This is the convention behind "GFLOPs" in
most segmentation papers, including the 1.5 G quoted for Mobile U-Net at 256².
"""

from __future__ import annotations

import torch
from torch import nn


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_flops(model: nn.Module, size: int | tuple[int, int] = 256, channels: int = 3) -> int:
    """Multiply-accumulates of one forward pass on a ``1×channels×H×W`` input."""
    h, w = (size, size) if isinstance(size, int) else size
    total = 0

    def hook(mod: nn.Module, _inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        nonlocal total
        if isinstance(mod, (nn.Conv2d, nn.ConvTranspose2d)):
            k = mod.weight.shape[2] * mod.weight.shape[3]
            if isinstance(mod, nn.Conv2d):
                per_out = k * mod.in_channels // mod.groups
                total += out.numel() * per_out
            else:  # each input position scatters to k·C_out/groups outputs
                x = _inp[0]
                total += x.numel() * k * mod.out_channels // mod.groups
        elif isinstance(mod, nn.Linear):
            total += out.numel() * mod.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear))]
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, channels, h, w))
    finally:
        for hd in handles:
            hd.remove()
        model.train(was)
    return int(total)

"""Forward-hook recorders: read intermediate features by module path, so model code never changes
for distillation (the mmrazor pattern).

    with FeatureRecorder(model, {"a": "encoder.layer1"}) as rec:
        logits = model(x)
        feat = rec["a"]
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn


class FeatureRecorder:
    """Records the outputs of named modules on every forward pass while attached."""

    def __init__(self, model: nn.Module, paths: Mapping[str, str]) -> None:
        modules = dict(model.named_modules())
        missing = [p for p in paths.values() if p not in modules]
        if missing:
            sample = ", ".join(n for n in list(modules)[:1] + list(modules)[1:12] if n)
            raise KeyError(f"no module at {', '.join(missing)} (some valid paths: {sample} …)")
        self._targets = {name: modules[path] for name, path in paths.items()}
        self._outputs: dict[str, torch.Tensor] = {}
        self._handles: list[Any] = []

    def attach(self) -> FeatureRecorder:
        if not self._handles:
            for name, mod in self._targets.items():
                self._handles.append(mod.register_forward_hook(self._make_hook(name)))
        return self

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _make_hook(self, name: str):  # noqa: ANN202 - torch hook signature
        def hook(_m: nn.Module, _i: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
            self._outputs[name] = out

        return hook

    def clear(self) -> None:
        self._outputs.clear()

    def outputs(self) -> dict[str, torch.Tensor]:
        return dict(self._outputs)

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self._outputs:
            raise KeyError(f"feature {name!r} was not recorded (recorded: {', '.join(self._outputs)})")
        return self._outputs[name]

    def __enter__(self) -> FeatureRecorder:
        return self.attach()

    def __exit__(self, *exc: object) -> None:
        self.detach()

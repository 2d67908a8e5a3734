"""Models by name: ``create_model(name, **kw)``; an unknown name raises a KeyError listing the valid ones.

Every model records ``{"name": …, **kwargs}`` in ``model.config`` so a checkpoint's JSON rebuilds it.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from engine.model_card import register_architecture
from engine.models.mobilenet import MobileNetV2Encoder
from engine.models.resnet import ResNetEncoder
from engine.models.unet import SegmentationModel

log = logging.getLogger(__name__)

ModelFactory = Callable[..., SegmentationModel]
_REGISTRY: dict[str, ModelFactory] = {}


def register_model(name: str) -> Callable[[ModelFactory], ModelFactory]:
    def deco(fn: ModelFactory) -> ModelFactory:
        _REGISTRY[name] = fn
        register_architecture(name, inspect.signature(fn).parameters)  # cards may name it
        return fn

    return deco


def model_names() -> list[str]:
    return sorted(_REGISTRY)


def create_model(name: str, **kw: Any) -> SegmentationModel:
    """Build a registered model; ``encoder_weights`` may name a local safetensors file (given by the
    caller, e.g. ``train --encoder-weights``: a model card never reaches here with one, see
    :mod:`engine.model_card`)."""
    if name not in _REGISTRY:
        raise KeyError(f"unknown model {name!r}; valid: {', '.join(model_names())}")
    weights = kw.pop("encoder_weights", None)
    model = _REGISTRY[name](**kw)
    model.config = {"name": name, **kw}
    if weights:
        load_encoder_weights(model, Path(weights))
    return model


def load_encoder_weights(model: SegmentationModel, path: Path) -> None:
    """Load local pretrained encoder weights (safetensors; keys with or without ``encoder.``/torchvision names)."""
    from safetensors.torch import load_file

    from engine.errors import CocoPathError

    if path.suffix != ".safetensors":
        raise CocoPathError(f"{path}: encoder weights must be a .safetensors file (pickles are refused)")
    if not path.is_file():
        raise CocoPathError(f"{path}: no such encoder weights file")
    try:
        state = load_file(str(path))
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
        raise CocoPathError(f"{path}: not a readable safetensors file "
                            f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    state = {k.removeprefix("encoder."): v for k, v in state.items()}
    own = model.encoder.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not usable:
        raise CocoPathError(f"{path}: no tensor matches the {model.config['name']} encoder")
    model.encoder.load_state_dict(usable, strict=False)
    log.info("loaded %d/%d encoder tensors from %s", len(usable), len(own), path)


# The H/4 decoder block (third value of decoder_channels) has as many channels as the H/4 encoder
# feature, so CoCo's cross-layer correlation Aᵀ·B is defined inside each network.


def _resnet_unet(depth: int, classes: int, decoder_channels: Sequence[int], norm: str) -> SegmentationModel:
    enc = ResNetEncoder(depth, norm=norm)
    layers = {"enc_shallow": "encoder.layer1", "enc_deep": "encoder.layer4"}
    return SegmentationModel(enc, layers, decoder_channels, classes, norm, {})


@register_model("unet-resnet34")
def unet_resnet34(
    classes: int = 2, decoder_channels: Sequence[int] = (256, 128, 64, 32, 16), norm: str = "bn"
) -> SegmentationModel:
    """Teacher: U-Net on a ResNet-34 encoder (~24 M parameters, 7.8 GFLOPs at 256²)."""
    return _resnet_unet(34, classes, decoder_channels, norm)


@register_model("unet-resnet50")
def unet_resnet50(
    classes: int = 2, decoder_channels: Sequence[int] = (256, 128, 256, 64, 32), norm: str = "bn"
) -> SegmentationModel:
    """Teacher: U-Net on a ResNet-50 encoder (~34 M parameters, 19.9 GFLOPs at 256², 256-channel H/4 feature)."""
    return _resnet_unet(50, classes, decoder_channels, norm)


def _mobile_unet(
    width: float, last: int | None, classes: int, decoder_channels: Sequence[int], norm: str
) -> SegmentationModel:
    enc = MobileNetV2Encoder(width, last_channels=last, norm=norm)
    layers = {"enc_shallow": f"encoder.{enc.tap_path(2)}", "enc_deep": f"encoder.{enc.tap_path(5)}"}
    return SegmentationModel(enc, layers, decoder_channels, classes, norm, {})


@register_model("mobile-unet")
def mobile_unet(
    classes: int = 2, decoder_channels: Sequence[int] = (160, 64, 24, 16, 8), norm: str = "bn"
) -> SegmentationModel:
    """Student: Mobile U-Net, MobileNetV2 (×1.0) encoder + light U-Net decoder (~4.6 M params, 1.46 GFLOPs at 256²)."""
    return _mobile_unet(1.0, 1280, classes, decoder_channels, norm)


@register_model("mobile-unet-small")
def mobile_unet_small(
    classes: int = 2, decoder_channels: Sequence[int] = (64, 32, 16, 16, 8), norm: str = "bn"
) -> SegmentationModel:
    """Smaller student: MobileNetV2 ×0.5 without the 1280-channel head conv (~0.7 M params, 0.44 GFLOPs at 256²)."""
    return _mobile_unet(0.5, None, classes, decoder_channels, norm)

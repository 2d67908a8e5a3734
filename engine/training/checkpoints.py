"""Checkpoints: safetensors + a JSON config, nothing else. Never a pickle.

``save_model(path, model, meta)`` writes ``X.safetensors`` (weights, with the JSON also in its
metadata) and ``X.json`` (architecture, classes, input normalisation, data, metrics), each atomically:
temp file in the same folder, fsync, rename, fsync of the folder. ``load_model`` refuses any file
that is not safetensors (pickles, ``torch.save`` zips) before reading it, a card that fails
:func:`engine.model_card.check_card`, and weights that are not finite.
"""

from __future__ import annotations

import json
import logging
import struct
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file as st_load_file
from safetensors.torch import save as st_save
from torch import nn

from engine.atomic import atomic_write
from engine.errors import CocoPathError
from engine.model_card import card_error, parse_card

log = logging.getLogger(__name__)
META_KEY = "cocopath"
MAX_HEADER = 100_000_000  # bytes: safetensors' own limit


class CheckpointError(CocoPathError):
    """A checkpoint is missing, not safetensors (pickles are refused), or does not fit its model."""


def read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a safetensors file; anything else raises :class:`CheckpointError`
    (one line naming the file: never another exception, whatever the bytes)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint")
    meta = _read_header(path)
    try:  # read once into the tensors (the file is never held whole in memory beside them)
        return st_load_file(str(path), backend="pread"), meta  # owned memory, no mapping
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
        raise CheckpointError(f"{path}: corrupt safetensors file ({_first_line(exc)})") from None
    except BaseException as exc:  # a panic inside safetensors' parser (pyo3 PanicException)
        if type(exc).__name__ != "PanicException":
            raise
        raise CheckpointError(f"{path}: corrupt safetensors file ({_first_line(exc)})") from None


def _read_header(path: Path) -> dict[str, str]:
    """The metadata of a safetensors header, checked: 8-byte little-endian length, then a JSON
    object whose ``__metadata__`` maps strings to strings."""
    not_st = CheckpointError(f"{path}: not a safetensors file (pickles and torch.save files are refused)")
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(9)
            # a pickle (b"\x80…") or a torch.save zip (b"PK…") gives a length past the file's end.
            # The first byte alone says nothing: it is the length's low byte, 0x80 for one
            # safetensors file in 256.
            if len(head) < 9:
                raise not_st
            (n,) = struct.unpack("<Q", head[:8])
            if n < 2 or n + 8 > size or n > MAX_HEADER or head[8:9] != b"{":
                raise not_st
            raw = head[8:] + f.read(n - 1)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    try:
        header = json.loads(raw)
    except RecursionError:
        raise CheckpointError(f"{path}: corrupt safetensors header (nested too deeply)") from None
    except ValueError as exc:  # UnicodeDecodeError too
        raise CheckpointError(f"{path}: corrupt safetensors header ({_first_line(exc)})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: corrupt safetensors header (not a JSON object)")
    meta = header.get("__metadata__")
    if meta is None:
        return {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise CheckpointError(f"{path}: corrupt safetensors header (its metadata is not text)")
    return meta


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0][:200]


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    flat = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    atomic_write(Path(path), st_save(flat, metadata={META_KEY: json.dumps(meta)}))


def save_model(path: Path | str, model: nn.Module, meta: dict[str, Any], half: bool = False) -> Path:
    """Write ``path`` (.safetensors) and its ``.json`` sidecar; ``meta`` must hold ``model`` (its config)."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise CheckpointError(f"{path}: a checkpoint's name must end in .safetensors")
    state = model.state_dict()
    if half:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    meta = {"format": "cocopath-model/1", **meta}
    save_tensors(path, state, meta)
    atomic_write(path.with_suffix(".json"), json.dumps(meta, indent=1).encode())
    log.info("saved %s", path)
    return path


def load_meta(path: Path | str) -> dict[str, Any]:
    """The checked model card of a checkpoint (see :mod:`engine.model_card`)."""
    _, meta = read_safetensors(Path(path))
    return _card(path, meta)


def _card(path: Path | str, raw: dict[str, str]) -> dict[str, Any]:
    if META_KEY not in raw:
        raise CheckpointError(f"{path}: a safetensors file without CoCoPath metadata (no model config)")
    return parse_card(raw[META_KEY], path)


def load_model(path: Path | str) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model named in the checkpoint's (checked) card and load its weights (strict).

    Refused, one line each: a card that fails :func:`engine.model_card.check_card`, weights that
    do not fit the architecture, non-finite weights, negative BatchNorm variances, and a network
    whose output on a test window is not finite (weights so large they overflow)."""
    from engine.models import create_model

    tensors, raw = read_safetensors(Path(path))
    meta = _card(path, raw)
    cfg = dict(meta["model"])
    cfg.pop("encoder_weights", None)  # a card never points at files (the check refuses one)
    try:
        model = create_model(cfg.pop("name"), **cfg)
    except (KeyError, TypeError, ValueError) as exc:
        raise card_error(path, "model", f"cannot be built ({_first_line(exc)})") from None
    own = model.state_dict()
    for k, v in tensors.items():
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise CheckpointError(f"{path}: weight {k} holds non-finite values (NaN or infinity): refused")
    tensors = {k: v.to(own[k].dtype) if k in own else v for k, v in tensors.items()}
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not fit {meta['model']} ({str(exc).splitlines()[0]})") from exc
    _check_network(path, model)
    return model, meta


def _check_network(path: Path | str, model: nn.Module) -> None:
    """Refuse weights that cannot give a meaningful output: a negative BatchNorm variance (a square
    root of it is NaN), or a non-finite output on a test window."""
    for name, m in model.named_modules():
        var = getattr(m, "running_var", None)
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and var is not None and bool((var < 0).any()):
            raise CheckpointError(f"{path}: weight {name}.running_var is negative (a variance): refused")
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            x = torch.linspace(-2.0, 2.0, 3 * 64 * 64).reshape(1, 3, 64, 64)
            out = model(x)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: the network fails on a test window ({_first_line(exc)})") from None
    finally:
        model.train(was_training)
    if not bool(torch.isfinite(out).all()):
        raise CheckpointError(f"{path}: the network's output is not finite (NaN or infinity) on a test "
                              f"window: its weights are unusable")


def save_training_state(path: Path, module: nn.Module, optimizer: torch.optim.Optimizer, meta: dict[str, Any]) -> None:
    """Resumable state: trainable module weights + optimiser state, tensors in safetensors, rest in JSON."""
    tensors = {f"module.{k}": v for k, v in module.state_dict().items()}
    opt = optimizer.state_dict()
    scalars: dict[str, dict[str, Any]] = {}
    for pid, st in opt["state"].items():
        for key, val in st.items():
            if torch.is_tensor(val):
                tensors[f"optim.{pid}.{key}"] = val
            else:
                scalars.setdefault(str(pid), {})[key] = val
    save_tensors(path, tensors, {**meta, "param_groups": opt["param_groups"], "optim_scalars": scalars})


def load_training_state(path: Path, module: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    tensors, raw = read_safetensors(path)
    meta = json.loads(raw[META_KEY])
    module.load_state_dict({k[7:]: v for k, v in tensors.items() if k.startswith("module.")})
    state: dict[int, dict[str, Any]] = {}
    for k, v in tensors.items():
        if k.startswith("optim."):
            _, pid, key = k.split(".", 2)
            state.setdefault(int(pid), {})[key] = v
    for pid, extra in meta.pop("optim_scalars").items():
        state.setdefault(int(pid), {}).update(extra)
    optimizer.load_state_dict({"state": state, "param_groups": meta.pop("param_groups")})
    return meta

"""Checkpoints: safetensors + a JSON config, nothing else. Never a pickle.

``save_model(path, model, meta)`` writes ``X.safetensors`` (weights, with the JSON also in its
metadata) and ``X.json`` (architecture, classes, input normalisation, data, metrics), each atomically:
temp file in the same folder, fsync, rename, fsync of the folder. ``load_model`` refuses any file
that is not safetensors (pickles, ``torch.save`` zips) before reading it.
"""

from __future__ import annotations

import json
import logging
import struct
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from engine.atomic import atomic_write
from engine.errors import CocoPathError

log = logging.getLogger(__name__)
META_KEY = "cocopath"


class CheckpointError(CocoPathError):
    """A checkpoint is missing, not safetensors (pickles are refused), or does not fit its model."""


def read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a safetensors file; anything else raises :class:`CheckpointError`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint")
    data = path.read_bytes()
    # a safetensors file: 8-byte little-endian header length, then the JSON header. A pickle
    # (b"\x80…") or a torch.save zip (b"PK…") gives a length past the file's end. The first byte
    # alone says nothing: it is the length's low byte, 0x80 for one safetensors file in 256.
    (n,) = struct.unpack("<Q", data[:8]) if len(data) >= 10 else (len(data),)
    if len(data) < 10 or n + 8 > len(data) or data[8:9] != b"{":
        raise CheckpointError(f"{path}: not a safetensors file (pickles and torch.save files are refused)")
    header = json.loads(data[8:8 + n])
    meta = header.get("__metadata__", {}) or {}
    try:
        return st_load(data), meta
    except Exception as exc:  # safetensors raises its own error types
        raise CheckpointError(f"{path}: corrupt safetensors file ({exc})") from exc


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
    _, meta = read_safetensors(Path(path))
    if META_KEY not in meta:
        raise CheckpointError(f"{path}: a safetensors file without CoCoPath metadata (no model config)")
    return json.loads(meta[META_KEY])


def load_model(path: Path | str) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model named in the checkpoint's config and load its weights (strict)."""
    from engine.models import create_model

    tensors, raw = read_safetensors(Path(path))
    if META_KEY not in raw:
        raise CheckpointError(f"{path}: a safetensors file without CoCoPath metadata (no model config)")
    meta = json.loads(raw[META_KEY])
    cfg = dict(meta["model"])
    model = create_model(cfg.pop("name"), **cfg)
    own = model.state_dict()
    tensors = {k: v.to(own[k].dtype) if k in own else v for k, v in tensors.items()}
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not fit {meta['model']} ({str(exc).splitlines()[0]})") from exc
    return model, meta


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

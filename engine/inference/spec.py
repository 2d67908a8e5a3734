"""What a model needs to be run on a slide: its card, read from the checkpoint's JSON metadata.

A :class:`ModelSpec` names the model and its version (the cache key), its classes, the resolution
it was trained at (µm/px; ``None`` when the card does not say) and its input normalisation. Reading
it never imports torch: the JSON sidecar (``X.json``) is read when present, else the safetensors
header, so the viewer can show the card and open prediction caches without loading the network.
Every card is checked first (:func:`engine.model_card.check_card`): a card that names paths,
absurd sizes or values of the wrong type is refused in one line before anything uses it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import CocoPathError
from engine.model_card import ModelCardError, check_card, is_plain_name, parse_card

log = logging.getLogger(__name__)

DEFAULT_MEAN = (0.485, 0.456, 0.406)
DEFAULT_STD = (0.229, 0.224, 0.225)
#: Display colours of foreground classes, in order (class 1 is red: tumour).
PALETTE: tuple[tuple[int, int, int], ...] = (
    (220, 30, 30), (30, 120, 220), (40, 170, 60), (230, 160, 20), (150, 60, 200), (20, 180, 180))


class ModelError(CocoPathError):
    """A model cannot be used for inference (missing checkpoint, card without classes, …)."""


@dataclass(frozen=True)
class ModelSpec:
    """A model's card as inference needs it. Frozen: it keys caches and crosses threads."""

    name: str
    version: str
    classes: tuple[str, ...]
    mpp: float | None
    mean: tuple[float, float, float] = DEFAULT_MEAN
    std: tuple[float, float, float] = DEFAULT_STD
    tile: int = 512
    checkpoint: str = ""

    def __post_init__(self) -> None:
        if not is_plain_name(self.version):  # it names cache folders and files
            raise ModelError(f"model {self.name!r}: version {self.version!r} is not a plain name "
                             f"(letters, digits, '.', '_', '-'): refused")
        if len(self.classes) < 2:
            raise ModelError(f"model {self.name!r}: needs at least two classes (background and one "
                             f"more), its card lists {list(self.classes)}")
        if self.mpp is not None and not (self.mpp > 0 and math.isfinite(self.mpp)):
            raise ModelError(f"model {self.name!r}: µm/px must be positive, not {self.mpp}")
        if len(self.mean) != 3 or len(self.std) != 3 or not all(
                math.isfinite(v) for v in (*self.mean, *self.std)) or min(self.std) <= 0:
            raise ModelError(f"model {self.name!r}: mean {self.mean} and std {self.std} must be 3 "
                             f"finite numbers each, std above 0")
        if self.tile % 32 or self.tile < 64:
            raise ModelError(f"model {self.name!r}: tile {self.tile} is not a multiple of 32 ≥ 64")

    @property
    def foreground(self) -> tuple[str, ...]:
        """The classes stored in the prediction cache (every class but the first, background)."""
        return self.classes[1:]

    def color(self, index: int) -> tuple[int, int, int]:
        """Display colour of foreground class ``index`` (0-based among :attr:`foreground`)."""
        return PALETTE[index % len(PALETTE)]

    def card(self) -> dict[str, Any]:
        """JSON-ready description (for summaries and the model panel)."""
        return {"name": self.name, "version": self.version, "classes": list(self.classes),
                "mpp": self.mpp, "mean": list(self.mean), "std": list(self.std), "tile": self.tile,
                "checkpoint": self.checkpoint}


def file_digest(path: Path, n: int = 16) -> str:
    """First ``n`` hex digits of the SHA-256 of a file (read in blocks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:n]


def _header_meta(path: Path) -> dict[str, Any]:
    """The ``cocopath`` card inside a safetensors header (checked), without reading the tensors."""
    not_st = ModelError(f"{path}: not a safetensors checkpoint")
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise not_st
        (n,) = struct.unpack("<Q", head)
        if n > 100_000_000:
            raise not_st
        raw = f.read(n)
    try:
        header = json.loads(raw)
        text = header["__metadata__"]["cocopath"]
    except (ValueError, KeyError, TypeError, RecursionError):
        raise ModelError(f"{path}: not a CoCoPath safetensors checkpoint (no model card)") from None
    if not isinstance(text, str):
        raise ModelError(f"{path}: not a CoCoPath safetensors checkpoint (no model card)")
    return parse_card(text, path)


def read_card(path: str | Path) -> dict[str, Any]:
    """The checkpoint's checked card: its safetensors header (authoritative), else the JSON sidecar.
    Raises :class:`ModelError` (no such file, not a checkpoint) or
    :class:`~engine.model_card.ModelCardError` (a card field is wrong)."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: no such checkpoint")
    if path.suffix != ".safetensors":
        raise ModelError(f"{path}: --model takes a .safetensors checkpoint")
    try:
        return _header_meta(path)
    except OSError as exc:
        raise ModelError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    except ModelCardError:
        raise
    except ModelError:
        side = path.with_suffix(".json")
        if side.is_file():
            try:
                return parse_card(side.read_bytes(), side)
            except OSError as exc:
                raise ModelError(f"{side}: cannot be read ({exc.strerror or exc})") from None
        raise


def spec_from_meta(meta: dict[str, Any], version: str, checkpoint: str = "") -> ModelSpec:
    """Build the spec from a checkpoint's metadata (see ``engine.training.runs.model_meta``),
    checked first (:func:`engine.model_card.check_card`)."""
    check_card(meta, checkpoint or "model")
    model = meta["model"]
    name = str(model.get("name") or meta.get("name") or "model")
    n_classes = int(model.get("classes") or len(meta.get("classes") or []) or 2)
    classes = tuple(meta.get("classes") or ["background"] + [f"class {i}" for i in range(1, n_classes)])
    inp = meta.get("input") or {}
    mpp = inp.get("mpp")
    if mpp is None:
        log.warning("model %s has no µm/px in its card: it runs at the slide level chosen by the "
                    "caller", name)
    return ModelSpec(
        name=name, version=str(meta.get("version") or version), classes=classes,
        mpp=float(mpp) if mpp is not None else None,
        mean=tuple(float(v) for v in inp.get("mean") or DEFAULT_MEAN),  # type: ignore[arg-type]
        std=tuple(float(v) for v in inp.get("std") or DEFAULT_STD),  # type: ignore[arg-type]
        tile=int(inp.get("tile") or 512), checkpoint=checkpoint)


def load_spec(path: str | Path) -> ModelSpec:
    """The spec of a safetensors checkpoint; its version is the model name + a digest of the file."""
    path = Path(path)
    meta = read_card(path)
    try:
        digest = file_digest(path)
    except OSError as exc:
        raise ModelError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    return spec_from_meta(meta, f"{meta['model']['name']}-{digest}", str(path.resolve()))

"""Model cards: the JSON a CoCoPath checkpoint carries (in its safetensors header and its ``.json``
sidecar), checked field by field before the engine uses any of it. No torch: the viewer checks a
card before a network is ever loaded.

A card comes from whoever made the file, so every field the engine reads is checked for its type,
its range and, for names, its characters: a ``version`` or ``name`` is a plain name (it becomes part
of file and folder names: prediction caches, ONNX exports), never a path; a card may not point at
files (``model.encoder_weights`` is refused: the weights are in the checkpoint); sizes are bounded
so that no card asks for an absurd allocation. Fields the engine does not read pass through as they
are. Anything wrong raises :class:`ModelCardError`, one line: ``<file>: model card: <field> <what
is wrong>``.

:func:`inside` is the path check for names that come from a card (or anywhere else untrusted): the
result is a direct child of its folder, after resolving links, or :class:`UnsafePathError`.

The fields (``cocopath-model/1``)::

    format        "cocopath-model/1" (optional)
    name, version plain names (optional): [A-Za-z0-9][A-Za-z0-9._-]{0,63}, not ending in "."
    model         {"name": a registered architecture, "classes": 2–256,
                   "decoder_channels": 5 integers 1–1024, "norm": "bn" | "gn"} (required)
    classes       2–256 distinct non-empty names, as many as model.classes (optional)
    input         {"mean": 3 finite numbers in ±10, "std": 3 finite numbers in 0.001–100,
                   "mpp": null or 0.05–100 µm/px, "tile": 64–2048 a multiple of 32,
                   "short_side": null or 16–8192, "channels": "RGB"} (optional, each field too)
    data          {"folders", "negatives", "*_cases": lists of names, "group_regex": a regular
                   expression, "split_seed": an integer, "mask_mode": a name} (optional)
    metrics, registry, imported_from: objects (optional)
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from engine.errors import CocoPathError

FORMAT = "cocopath-model/1"
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
#: Names Windows gives to devices, whatever their extension: never a file or folder name.
_RESERVED = re.compile(r"(con|prn|aux|nul|com[0-9]|lpt[0-9])(\..*)?", re.IGNORECASE)
MPP_RANGE = (0.05, 100.0)  # µm/px: from beyond the optics of any scanner to a thumbnail
TILE_RANGE = (64, 2048)
TILE_MULTIPLE = 32  # the networks' stride
SHORT_SIDE_RANGE = (16, 8192)
MAX_CLASSES = 256
MAX_CLASS_NAME = 100
DECODER_BLOCKS = 5
MAX_DECODER_CHANNELS = 1024
#: The largest activation of one window the decoder may need (bytes, float32): 1 GiB.
MAX_WINDOW_BYTES = 1 << 30
MEAN_LIMIT = 10.0
STD_RANGE = (1e-3, 100.0)
MAX_REGEX = 500
NORMS = ("bn", "gn")
_CASE_LISTS = ("train_cases", "val_cases", "test_cases")

#: The architectures a card may name, with the settings their constructors take and their default
#: decoder channels. ``engine.models.registry.register_model`` adds any model registered later.
ARCHITECTURES: dict[str, frozenset[str]] = {
    name: frozenset({"classes", "decoder_channels", "norm"})
    for name in ("mobile-unet", "mobile-unet-small", "unet-resnet34", "unet-resnet50")
}
DEFAULT_DECODER: dict[str, tuple[int, ...]] = {
    "mobile-unet": (160, 64, 24, 16, 8), "mobile-unet-small": (64, 32, 16, 16, 8),
    "unet-resnet34": (256, 128, 64, 32, 16), "unet-resnet50": (256, 128, 256, 64, 32),
}


class ModelCardError(CocoPathError):
    """A model card (a checkpoint's JSON metadata) has a field of the wrong type, range or name."""


class UnsafePathError(CocoPathError):
    """A name that should be a plain file name inside a folder would leave that folder."""


class _Bad(Exception):
    """Internal: ``field`` is wrong (``problem`` completes the sentence)."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(field, problem)
        self.field, self.problem = field, problem


def register_architecture(name: str, settings: Iterable[str]) -> None:
    """Let cards name ``name`` with these constructor settings (called by ``register_model``)."""
    ARCHITECTURES[name] = frozenset(settings)


def is_plain_name(value: object) -> bool:
    """Whether ``value`` can be a file or folder name on every system: letters, digits, ``.``,
    ``_``, ``-``; starts with a letter or digit, at most 64 characters, no trailing dot, not a
    Windows device name."""
    return (isinstance(value, str) and NAME_RE.fullmatch(value) is not None
            and not value.endswith(".") and _RESERVED.fullmatch(value) is None)


def inside(parent: str | Path, name: str) -> Path:
    """``parent / name``, checked to be a direct child of ``parent`` once links are resolved:
    ``name`` is one path component (no separator, not ``.``/``..``, not absolute) and no link
    leads it elsewhere. Anything else raises :class:`UnsafePathError`."""
    parent = Path(parent)
    text = str(name)
    if (not text or text in (".", "..") or any(c in text for c in "/\\\0:")
            or any(ord(c) < 32 for c in text)):
        raise UnsafePathError(f"{parent}: {_show(text)} is not a plain file name: it would leave "
                              f"the folder, refused")
    path = parent / text
    try:
        real_parent = parent.resolve()
        real = path.resolve()
    except (OSError, RuntimeError) as exc:  # a link loop
        raise UnsafePathError(f"{path}: cannot be resolved ({exc}): refused") from None
    if real.parent != real_parent:
        raise UnsafePathError(f"{path}: leads outside {parent} (to {real}): refused")
    return path


def parse_card(raw: str | bytes, source: str | Path) -> dict[str, Any]:
    """The checked card from its JSON text (``source`` names the file in errors)."""
    try:
        card = json.loads(raw)
    except RecursionError:
        raise ModelCardError(f"{source}: model card is nested too deeply to be read") from None
    except (ValueError, TypeError) as exc:  # UnicodeDecodeError is a ValueError
        raise ModelCardError(f"{source}: model card is not valid JSON ({_first_line(exc)})") from None
    return check_card(card, source)


def check_card(card: Any, source: str | Path) -> dict[str, Any]:
    """``card`` itself when every field the engine reads is valid, else :class:`ModelCardError`."""
    if not isinstance(card, dict):
        raise ModelCardError(f"{source}: model card is {_kind(card)}, not a JSON object")
    try:
        _check(card)
    except _Bad as bad:
        raise ModelCardError(f"{source}: model card: {bad.field} {bad.problem}") from None
    return card


def card_error(source: str | Path, field: str, problem: str) -> ModelCardError:
    """The error for a card whose ``field`` is wrong in a way found outside this module."""
    return ModelCardError(f"{source}: model card: {field} {problem}")


# -- the fields ------------------------------------------------------------------------------------

def _check(card: dict[str, Any]) -> None:
    fmt = card.get("format")
    if fmt is not None and fmt != FORMAT:
        raise _Bad("format", f"is {_show(fmt)}: this CoCoPath reads {FORMAT}")
    for key in ("name", "version"):
        value = card.get(key)
        if value is not None and not is_plain_name(value):
            raise _Bad(key, f"is {_show(value)}: it must be a plain name (letters, digits, '.', '_', "
                            f"'-'; at most 64), never a path")
    if "model" not in card:
        raise _Bad("model", "is missing (it names the architecture to build)")
    n_model, decoder, arch = _check_model(card["model"])
    n_classes = _check_classes(card.get("classes"))
    if n_model is not None and n_classes is not None and n_model != n_classes:
        raise _Bad("classes", f"lists {n_classes} names and model.classes is {n_model}: they do not "
                              f"fit together")
    tile = _check_input(card.get("input"))
    _check_memory(decoder or DEFAULT_DECODER.get(arch), tile)
    _check_data(card.get("data"))
    for key in ("metrics", "registry", "imported_from"):
        if card.get(key) is not None and not isinstance(card[key], dict):
            raise _Bad(key, f"is {_kind(card[key])}, not an object")


def _check_model(model: Any) -> tuple[int | None, tuple[int, ...] | None, str]:
    if not isinstance(model, dict):
        raise _Bad("model", f"is {_kind(model)}, not an object naming the architecture")
    name = model.get("name")
    if not isinstance(name, str) or name not in ARCHITECTURES:
        raise _Bad("model.name", f"is {_show(name)}, not a CoCoPath architecture (valid: "
                                 f"{', '.join(sorted(ARCHITECTURES))})")
    if model.get("encoder_weights") is not None:
        raise _Bad("model.encoder_weights", "names a file: a model card may not point at files (the "
                                            "weights are in the checkpoint)")
    settings = ARCHITECTURES[name]
    for key in model:
        if key not in ("name", "encoder_weights") and key not in settings:
            raise _Bad(f"model.{_short(key)}", f"is not a setting of {name} (it takes: "
                                               f"{', '.join(sorted(settings)) or 'none'})")
    classes = None
    if model.get("classes") is not None:
        classes = _int(model["classes"], "model.classes", 2, MAX_CLASSES)
    decoder = None
    if model.get("decoder_channels") is not None:
        value = model["decoder_channels"]
        if not isinstance(value, list) or len(value) != DECODER_BLOCKS:
            raise _Bad("model.decoder_channels", f"is {_show(value)}: it needs {DECODER_BLOCKS} "
                                                 f"integers")
        decoder = tuple(_int(v, f"model.decoder_channels[{i}]", 1, MAX_DECODER_CHANNELS)
                        for i, v in enumerate(value))
    norm = model.get("norm")
    if norm is not None and "norm" in settings and norm not in NORMS:
        raise _Bad("model.norm", f"is {_show(norm)}, not one of {', '.join(NORMS)}")
    return classes, decoder, name


def _check_classes(classes: Any) -> int | None:
    if classes is None:
        return None
    if not isinstance(classes, list):
        raise _Bad("classes", f"is {_kind(classes)}, not a list of class names")
    if not 2 <= len(classes) <= MAX_CLASSES:
        raise _Bad("classes", f"lists {len(classes)} names: it needs 2 to {MAX_CLASSES} (background "
                              f"and at least one more)")
    seen: set[str] = set()
    for i, c in enumerate(classes):
        if not isinstance(c, str) or not c.strip():
            raise _Bad(f"classes[{i}]", f"is {_show(c)}, not a class name")
        if len(c) > MAX_CLASS_NAME or not c.isprintable():
            raise _Bad(f"classes[{i}]", f"is {_show(c)}: a class name is at most {MAX_CLASS_NAME} "
                                        f"printable characters")
        if c in seen:
            raise _Bad(f"classes[{i}]", f"repeats {_show(c)}: class names must be distinct")
        seen.add(c)
    return len(classes)


def _check_input(inp: Any) -> int:
    """Check ``input``; returns the window size (tile) the model runs at."""
    if inp is None:
        return 512
    if not isinstance(inp, dict):
        raise _Bad("input", f"is {_kind(inp)}, not an object")
    _triple(inp.get("mean"), "input.mean", -MEAN_LIMIT, MEAN_LIMIT)
    _triple(inp.get("std"), "input.std", *STD_RANGE)
    mpp = inp.get("mpp")
    if mpp is not None:
        _number(mpp, "input.mpp", *MPP_RANGE, unit=" µm/px")
    tile = 512
    if inp.get("tile") is not None:
        tile = _int(inp["tile"], "input.tile", *TILE_RANGE)
        if tile % TILE_MULTIPLE:
            raise _Bad("input.tile", f"is {tile}: it must be a multiple of {TILE_MULTIPLE}")
    if inp.get("short_side") is not None:
        _int(inp["short_side"], "input.short_side", *SHORT_SIDE_RANGE)
    channels = inp.get("channels")
    if channels is not None and channels != "RGB":
        raise _Bad("input.channels", f"is {_show(channels)}: CoCoPath feeds RGB")
    return tile


def _check_memory(decoder: tuple[int, ...] | None, tile: int) -> None:
    """The decoder's largest activation for one window (float32) stays under the limit."""
    if decoder is None:
        return
    need, previous = 0, 0
    for i, c in enumerate(decoder):  # block i outputs at 1/2^(4-i) of the window's side
        side = tile / 2 ** (len(decoder) - 1 - i)
        need = max(need, int((previous + c) * side * side * 4))
        previous = c
    if need > MAX_WINDOW_BYTES:
        raise _Bad("model.decoder_channels", f"{list(decoder)} with input.tile {tile} would need about "
                                             f"{need / 2**30:.0f} GiB per window (at most "
                                             f"{MAX_WINDOW_BYTES >> 30} GiB)")


def _check_data(data: Any) -> None:
    if data is None:
        return
    if not isinstance(data, dict):
        raise _Bad("data", f"is {_kind(data)}, not an object")
    for key in ("folders", "negatives", *_CASE_LISTS):
        value = data.get(key)
        if value is None:
            continue
        if not isinstance(value, list):
            raise _Bad(f"data.{key}", f"is {_kind(value)}, not a list of names")
        for i, v in enumerate(value):
            if not isinstance(v, str):
                raise _Bad(f"data.{key}[{i}]", f"is {_show(v)}, not a name")
    regex = data.get("group_regex")
    if regex is not None:
        if not isinstance(regex, str) or len(regex) > MAX_REGEX:
            raise _Bad("data.group_regex", f"is {_show(regex)}, not a regular expression of at most "
                                           f"{MAX_REGEX} characters")
        try:
            re.compile(regex)
        except (re.error, RecursionError, OverflowError, ValueError) as exc:
            raise _Bad("data.group_regex", f"is not a valid regular expression ({exc})") from None
    if data.get("split_seed") is not None:
        _int(data["split_seed"], "data.split_seed", 0, 2**32 - 1)
    mode = data.get("mask_mode")
    if mode is not None and not is_plain_name(mode):
        raise _Bad("data.mask_mode", f"is {_show(mode)}, not a name")


# -- values ----------------------------------------------------------------------------------------

def _int(value: Any, field: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Bad(field, f"is {_show(value)}, not an integer")
    if not lo <= value <= hi:
        raise _Bad(field, f"is {_show(value)}: it must be {lo} to {hi}")
    return value


def _number(value: Any, field: str, lo: float, hi: float, unit: str = "") -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _Bad(field, f"is {_show(value)}, not a number")
    try:
        x = float(value)
    except OverflowError:  # an integer beyond any float
        x = math.inf
    if not math.isfinite(x):
        raise _Bad(field, f"is {_show(value)}, not a finite number")
    if not lo <= x <= hi:
        raise _Bad(field, f"is {_show(value)}: it must be {lo:g} to {hi:g}{unit}")
    return x


def _triple(value: Any, field: str, lo: float, hi: float) -> None:
    if value is None:
        return
    if not isinstance(value, list) or len(value) != 3:
        raise _Bad(field, f"is {_show(value)}: it needs 3 numbers (R, G, B)")
    for i, v in enumerate(value):
        _number(v, f"{field}[{i}]", lo, hi)


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return f"a list of {len(value)} item{'s' if len(value) != 1 else ''}"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _show(value: Any, limit: int = 40) -> str:
    """A short one-line rendering of a card value (never recursive, never a line break)."""
    if isinstance(value, str):
        text = repr(value if len(value) <= limit else value[:limit] + "…")
    elif isinstance(value, bool) or value is None:
        text = json.dumps(value)
    elif isinstance(value, int):
        digits = len(str(abs(value))) if value.bit_length() < 10_000 else None
        short = digits is not None and digits <= 20
        text = str(value) if short else f"an integer of {digits or 'many'} digits"
    elif isinstance(value, float):
        text = repr(value)
    else:
        text = _kind(value)
    return text


def _short(key: str) -> str:
    return key if len(key) <= 40 and key.isprintable() else _show(key)


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0][:200]


__all__ = ["ARCHITECTURES", "FORMAT", "ModelCardError", "UnsafePathError", "card_error", "check_card",
           "inside", "is_plain_name", "parse_card", "register_architecture"]

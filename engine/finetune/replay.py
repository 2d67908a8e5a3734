"""A replay sample of the model's base training data: what a round must not forget.

A round learns from a few corrections; left alone it can forget what the model knew elsewhere.
The replay sample is a few tiles of the data the model was trained on (its card names the folders,
the case lists and which folders hold no tumour), read from the shared data folder
(:func:`engine.shared_data.data_root`, ``$COCO_DATA``) when this machine has it. In training the
parent's own predictions on tiles of its *training* cases are the target (distillation: keep
answering as before). The guard scores parent and new version against the true masks of tiles of
its *validation* cases: never trained on by either, so the parent is not favoured by having
memorised them (and never the test cases, which benchmarks keep for themselves); a version that
scores lower there is not activated.

Tiles are drawn seeded, half from folders with tumour and half from those without (the balance the
model was trained with), only from the card's training cases, and brought to the round's patch size
(a larger tile is cropped at a random place, a smaller one padded with the model's mean colour and
an unknown label). No torch here.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engine.annotations.rois import IGNORE
from engine.finetune.data import Patch, mean_rgb

log = logging.getLogger(__name__)

#: Tiles in a round's replay sample (the guard's second measurement; also a distillation target).
DEFAULT_TILES = 32


@dataclass
class ReplaySample:
    patches: list[Patch]  # label = the tile's true mask (IGNORE on padding)
    sources: dict[str, int]  # folder name → tiles taken
    note: str


def _fit(rgb: np.ndarray, mask: np.ndarray, size: int, fill: np.ndarray,
         rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Crop (at a random place) or pad (centred, mean colour, unknown label) to size × size."""
    h, w = mask.shape
    if h > size or w > size:
        y = int(rng.integers(0, max(h - size, 0) + 1))
        x = int(rng.integers(0, max(w - size, 0) + 1))
        rgb, mask = rgb[y:y + size, x:x + size], mask[y:y + size, x:x + size]
        h, w = mask.shape
    out_rgb = np.empty((size, size, 3), np.uint8)
    out_rgb[:] = fill
    out_mask = np.full((size, size), IGNORE, np.uint8)
    y0, x0 = (size - h) // 2, (size - w) // 2
    out_rgb[y0:y0 + h, x0:x0 + w] = rgb
    out_mask[y0:y0 + h, x0:x0 + w] = mask
    return out_rgb, out_mask


def replay_sample(card: dict[str, Any], size: int, tiles: int = DEFAULT_TILES, seed: int = 0,
                  root: Path | None = None, part: str = "train") -> ReplaySample:
    """Up to ``tiles`` tiles of the card's ``part`` ("train" or "val") cases (see the module
    docstring); an empty sample with a note saying why when the data is not on this machine or the
    card names none."""
    from engine.shared_data import SharedDataMissing, data_root
    from engine.training.datasets import DatasetError, case_of, find_pairs, load_pair

    d = card.get("data") or {}
    names = [Path(f).name for f in d.get("folders") or ()]
    if tiles <= 0:
        return ReplaySample([], {}, "none (none asked for)")
    if not names:
        return ReplaySample([], {}, "none (the model's card names no training data)")
    try:
        seg = (root or data_root()) / "seg"
    except SharedDataMissing:
        return ReplaySample([], {}, "none (the model's training data is not on this machine: "
                                    f"set $COCO_DATA to the folder holding seg/{names[0]}/…)")
    folders = [seg / n for n in names if (seg / n).is_dir()]
    if not folders:
        return ReplaySample([], {}, f"none (none of {', '.join(names)} is in {seg})")
    try:
        pairs = find_pairs(folders, qualified=len(folders) > 1)
    except DatasetError as exc:
        return ReplaySample([], {}, f"none ({exc})")
    if part not in ("train", "val"):
        raise ValueError(f"unknown part {part!r}")
    cases = set(d.get(f"{part}_cases") or ())
    if cases:
        pattern = re.compile(d.get("group_regex") or r"^(.*?)-\d+-400-\d+$")
        pairs = [p for p in pairs if case_of(p.stem, pattern) in cases]
    elif part == "val":
        return ReplaySample([], {}, "none (the model's card lists no validation cases)")
    negatives = set(d.get("negatives") or ())
    pos = [p for p in pairs if Path(p.source).name not in negatives]
    neg = [p for p in pairs if Path(p.source).name in negatives]
    rng = np.random.default_rng((seed, 4099, part == "val"))
    n_neg = min(len(neg), tiles // 2) if pos else min(len(neg), tiles)
    n_pos = min(len(pos), tiles - n_neg)
    picks = ([pos[int(i)] for i in rng.permutation(len(pos))[:n_pos]]
             + [neg[int(i)] for i in rng.permutation(len(neg))[:n_neg]])
    fill = mean_rgb((card.get("input") or {}).get("mean") or (0.485, 0.456, 0.406))
    mode = d.get("mask_mode") or "binary"
    patches: list[Patch] = []
    sources: dict[str, int] = {}
    for p in picks:
        folder = Path(p.source).name
        try:
            rgb, mask = load_pair(p, (card.get("input") or {}).get("short_side"), mode, folder in negatives)
        except DatasetError as exc:
            log.warning("replay: %s", exc)
            continue
        rgb, mask = _fit(rgb, mask, size, fill, rng)
        patches.append(Patch(rgb, mask, -1, f"replay:{p.key}", 0, 0, float(size)))
        sources[folder] = sources.get(folder, 0) + 1
    if not patches:
        return ReplaySample([], {}, "none (no tile of those cases could be read)")
    what = "training" if part == "train" else "validation"
    note = (f"{len(patches)} tiles of the model's {what} cases "
            f"({', '.join(f'{k} {v}' for k, v in sorted(sources.items()))})")
    return ReplaySample(patches, sources, note)


__all__ = ["DEFAULT_TILES", "ReplaySample", "replay_sample"]

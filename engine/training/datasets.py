"""Segmentation datasets from folders of ``images/`` + ``masks/`` with matching file stems, and a
train/val/test split **by case** (a regex's first group is the case id), written to JSON and reused.

Masks are either binary (grey ≥ 128 → class 1, else 0; "thresholded at 127") or label-index images
whose pixel values are class indices (``mask_mode="index"``).
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from engine.errors import CocoPathError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
DEFAULT_GROUP_REGEX = r"^(.*?)-\d+-400-\d+$"


class DatasetError(CocoPathError):
    """A dataset folder or split file is missing, empty or inconsistent."""


@dataclass(frozen=True)
class Pair:
    stem: str
    image: Path
    mask: Path
    source: str  # the data folder it came from
    qualified: bool = False  # several folders: the key is "<folder name>/<stem>"

    @property
    def key(self) -> str:
        """The name this pair has in a split file (unique across the folders it was found in)."""
        return f"{Path(self.source).name}/{self.stem}" if self.qualified else self.stem


def find_pairs(folders: Sequence[Path | str], qualified: bool = False) -> list[Pair]:
    """All (image, mask) pairs with matching stems in ``<folder>/images`` and ``<folder>/masks``.

    With ``qualified`` each pair's :attr:`Pair.key` is ``<folder name>/<stem>``, so folders may share
    file names (the EBHI-Seg classes do: one case has tiles in several classes).
    """
    pairs: list[Pair] = []
    folders = [Path(f) for f in folders]
    names = [f.name for f in folders]
    if qualified and len(set(names)) != len(names):
        raise DatasetError("two data folders have the same name; their images' keys would collide")
    for folder in folders:
        img_dir, mask_dir = folder / "images", folder / "masks"
        if not img_dir.is_dir() or not mask_dir.is_dir():
            raise DatasetError(f"{folder}: expected images/ and masks/ folders inside")
        masks = {p.stem: p for p in mask_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
        found = 0
        for img in sorted(img_dir.iterdir()):
            if img.suffix.lower() in IMAGE_SUFFIXES and img.stem in masks:
                pairs.append(Pair(img.stem, img, masks[img.stem], str(folder), qualified))
                found += 1
        if not found:
            raise DatasetError(f"{folder}: no image in images/ has a mask of the same name in masks/")
    keys = [p.key for p in pairs]
    if len(set(keys)) != len(keys):
        raise DatasetError("two data folders hold images with the same name; names must be unique")
    return pairs


def case_of(stem: str, pattern: re.Pattern[str]) -> str:
    """The case id of an image: the first group of ``pattern`` that matched (alternatives allowed).

    A qualified key (``<folder>/<stem>``) is matched on its stem, so the same case in two folders
    (one patient's normal and tumour tiles) has one id and lands in one part of a split.
    """
    m = pattern.match(stem.rpartition("/")[2])
    groups = [g for g in (m.groups() if m else ()) if g is not None]
    if not groups:
        raise DatasetError(f"image {stem!r} does not match the group regex {pattern.pattern!r} (with a group)")
    return groups[0]


def split_by_case(
    stems: Sequence[str], group_regex: str = DEFAULT_GROUP_REGEX,
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15), seed: int = 0,
) -> dict[str, object]:
    """Shuffle the cases (not the images) and cut them into train/val/test by ``fractions``."""
    pattern = re.compile(group_regex)
    cases: dict[str, list[str]] = {}
    for s in sorted(stems):
        cases.setdefault(case_of(s, pattern), []).append(s)
    ids = sorted(cases)
    if len(ids) < 3:
        raise DatasetError(f"only {len(ids)} case(s): a train/val/test split by case needs at least 3")
    random.Random(seed).shuffle(ids)
    n_val = max(1, round(fractions[1] * len(ids)))
    n_test = max(1, round(fractions[2] * len(ids)))
    parts = {"test": ids[:n_test], "val": ids[n_test:n_test + n_val], "train": ids[n_test + n_val:]}
    _every_folder_in_every_part(parts, cases)
    split: dict[str, object] = {"group_regex": group_regex, "seed": seed, "fractions": list(fractions)}
    for name, case_ids in parts.items():
        split[name] = sorted(s for c in case_ids for s in cases[c])
        split[f"{name}_cases"] = sorted(case_ids)
    return split


def _every_folder_in_every_part(parts: dict[str, list[str]], cases: dict[str, list[str]]) -> None:
    """Qualified keys (several folders): a folder with at least 3 cases gets one in validation and
    one in test, moved from train (the first in the shuffled order), so that model selection and
    the test see every kind of tissue (CAMELYON's 4 cases once all missed validation)."""
    folders_of = {c: {s.rpartition("/")[0] for s in stems} for c, stems in cases.items()}
    folders = sorted(set().union(*folders_of.values()))
    if len(folders) < 2:
        return
    for folder in folders:
        if sum(folder in f for f in folders_of.values()) < 3:
            continue
        for part in ("val", "test"):
            if any(folder in folders_of[c] for c in parts[part]):
                continue
            movable = [c for c in parts["train"] if folder in folders_of[c]]
            if len(movable) > 1:  # train keeps at least one
                parts["train"].remove(movable[0])
                parts[part].append(movable[0])


def split_from_cases(stems: Sequence[str], group_regex: str, cases: dict[str, Sequence[str]]) -> dict[str, object]:
    """The split that a model card's case lists (``train_cases`` / ``val_cases`` / ``test_cases``)
    describe, over the images ``stems`` at hand; an image of an unlisted case belongs to no part."""
    pattern = re.compile(group_regex)
    owner = {c: part for part in ("train", "val", "test") for c in cases.get(f"{part}_cases") or ()}
    if not owner:
        raise DatasetError("the model card lists no train / validation / test cases")
    split: dict[str, object] = {"group_regex": group_regex, "from": "case lists"}
    for part in ("train", "val", "test"):
        split[part] = sorted(s for s in stems if owner.get(case_of(s, pattern)) == part)
        split[f"{part}_cases"] = sorted(cases.get(f"{part}_cases") or ())
    return split


def load_or_make_split(
    path: Path, stems: Sequence[str], group_regex: str, seed: int = 0,
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
) -> dict[str, object]:
    """Reuse the split JSON at ``path`` if it exists (checking it fits), else make and write it."""
    if path.is_file():
        split = json.loads(path.read_text())
        if split.get("group_regex") != group_regex:
            raise DatasetError(f"{path} was made with regex {split.get('group_regex')!r}, not {group_regex!r}")
        known = set(split["train"]) | set(split["val"]) | set(split["test"])  # type: ignore[arg-type]
        missing = sorted(set(stems) - known)
        if missing:
            raise DatasetError(f"{path} does not cover {len(missing)} image(s) (e.g. {missing[0]}); delete it to re-split")
        log.info("reusing split %s", path)
        return split
    split = split_by_case(stems, group_regex, fractions, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # torchrun ranks write the same split
    tmp.write_text(json.dumps(split, indent=1))
    os.replace(tmp, path)
    return split


def load_pair(
    pair: Pair, size: int | None = None, mask_mode: str = "binary", negative: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """RGB uint8 H×W×3 and class-index uint8 H×W, optionally resized so the short side is ``size``.

    ``negative``: the image holds none of the target classes (a benign or pre-malignant tile whose
    own mask outlines something else), so its mask is all background whatever the file says.
    """
    try:
        img = Image.open(pair.image).convert("RGB")
        mask = Image.open(pair.mask).convert("L")
    except OSError as exc:
        raise DatasetError(f"{pair.image.name}: cannot read image or mask ({exc})") from exc
    if img.size != mask.size:
        raise DatasetError(f"{pair.stem}: image {img.size} and mask {mask.size} sizes differ")
    if size and min(img.size) != size:
        scale = size / min(img.size)
        wh = (round(img.size[0] * scale), round(img.size[1] * scale))
        img = img.resize(wh, Image.BILINEAR)
        mask = mask.resize(wh, Image.NEAREST)
    if mask_mode not in ("binary", "index"):
        raise DatasetError(f"unknown mask mode {mask_mode!r}; valid: binary, index")
    m = np.asarray(mask)
    if negative:
        m = np.zeros_like(m)
    elif mask_mode == "binary":
        m = (m > 127).astype(np.uint8)
    return np.asarray(img, dtype=np.uint8).copy(), m.astype(np.uint8)

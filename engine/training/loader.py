"""The torch side of the datasets: an in-memory :class:`SegDataset` with deterministic per-sample
augmentation (seeded by seed, epoch and index, so any worker or process draws the same sample)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from engine.training.augment import AugmentConfig, augment
from engine.training.datasets import DatasetError, Pair, load_pair

MEAN = (0.485, 0.456, 0.406)  # ImageNet statistics, recorded in every checkpoint's JSON
STD = (0.229, 0.224, 0.225)


def to_tensor(img: np.ndarray) -> torch.Tensor:
    """H×W×3 uint8 → 3×H×W float normalised with :data:`MEAN` / :data:`STD`."""
    x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float().div_(255.0)
    mean = torch.tensor(MEAN).view(3, 1, 1)
    std = torch.tensor(STD).view(3, 1, 1)
    return (x - mean) / std


class SegDataset(Dataset):
    """Pairs loaded once into memory (optionally resized so the short side is ``size``)."""

    def __init__(
        self, pairs: Sequence[Pair], size: int | None = None, mask_mode: str = "binary",
        augment_cfg: AugmentConfig | None = None, seed: int = 0, negatives: frozenset[str] = frozenset(),
    ) -> None:
        self.pairs = list(pairs)
        self.negatives = negatives  # folders whose masks outline a lesion that is not a target class
        self.items = [load_pair(p, size, mask_mode, Path(p.source).name in negatives) for p in self.pairs]
        self.augment_cfg = augment_cfg
        self.seed = seed
        self.epoch = 0

    def rescaled(self, factor: float) -> SegDataset:
        """The same images and masks resized by ``factor`` (a slide scanned at another µm/px)."""
        from PIL import Image

        out = SegDataset([], augment_cfg=None, negatives=self.negatives)
        out.pairs = list(self.pairs)
        for img, mask in self.items:
            wh = (max(32, round(mask.shape[1] * factor)), max(32, round(mask.shape[0] * factor)))
            out.items.append((np.array(Image.fromarray(img).resize(wh, Image.BILINEAR)),
                              np.array(Image.fromarray(mask).resize(wh, Image.NEAREST))))
        return out

    def repeat_folders(self, factors: dict[str, int]) -> None:
        """Show the images of each named source folder ``factor`` times in all (repeats share the
        loaded arrays and are augmented differently, as in :meth:`balance`)."""
        known = {Path(p.source).name for p in self.pairs}
        unknown = sorted(set(factors) - known)
        if unknown:
            raise DatasetError(f"cannot repeat folder(s) {', '.join(unknown)}: no training image comes from them")
        bad = {f: n for f, n in factors.items() if int(n) != n or n < 1}
        if bad:
            raise DatasetError(f"repeat factors must be whole numbers of at least 1, not {bad}")
        extra = [i for i, p in enumerate(self.pairs) for _ in range(int(factors.get(Path(p.source).name, 1)) - 1)]
        self.pairs = self.pairs + [self.pairs[i] for i in extra]
        self.items = self.items + [self.items[i] for i in extra]

    def balance(self) -> None:
        """Repeat the smaller group (images with / without foreground) until both are as many.

        Repeats share the loaded arrays; augmentation is seeded by index, so each differs.
        """
        pos = [i for i, (_, m) in enumerate(self.items) if m.any()]
        neg = [i for i, (_, m) in enumerate(self.items) if not m.any()]
        small, big = (pos, neg) if len(pos) < len(neg) else (neg, pos)
        if not small:
            return
        extra = [small[k % len(small)] for k in range(len(big) - len(small))]
        self.pairs = self.pairs + [self.pairs[i] for i in extra]
        self.items = self.items + [self.items[i] for i in extra]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        img, mask = self.items[idx]
        if self.augment_cfg is not None:
            rng = np.random.default_rng((self.seed, self.epoch, idx))
            img, mask = augment(img, mask, rng, self.augment_cfg)
        return to_tensor(img), torch.from_numpy(np.ascontiguousarray(mask)).long()

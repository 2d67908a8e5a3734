"""The torch side of the datasets: an in-memory :class:`SegDataset` with deterministic per-sample
augmentation (seeded by seed, epoch and index, so any worker or process draws the same sample)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from engine.training.augment import AugmentConfig, augment
from engine.training.datasets import Pair, load_pair

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
        augment_cfg: AugmentConfig | None = None, seed: int = 0,
    ) -> None:
        self.pairs = list(pairs)
        self.items = [load_pair(p, size, mask_mode) for p in self.pairs]
        self.augment_cfg = augment_cfg
        self.seed = seed
        self.epoch = 0

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

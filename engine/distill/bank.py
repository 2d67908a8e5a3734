"""A crop bank: a fixed set of augmented training crops with the frozen teacher's outputs on them.

The teacher does not change during distillation, so its logits and the features the losses read
(``enc_shallow``, ``dec_shallow``, ``logits``) are computed **once** per crop and stored (fp16);
a student step then costs only the student's forward and backward. The bank is a dataset whose
items are ``(image, mask, {feature: tensor})``; :class:`~engine.distill.distiller.Distiller` takes
the third part in place of running the teacher. Written atomically to one safetensors file, keyed
by the settings that made it, and read back by the next run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from engine.distill.recorders import FeatureRecorder
from engine.jobs import Progress
from engine.training.loader import MEAN, STD, SegDataset

log = logging.getLogger(__name__)

#: The teacher sources any shipped distillation config reads.
FEATURES = ("enc_shallow", "dec_shallow", "logits")


class CropBank(Dataset):
    """``images`` N×3×H×W uint8, ``masks`` N×H×W uint8, ``teacher`` name → N×C×h×w (fp16)."""

    def __init__(self, images: Tensor, masks: Tensor, teacher: dict[str, Tensor]) -> None:
        if images.dtype != torch.uint8 or masks.dtype != torch.uint8:
            raise ValueError("a crop bank stores uint8 images and masks")
        if any(t.shape[0] != images.shape[0] for t in (masks, *teacher.values())):
            raise ValueError("a crop bank's images, masks and teacher outputs differ in count")
        self.images, self.masks, self.teacher = images, masks, teacher
        self._mean = torch.tensor(MEAN).view(3, 1, 1)
        self._std = torch.tensor(STD).view(3, 1, 1)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def set_epoch(self, epoch: int) -> None:  # the crops are fixed: nothing to re-draw
        pass

    def __getitem__(self, idx: int) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        x = (self.images[idx].float().div_(255.0) - self._mean) / self._std
        return x, self.masks[idx].long(), {k: v[idx].float() for k, v in self.teacher.items()}

    def save(self, path: Path) -> None:
        from safetensors.torch import save

        from engine.atomic import atomic_write

        tensors = {"images": self.images, "masks": self.masks, **{f"teacher.{k}": v for k, v in self.teacher.items()}}
        atomic_write(Path(path), save({k: v.contiguous() for k, v in tensors.items()}))

    @classmethod
    def load(cls, path: Path) -> CropBank:
        from safetensors.torch import load_file

        t = load_file(str(path))
        teacher = {k.partition(".")[2]: v for k, v in t.items() if k.startswith("teacher.")}
        return cls(t["images"], t["masks"], teacher)


@torch.no_grad()
def build_bank(
    dataset: SegDataset, teacher: nn.Module, size: int, features: Sequence[str] = FEATURES, batch: int = 16,
    progress: Callable[[Progress], None] | None = None,
) -> CropBank:
    """``size`` augmented crops of ``dataset`` (its epochs in turn, so every image appears), with the
    teacher's ``features`` on each. Images go back to uint8 exactly: they are stored as drawn."""
    teacher.eval()
    paths = {f: teacher.feature_layers[f] for f in features}
    imgs: list[Tensor] = []
    masks: list[Tensor] = []
    outs: dict[str, list[Tensor]] = {f: [] for f in features}
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    with FeatureRecorder(teacher, paths) as rec:
        for start in range(0, size, batch):
            xs, ms = [], []
            for i in range(start, min(size, start + batch)):
                epoch, idx = divmod(i, len(dataset))
                dataset.set_epoch(epoch)
                x, m = dataset[idx]
                xs.append(x)
                ms.append(m)
            x = torch.stack(xs)
            teacher(x)
            for f in features:
                outs[f].append(rec[f].to(torch.float16))
            u8 = ((x * std + mean) * 255.0).round().clamp_(0, 255).to(torch.uint8)
            imgs.append(u8)
            masks.append(torch.stack(ms).to(torch.uint8))
            if progress is not None:
                progress(Progress("bank", min(size, start + batch), size))
    dataset.set_epoch(0)
    return CropBank(torch.cat(imgs), torch.cat(masks), {f: torch.cat(v) for f, v in outs.items()})


def load_or_build_bank(
    path: Path, dataset: SegDataset, teacher: nn.Module, size: int,
    progress: Callable[[Progress], None] | None = None,
) -> CropBank:
    """The bank at ``path`` if it is there and complete, else build it and write it there."""
    path = Path(path)
    if path.is_file():
        try:
            bank = CropBank.load(path)
            if len(bank) == size:
                log.info("crop bank read back from %s (%d crops)", path, size)
                return bank
        except (OSError, ValueError, KeyError) as exc:
            log.warning("crop bank %s unreadable (%s): building it again", path, exc)
    bank = build_bank(dataset, teacher, size, progress=progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    bank.save(path)
    log.info("crop bank of %d crops written to %s (%.0f MiB)", size, path, path.stat().st_size / 2**20)
    return bank


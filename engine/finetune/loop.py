"""The round's training steps and held-out measurement.

A stage (the teacher's adaptation, then the student's training) is a fixed number of steps on
batches drawn from the round's patches (seeded by (seed, stage, step): the same settings give the
same batches), AdamW with a poly-decaying learning rate, AMP (fp16 + GradScaler) on CUDA and fp32
on CPU. When a step runs out of (GPU or CPU) memory, the step is retried with half the batch, down
to one patch (:func:`train_stage`; :mod:`engine.oom` decides what counts and halves); so is every
batched forward pass (:func:`oom_batches`). The cancel token is polled before every step; a
cancelled stage raises :class:`RoundCancelled`.
"""

from __future__ import annotations

import logging
import math
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from engine.errors import CocoPathError
from engine.finetune.data import Patch
from engine.jobs import CancelToken
from engine.oom import Backoff, OutOfMemory
from engine.training.augment import AugmentConfig, augment
from engine.training.evaluate import predict_logits
from engine.training.metrics import ConfusionMatrix
from engine.training.trainer import amp_step, poly_lr

log = logging.getLogger(__name__)

#: Light augmentation for fine-tuning: flips, right-angle turns, a little stain and colour jitter.
AUGMENT = AugmentConfig(crop=None, scale=(1.0, 1.0), hed_sigma=0.03, brightness=0.05,
                        contrast=0.05, saturation=0.05)


class RoundCancelled(Exception):
    """The round's cancel token was set: stop, publish nothing."""


class RoundError(CocoPathError):
    """A round cannot go on (no model, out of memory with a batch of one, a diverging loss, …)."""


class RoundOutOfMemory(RoundError, OutOfMemory):
    """Out of memory even with a batch of one patch."""


def oom_hint(device: torch.device) -> str:
    """What to do when a batch of one patch does not fit in memory on ``device``."""
    if device.type == "cuda":
        return "use a smaller patch size or the CPU (--device cpu)"
    return "use a smaller patch size or close other programs"


def check(cancel: CancelToken | None) -> None:
    if cancel is not None and cancel.cancelled:
        raise RoundCancelled()


def normalise(rgb: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """H×W×3 uint8 → 3×H×W float32 normalised with the model card's mean / std."""
    arr = np.ascontiguousarray(rgb)
    x = torch.from_numpy(arr if arr.flags.writeable else arr.copy()).permute(2, 0, 1).float().div_(255.0)
    return (x - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)


class Batcher:
    """Seeded batches: region patches (with labels), mixed with tissue patches for distillation."""

    def __init__(self, labelled: Sequence[Patch], unlabelled: Sequence[Patch], mean: Sequence[float],
                 std: Sequence[float], seed: int, augment_cfg: AugmentConfig | None = AUGMENT) -> None:
        if not labelled:
            raise RoundError("no labelled patch to train on")
        self.labelled, self.unlabelled = list(labelled), list(unlabelled)
        self.mean, self.std, self.seed, self.augment_cfg = tuple(mean), tuple(std), seed, augment_cfg

    def composition(self, step: int, batch: int, mix: bool) -> tuple[int, int]:
        """(region patches, tissue patches) of a batch: half and half when mixing (odd batches
        alternate which side gets the extra one)."""
        if not mix or not self.unlabelled:
            return batch, 0
        n_l = (batch + (step % 2 == 0)) // 2
        return n_l, batch - n_l

    def draw(self, stage: str, step: int, batch: int, mix: bool) -> tuple[Tensor, Tensor]:
        rng = np.random.default_rng((self.seed, zlib.crc32(stage.encode()), step))
        n_l, n_u = self.composition(step, batch, mix)
        picks = [self.labelled[int(i)] for i in rng.integers(0, len(self.labelled), n_l)]
        if n_u:
            picks += [self.unlabelled[int(i)] for i in rng.integers(0, len(self.unlabelled), n_u)]
        images, targets = [], []
        for p in picks:
            rgb, label = p.rgb, p.label
            if self.augment_cfg is not None:
                rgb, label = augment(rgb, label, rng, self.augment_cfg)
            images.append(normalise(rgb, self.mean, self.std))
            targets.append(torch.from_numpy(np.ascontiguousarray(label)).long())
        return torch.stack(images), torch.stack(targets)

    def images(self, batch: int, device: torch.device) -> Iterator[Tensor]:
        """Endless batches of images of every patch (the paraphraser's unsupervised pre-training)."""
        pool = self.labelled + self.unlabelled
        rng = np.random.default_rng((self.seed, 7919))
        while True:
            idx = rng.integers(0, len(pool), batch)
            yield torch.stack([normalise(pool[int(i)].rgb, self.mean, self.std) for i in idx]).to(device)


@dataclass
class StageResult:
    history: list[dict[str, float]] = field(default_factory=list)
    batch_size: int = 0
    backoffs: list[tuple[int, int]] = field(default_factory=list)  # (step, new batch size)


StepFn = Callable[[int, int, dict[str, float], int], None]  # (step done, total, terms, batch size)


def _one_step(objective: nn.Module, opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
              images: Tensor, target: Tensor, device: torch.device) -> dict[str, float]:
    terms = amp_step(objective, opt, scaler, images, target, device)
    logged = {k: float(v.detach()) for k, v in terms.items()}
    logged.update(objective.after_step())
    return logged


def train_stage(objective: nn.Module, batcher: Batcher, *, stage: str, steps: int, batch_size: int,
                lr: float, device: torch.device, cancel: CancelToken | None = None, mix: bool = True,
                weight_decay: float = 1e-4, on_step: StepFn | None = None,
                on_backoff: Callable[[int, int], None] | None = None) -> StageResult:
    """``steps`` optimisation steps of ``objective`` (see the module docstring)."""
    objective.to(device)
    if device.type == "cuda":
        objective.to(memory_format=torch.channels_last)
    objective.train()
    params = objective.trainable_parameters()
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda")
    out = StageResult(batch_size=batch_size)
    at = [0]  # the step being run, for the back-off record

    def halved(size: int) -> None:
        out.batch_size = size
        out.backoffs.append((at[0], size))
        if on_backoff is not None:
            on_backoff(at[0], size)

    backoff = Backoff(batch_size, f"{stage}: out of memory even with a batch of one patch; {oom_hint(device)}",
                      halved, label=stage, error=RoundOutOfMemory)
    for step in range(steps):
        check(cancel)
        at[0] = step
        for g in opt.param_groups:
            g["lr"] = poly_lr(lr, step, steps)

        def attempt(size: int) -> dict[str, float]:
            images, target = batcher.draw(stage, step, size, mix)
            try:
                return _one_step(objective, opt, scaler, images, target, device)
            except Exception:
                opt.zero_grad(set_to_none=True)  # a half-done step leaves no gradient behind
                raise

        logged = backoff.call(attempt)
        if not math.isfinite(logged["total"]):
            raise RoundError(f"{stage}: the loss became {logged['total']} at step {step + 1}; "
                             f"lower the learning rate")
        out.history.append(logged)
        if on_step is not None:
            on_step(step + 1, steps, logged, out.batch_size)
    return out


def oom_batches(patches: Sequence[Patch], mean: Sequence[float], std: Sequence[float], device: torch.device,
                batch: int, fn: Callable[[Tensor], Any], cancel: CancelToken | None = None) -> Iterator[tuple[Sequence[Patch], Any]]:
    """``fn`` on the normalised images of ``patches``, ``batch`` at a time: (chunk, its result) in
    order; a chunk that runs out of (GPU or CPU) memory is retried with half as many, down to one
    (then :class:`~engine.oom.OutOfMemory`)."""
    def run(chunk: Sequence[Patch]) -> Any:
        return fn(torch.stack([normalise(p.rgb, mean, std) for p in chunk]).to(device))

    backoff = Backoff(batch, f"out of memory even with one patch at a time; {oom_hint(device)}", label="forward",
                      error=RoundOutOfMemory)
    yield from backoff.chunks(run, patches, lambda: check(cancel))


@torch.no_grad()
def predicted_classes(model: nn.Module, patches: Sequence[Patch], mean: Sequence[float], std: Sequence[float],
                      device: torch.device, batch: int = 8,
                      cancel: CancelToken | None = None) -> Iterator[tuple[Sequence[Patch], np.ndarray]]:
    """(chunk, its class maps) of ``patches`` by ``model`` in eval mode, ``batch`` at a time."""
    was = model.training
    model.eval().to(device)
    stride = int(getattr(model, "stride", 32))

    def run(x: Tensor) -> np.ndarray:
        with torch.autocast(device.type, dtype=torch.float16, enabled=device.type == "cuda"):
            return predict_logits(model, x, stride).argmax(1).cpu().numpy()

    try:
        yield from oom_batches(patches, mean, std, device, batch, run, cancel)
    finally:
        model.train(was)


def class_maps(model: nn.Module, patches: Sequence[Patch], mean: Sequence[float], std: Sequence[float],
               device: torch.device, batch: int = 8, cancel: CancelToken | None = None) -> list[np.ndarray]:
    """The class map of each of ``patches`` by ``model`` (uint8)."""
    return [y.astype(np.uint8) for _, pred in predicted_classes(model, patches, mean, std, device, batch, cancel)
            for y in pred]


def heldout_scores(model: nn.Module, patches: Sequence[Patch], mean: Sequence[float],
                   std: Sequence[float], device: torch.device, class_names: Sequence[str],
                   batch: int = 8, cancel: CancelToken | None = None) -> dict[str, Any]:
    """mIoU, Dice, pixel accuracy over the labelled pixels of ``patches`` (one confusion matrix)."""
    cm = ConfusionMatrix(len(class_names))
    for chunk, pred in predicted_classes(model, patches, mean, std, device, batch, cancel):
        for p, y in zip(chunk, pred):
            cm.update(p.label, y)  # IGNORE (255) is outside the classes: not counted
    s = cm.summary(list(class_names))
    return {"miou": s["miou"], "dice": s["dice"], "pixel_accuracy": s["pixel_accuracy"],
            "pixels": s["pixels"], "per_class": s["per_class"]}

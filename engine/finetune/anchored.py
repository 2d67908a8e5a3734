"""Anchored fine-tuning: few-shot learning from corrections that keeps what the model knew.

The round's default method (``anchored``). What is frozen is computed once, then every step costs
only the trainable part:

- **Frozen encoder.** The student's encoder (and every normalisation layer's statistics) stays as
  the parent had it; only the decoder and the head learn. With a handful of corrected regions this
  is the few-shot regime where retraining the whole network overfits; it is also what makes a step
  cheap: the encoder's activations of every patch are computed once (:class:`FeatureCache`, fp16)
  and a step is the decoder's forward and backward alone (about 9x cheaper than a full step of the
  mobile-unet student on a CPU, measured: 1.06 s vs 9.1 s per batch of 8 at 256²).
- **The parent as the anchor.** The parent's logits are cached too. The loss is partial-label
  CE + Dice on the corrected pixels, plus pixel distillation (KL to the parent) everywhere nobody
  corrected: outside the ROIs on the correction patches, on unreviewed tissue patches of the same
  slides, and on a replay sample of the base training data (:mod:`engine.finetune.replay`).
- **The best step, not the last.** The held-out ROIs and the replay sample are scored from the
  cache every few steps; the kept decoder is the one with the best held-out mIoU among the steps
  that are not worse than the parent on the replay sample (step 0, the parent itself, included:
  when no step beats it, the round says so and changes nothing).
- **A wall-clock budget.** :class:`StepPlan` sizes the number of steps from the measured step and
  scoring times so that the round ends by its deadline, re-planning after every step; the ETA it
  reports is the time those steps take.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from engine.finetune.data import Patch
from engine.finetune.losses import IGNORE, masked_kd_loss, partial_label_loss
from engine.finetune.loop import RoundError, check, is_oom, normalise
from engine.jobs import CancelToken
from engine.training.metrics import ConfusionMatrix

#: The replay guard's tolerance: a version is "not worse" on the replay sample when its mIoU there
#: is at least the parent's minus this (the bench's target for every round, ``before − 0.005``).
REPLAY_TOLERANCE = 0.005
#: Fewest steps a round takes even when its budget is spent before training starts.
MIN_STEPS = 5
#: Held-out / replay scorings per round (besides the parent's, which comes from the cache).
SCORINGS = 6
#: Most patches of each set a round caches, by device (bounds the cache's memory, ~1 MB a patch in
#: fp16 for the mobile-unet at 256², and its build time: ~0.05 s a patch on 2 CPU cores).
CAPS = {"cpu": {"train": 96, "tissue": 48, "heldout": 64},
        "cuda": {"train": 384, "tissue": 192, "heldout": 256}}


def check_anchorable(model: nn.Module) -> None:
    for part in ("encoder", "decoder", "head"):
        if not isinstance(getattr(model, part, None), nn.Module):
            raise RoundError(f"the anchored method needs an encoder-decoder model; this one has no {part}")


@dataclass
class FeatureCache:
    """Encoder activations (fp16) and parent logits of a set of patches, with their labels.

    ``label``: supervision (class index, IGNORE where unknown); ``kd``: pixels where the parent is
    the target; ``truth``: what scores the set (held-out and replay), IGNORE where unknown.
    """

    feats: list[Tensor]  # per encoder output after the input: N×C×h×w, fp16
    parent: Tensor  # N×K×H×W fp16
    label: Tensor  # N×H×W uint8
    kd: Tensor  # N×H×W bool
    truth: Tensor  # N×H×W uint8

    def __len__(self) -> int:
        return int(self.parent.shape[0])

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.feats, self.parent, self.label, self.kd, self.truth))

    def batch(self, idx: Sequence[int], device: torch.device) -> list[Tensor]:
        i = torch.as_tensor(list(idx), dtype=torch.long)
        return [f.index_select(0, i).to(device).float() for f in self.feats]


@torch.no_grad()
def build_cache(model: nn.Module, patches: Sequence[Patch], mean: Sequence[float], std: Sequence[float],
                device: torch.device, *, supervise: bool, kd: str, batch: int = 8,
                cancel: CancelToken | None = None, on_batch: Callable[[int], None] | None = None) -> FeatureCache:
    """Run the frozen encoder and the parent over ``patches`` once.

    ``supervise``: the patches' labels are a training target (else only scored); ``kd``: where the
    parent is the target: ``"unlabelled"`` (pixels without a label), ``"labelled"`` (pixels with
    one: a replay tile, not its padding) or ``"none"``.
    """
    model.eval().to(device)
    feats: list[list[Tensor]] = []
    logits: list[Tensor] = []
    i, size = 0, max(1, batch)
    while i < len(patches):
        check(cancel)
        chunk = patches[i:i + size]
        x = torch.stack([normalise(p.rgb, mean, std) for p in chunk]).to(device)
        try:
            enc = model.encoder(x)
            out = model.head(model.decoder(enc))
        except Exception as exc:  # noqa: BLE001 - only out-of-memory is handled
            if not is_oom(exc) or size == 1:
                raise
            size //= 2
            if device.type == "cuda":
                torch.cuda.empty_cache()
            continue
        feats.append([f.half().cpu() for f in enc[1:]])
        logits.append(out.half().cpu())
        i += len(chunk)
        if on_batch is not None:
            on_batch(len(chunk))
    labels = torch.from_numpy(np.stack([p.label for p in patches])) if patches else torch.zeros(0, 1, 1, dtype=torch.uint8)
    unknown = labels == IGNORE
    if kd not in ("unlabelled", "labelled", "none"):
        raise ValueError(f"unknown kd region {kd!r}")
    kd_mask = unknown if kd == "unlabelled" else ~unknown if kd == "labelled" else torch.zeros_like(unknown)
    if not patches:
        return FeatureCache([], torch.zeros(0), labels, kd_mask, labels)
    return FeatureCache([torch.cat(level) for level in zip(*feats)], torch.cat(logits),
                        labels if supervise else torch.full_like(labels, IGNORE), kd_mask, labels)


def _decode(model: nn.Module, feats: list[Tensor]) -> Tensor:
    return model.head(model.decoder([feats[0], *feats]))  # the decoder never reads the input (index 0)


@torch.no_grad()
def score_cache(model: nn.Module | None, cache: FeatureCache, classes: Sequence[str], device: torch.device,
                batch: int = 16) -> dict[str, Any]:
    """mIoU / Dice over the labelled ``truth`` pixels; ``model`` None scores the cached parent."""
    cm = ConfusionMatrix(len(classes))
    truth = cache.truth.numpy()
    for i in range(0, len(cache), batch):
        idx = list(range(i, min(i + batch, len(cache))))
        if model is None:
            pred = cache.parent[idx].float().argmax(1).numpy()
        else:
            was = model.training
            model.eval()
            pred = _decode(model, cache.batch(idx, device)).argmax(1).cpu().numpy()
            model.train(was)
        for y, p in zip(truth[idx], pred):
            cm.update(y, p)
    s = cm.summary(list(classes))
    return {"miou": s["miou"], "dice": s["dice"], "pixel_accuracy": s["pixel_accuracy"],
            "pixels": s["pixels"], "per_class": s["per_class"]}


@dataclass
class StepPlan:
    """How many steps fit before ``deadline`` (seconds on ``clock``), re-planned as steps are timed.

    ``planned(step)`` is the total step count given what is measured so far: the time left, less a
    reserve for the final scoring and publishing, divided by the step time plus the share of a
    scoring each step carries. At least :data:`MIN_STEPS`, at most ``max_steps``; a fixed ``steps``
    overrides the budget.
    """

    deadline: float
    clock: Callable[[], float] = time.perf_counter
    steps: int | None = None
    max_steps: int = 2000
    step_s: float | None = None  # running mean of a step
    score_s: float = 0.0  # one scoring of held-out + replay
    reserve_s: float = 1.0  # publishing
    _n: int = 0
    total: int = field(default=MIN_STEPS)

    def record_step(self, seconds: float) -> None:
        self._n += 1
        self.step_s = seconds if self.step_s is None else self.step_s + (seconds - self.step_s) / self._n

    def planned(self, done: int) -> int:
        if self.steps is not None:
            self.total = self.steps
            return self.total
        if self.step_s is None:
            return max(self.total, done + 1)
        left = self.deadline - self.clock() - self.reserve_s - self.score_s
        per = self.step_s + self.score_s / max(1, math.ceil(max(self.total, MIN_STEPS) / SCORINGS))
        more = int(max(0.0, left) // max(per, 1e-6))
        self.total = int(min(self.max_steps, max(MIN_STEPS, done + more)))
        return self.total

    def eta(self, done: int) -> float:
        if self.step_s is None:
            return max(0.0, self.deadline - self.clock())
        left = self.total - done
        scorings = math.ceil(left / max(1, math.ceil(self.total / SCORINGS))) + 1
        return left * self.step_s + scorings * self.score_s + self.reserve_s


@dataclass
class Pools:
    """The round's cached patch sets."""

    train: FeatureCache  # correction patches: labels + KD outside the ROIs
    tissue: FeatureCache  # unreviewed tissue of the same slides: KD
    replay: FeatureCache  # base training data: KD (scored with its truth)
    heldout: FeatureCache  # held-out ROIs: scored only


@dataclass
class AnchoredResult:
    best_step: int
    steps: int
    before: dict[str, Any]
    after: dict[str, Any]
    replay_before: dict[str, Any] | None
    replay_after: dict[str, Any] | None
    curve: list[tuple[int, float, float | None]]  # (step, held-out mIoU, replay mIoU)
    seconds: float


class AnchoredTrainer:
    """Trains ``model``'s decoder and head on :class:`Pools` (see the module docstring)."""

    def __init__(self, model: nn.Module, pools: Pools, classes: Sequence[str], device: torch.device, *,
                 lr: float = 1e-3, batch_size: int = 8, kd_weight: float = 1.0, dice_weight: float = 1.0,
                 seed: int = 0, weight_decay: float = 1e-4) -> None:
        check_anchorable(model)
        self.model, self.pools, self.classes, self.device = model, pools, list(classes), device
        self.lr, self.batch_size, self.kd_weight, self.dice_weight = lr, batch_size, kd_weight, dice_weight
        self.seed = seed
        for p in model.parameters():
            p.requires_grad_(False)
        self.params = [p for part in (model.decoder, model.head) for p in part.parameters()]
        for p in self.params:
            p.requires_grad_(True)
        self.opt = torch.optim.AdamW(self.params, lr=lr, weight_decay=weight_decay)

    def _composition(self, batch: int) -> list[tuple[FeatureCache, int]]:
        """Half correction patches, the rest shared by tissue and replay (those present)."""
        p = self.pools
        others = [c for c in (p.tissue, p.replay) if len(c)]
        n_train = batch if not others else max(1, (batch + 1) // 2)
        rest = batch - n_train
        parts = [(p.train, n_train)]
        for j, c in enumerate(others):
            parts.append((c, rest // len(others) + (1 if j < rest % len(others) else 0)))
        return [(c, n) for c, n in parts if n]

    def step(self, step: int, total: int) -> dict[str, float]:
        rng = np.random.default_rng((self.seed, 104729, step))
        for g in self.opt.param_groups:
            g["lr"] = self.lr * (1 - step / max(total, 1)) ** 0.9
        self.model.eval()  # normalisation statistics stay the parent's
        self.opt.zero_grad(set_to_none=True)
        terms: dict[str, Tensor] = {}
        total_loss: Tensor | None = None
        parts = self._composition(self.batch_size)
        n_all = sum(n for _, n in parts)
        for cache, n in parts:
            idx = rng.integers(0, len(cache), n).tolist()
            logits = _decode(self.model, cache.batch(idx, self.device))
            i = torch.as_tensor(idx, dtype=torch.long)
            label = cache.label.index_select(0, i).to(self.device).long()
            loss = logits.new_zeros(())
            if (label != IGNORE).any():
                for k, v in partial_label_loss(logits, label, self.dice_weight).items():
                    terms[k] = terms.get(k, 0) + v.detach() * n / n_all
                    loss = loss + v
            mask = cache.kd.index_select(0, i).to(self.device)
            if self.kd_weight and bool(mask.any()):
                parent = cache.parent.index_select(0, i).to(self.device).float()
                kd = masked_kd_loss(logits, parent, mask)["loss_kd"] * self.kd_weight
                terms["loss_kd"] = terms.get("loss_kd", 0) + kd.detach() * n / n_all
                loss = loss + kd
            loss = loss * (n / n_all)
            loss.backward()
            total_loss = loss.detach() if total_loss is None else total_loss + loss.detach()
        self.opt.step()
        out = {k: float(v) for k, v in terms.items()}
        out["total"] = float(total_loss) if total_loss is not None else 0.0
        if not math.isfinite(out["total"]):
            raise RoundError(f"the loss became {out['total']} at step {step + 1}; lower the learning rate")
        return out

    def scores(self) -> tuple[dict[str, Any], dict[str, Any] | None]:
        held = score_cache(self.model, self.pools.heldout, self.classes, self.device)
        rep = score_cache(self.model, self.pools.replay, self.classes, self.device) if len(self.pools.replay) else None
        return held, rep

    def run(self, plan: StepPlan, cancel: CancelToken | None = None,
            on_step: Callable[[int, int, dict[str, float]], None] | None = None,
            on_score: Callable[[int, int, float, float | None], None] | None = None) -> AnchoredResult:
        t0 = plan.clock()
        before = score_cache(None, self.pools.heldout, self.classes, self.device)
        rep_before = score_cache(None, self.pools.replay, self.classes, self.device) if len(self.pools.replay) else None
        floor = None if rep_before is None else rep_before["miou"] - REPLAY_TOLERANCE
        best = (before["miou"], 0, before, rep_before, self._snapshot())
        curve: list[tuple[int, float, float | None]] = [(0, before["miou"], None if rep_before is None else rep_before["miou"])]
        step, total = 0, plan.planned(0)
        last_scored = 0
        while step < total:
            check(cancel)
            ts = plan.clock()
            terms = self.step(step, total)
            step += 1
            plan.record_step(plan.clock() - ts)
            total = plan.planned(step)
            if on_step is not None:
                on_step(step, total, terms)
            every = max(1, math.ceil(total / SCORINGS))
            if step - last_scored >= every or step >= total:
                tsc = plan.clock()
                held, rep = self.scores()
                plan.score_s = plan.clock() - tsc
                last_scored = step
                curve.append((step, held["miou"], None if rep is None else rep["miou"]))
                if on_score is not None:
                    on_score(step, total, held["miou"], None if rep is None else rep["miou"])
                eligible = floor is None or (rep is not None and rep["miou"] >= floor)
                if eligible and held["miou"] > best[0] + 1e-6:
                    best = (held["miou"], step, held, rep, self._snapshot())
                total = plan.planned(step)
        self._restore(best[4])
        return AnchoredResult(best[1], step, before, best[2], rep_before, best[3], curve, plan.clock() - t0)

    def _snapshot(self) -> dict[str, Tensor]:
        return {k: v.detach().clone() for part in ("decoder", "head")
                for k, v in getattr(self.model, part).state_dict(prefix=f"{part}.").items()}

    def _restore(self, snap: dict[str, Tensor]) -> None:
        self.model.load_state_dict(snap, strict=False)
        for p in self.model.parameters():
            p.requires_grad_(False)


def limit(patches: Sequence[Patch], n: int, seed: int) -> list[Patch]:
    """At most ``n`` of ``patches``, a seeded sample in their original order."""
    if len(patches) <= n:
        return list(patches)
    keep = sorted(np.random.default_rng((seed, 7)).permutation(len(patches))[:n].tolist())
    return [patches[i] for i in keep]


__all__ = ["CAPS", "AnchoredResult", "AnchoredTrainer", "FeatureCache", "Pools", "REPLAY_TOLERANCE", "StepPlan",
           "build_cache", "check_anchorable", "limit", "score_cache"]

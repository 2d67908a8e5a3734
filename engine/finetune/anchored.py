"""Anchored fine-tuning: few-shot learning from corrections that keeps what the model knew.

The round's default method (``anchored``). What is frozen is computed once, then every step costs
only the trainable part:

- **A frozen front.** The student's encoder, its first decoder blocks and every normalisation
  layer's statistics stay as the parent had them; only the last decoder blocks (two by default)
  and the head learn. With a handful of corrected regions this is the few-shot regime where
  retraining the whole network overfits; it is also what makes a step cheap: the front's
  activations of every patch are computed once (:class:`FeatureCache`, fp16) and a step is the
  last blocks' forward and backward alone (measured on 2 CPU cores, batch of 8 at 256², mobile-unet:
  a full step 9.1 s, the whole decoder 1.06 s, the last two blocks and the head 0.88 s, under load).
- **The parent as the anchor.** The parent's logits are cached too. The loss is partial-label
  CE + Dice on the corrected pixels, plus pixel distillation (KL to the parent) everywhere nobody
  corrected: outside the ROIs on the correction patches, on unreviewed tissue patches of the same
  slides, and on a replay sample of the base training data (:mod:`engine.finetune.replay`), whose
  true masks are a target as well (measured on the benchmark's slide: with distillation alone
  every step that gained on the held-out ROIs lost 0.02-0.07 mIoU on the base data's validation
  tiles; with their masks too, a step gained +0.04 there at -0.004).
- **Every kind of correction as much.** The correction patches are drawn kind by kind (the slide
  and the classes a patch labels, :func:`patch_strata`) and each one's cross-entropy is the mean
  over its own labelled pixels, so a few thin background ROIs on septa beside large tumour boxes are
  learnt (measured on tcga-cr-7395 with three septa marked, two held out: drawn patch by patch, the
  trained septum stayed 70 % tumour and the slide 65 %; kind by kind, 44 % and 50 %).
- **The best step, not the last.** The held-out ROIs and the replay check (tiles of the base
  data's *validation* cases, never trained on) are scored from the cache every few steps; the
  kept weights are those with the best held-out mIoU among the steps that are not worse than the
  parent on the replay check (step 0, the parent itself, included). When the held-out's best step
  lost on the replay check, blends of its weights with the parent's (:data:`BLENDS`, WiSE-FT) are
  scored too, and the best blend that passes the replay check is kept if it beats every passing
  step. When nothing that gained on the held-out ROIs passes, the held-out's best is kept and
  published *not activated* (the guard says why; the pathologist may still accept it, after a
  second question); when no step gained at all, the round says so and publishes nothing.
- **New output classes.** A class the pathologist asks for that the model lacks (Stroma, …) gets
  a new channel in the head (:func:`grow_head`: a copy of the background's, a little less likely,
  so the parent's mask is unchanged at step 0). Where only the parent's classes exist — its cached
  logits, the replay tiles' masks, the replay check — the new class counts as background
  (:func:`merged_log_probs`): what it takes is learnt from the corrections alone.
- **A wall-clock budget.** :class:`StepPlan` sizes the number of steps from the measured step and
  scoring times so that the round ends by its deadline, re-planning after every step; the ETA it
  reports is the time those steps take.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from engine.finetune.data import Patch
from engine.finetune.losses import IGNORE, masked_kd_loss, partial_label_loss
from engine.finetune.loop import RoundError, RoundOutOfMemory, check, oom_batches, oom_hint
from engine.jobs import CancelToken
from engine.oom import Backoff
from engine.training.metrics import ConfusionMatrix

#: The replay guard's tolerance: a version is "not worse" on the replay sample when its mIoU there
#: is at least the parent's minus this (the bench's target for every round, ``before − 0.005``).
REPLAY_TOLERANCE = 0.005
#: Weight of the pixel distillation to the parent, by patch set (see :class:`Pools`). The replay
#: tiles weigh twice and take 40 % of a batch (:data:`SHARES`). Measured on ``bench finetune``
#: (k = 10, seed 0, both strategies): with weight 1 and a quarter of the batch, every step that
#: gained on the held-out ROIs lost 0.01-0.09 mIoU on the replay check from the first scoring on
#: (both versions refused); with these, some gaining steps stayed within 0.005 (both activated).
#: Fewer learning blocks (1), a lower learning rate (3e-4), an average of the weights (EMA 0.95)
#: or a larger replay sample (64) did no better. With these and :data:`BLENDS`, over the whole
#: benchmark (k = 1, 3, 10, 3 seeds) 13 of 17 new versions were activated, where 2 of 17 were.
KD_WEIGHTS = {"train": 1.0, "tissue": 1.0, "replay": 2.0}
#: Share of a batch drawn from each patch set (among those present).
SHARES = {"train": 0.4, "tissue": 0.2, "replay": 0.4}
#: Steps of linear learning-rate warm-up (Adam's first steps are otherwise full-size jumps).
WARMUP = 5
#: Fewest steps a round takes even when its budget is spent before training starts.
MIN_STEPS = 5
#: Held-out / replay scorings per round (besides the parent's, which comes from the cache).
SCORINGS = 10
#: Weight-space blends tried when every step that gained on the held-out ROIs lost on the replay
#: check: the share of the fine-tuned weights in (1 − a)·parent + a·fine-tuned, largest first.
BLENDS = (0.75, 0.5, 0.35, 0.2)
#: Most patches of each set a round caches, by device (bounds the cache's memory, ~1 MB a patch in
#: fp16 for the mobile-unet at 256², and its build time: ~0.05 s a patch on 2 CPU cores).
CAPS = {"cpu": {"train": 96, "tissue": 48, "heldout": 64},
        "cuda": {"train": 384, "tissue": 192, "heldout": 256}}


def check_anchorable(model: nn.Module) -> None:
    for part in ("encoder", "decoder", "head"):
        if not isinstance(getattr(model, part, None), nn.Module):
            raise RoundError(f"the anchored method needs an encoder-decoder model; this one has no {part}")
    if not hasattr(model.decoder, "run") or not hasattr(model.decoder, "blocks"):
        raise RoundError("the anchored method needs a U-Net decoder (blocks that can run from any one)")


def first_trainable(model: nn.Module, blocks: int) -> int:
    """The index of the first decoder block that learns when the last ``blocks`` do (0: all)."""
    n = len(model.decoder.blocks)
    return max(0, n - max(0, int(blocks)))


@dataclass
class FeatureCache:
    """What the frozen front computes for a set of patches (fp16), the parent's logits, and labels.

    ``feats``: the input of the first trainable decoder block, then the skip features of the blocks
    from there on (``has_skip`` says which blocks take one). ``label``: supervision (class index,
    IGNORE where unknown); ``kd``: pixels where the parent is the target; ``truth``: what scores the
    set (held-out and replay), IGNORE where unknown.
    """

    feats: list[Tensor]  # N×C×h×w each, fp16
    has_skip: tuple[bool, ...]
    parent: Tensor  # N×K×H×W fp16
    label: Tensor  # N×H×W uint8
    kd: Tensor  # N×H×W bool
    truth: Tensor  # N×H×W uint8
    strata: list[list[int]] = field(default_factory=list)  # patches by kind (see :func:`patch_strata`)

    def __len__(self) -> int:
        return int(self.parent.shape[0])

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.feats, self.parent, self.label, self.kd, self.truth))

    def batch(self, idx: Sequence[int], device: torch.device) -> list[Tensor]:
        i = torch.as_tensor(list(idx), dtype=torch.long)
        return [f.index_select(0, i).to(device).float() for f in self.feats]


#: How much less likely (in logits) a new output class starts than the background it is copied from.
NEW_CLASS_OFFSET = 1.0


@torch.no_grad()
def grow_head(model: nn.Module, extra: int, like: int = 0) -> None:
    """Add ``extra`` output classes to ``model``'s head, each a copy of class ``like``'s filter with
    its bias lowered by :data:`NEW_CLASS_OFFSET` (so the argmax, the parent's mask, is unchanged);
    the model's ``classes`` and ``config`` follow, so the saved version rebuilds as it is."""
    if extra <= 0:
        return
    old: nn.Conv2d = model.head
    k = old.out_channels
    new = nn.Conv2d(old.in_channels, k + extra, old.kernel_size, stride=old.stride, padding=old.padding,
                    bias=old.bias is not None).to(old.weight.device, old.weight.dtype)
    new.weight[:k] = old.weight
    new.weight[k:] = old.weight[like]
    if old.bias is not None:
        new.bias[:k] = old.bias
        new.bias[k:] = old.bias[like] - NEW_CLASS_OFFSET
    model.head = new
    model.classes = k + extra
    if isinstance(getattr(model, "config", None), dict):
        model.config = {**model.config, "classes": k + extra}


def merged_log_probs(logits: Tensor, merge: Sequence[int] | Tensor, classes: int) -> Tensor:
    """Log-probabilities over ``classes`` classes from ``logits`` over more: class ``i`` of the
    logits counts as class ``merge[i]`` (log-sum-exp of the log-softmax within each group)."""
    log_p = F.log_softmax(logits.float(), dim=1)
    index = torch.as_tensor(list(merge) if not torch.is_tensor(merge) else merge, device=logits.device)
    return torch.stack([torch.logsumexp(log_p[:, index == j], dim=1) for j in range(classes)], dim=1)


def _front(model: nn.Module, x: Tensor, first: int) -> tuple[list[Tensor], tuple[bool, ...], Tensor]:
    """The frozen part on ``x``: the cached features and the parent's logits."""
    dec = model.decoder
    pyramid = model.encoder(x)
    skips = dec.skips(pyramid)
    h = dec.run(pyramid[-1], skips[:first], 0, first)
    rest = skips[first:]
    logits = model.head(dec.run(h, rest, first))
    return [h, *[t for t in rest if t is not None]], tuple(t is not None for t in rest), logits


def _decode(model: nn.Module, first: int, feats: list[Tensor], has_skip: Sequence[bool]) -> Tensor:
    it = iter(feats[1:])
    skips = [next(it) if flag else None for flag in has_skip]
    return model.head(model.decoder.run(feats[0], skips, first))


@torch.no_grad()
def build_cache(model: nn.Module, patches: Sequence[Patch], mean: Sequence[float], std: Sequence[float],
                device: torch.device, *, supervise: bool, kd: str, first: int = 0, batch: int = 8,
                cancel: CancelToken | None = None, on_batch: Callable[[int], None] | None = None) -> FeatureCache:
    """Run the frozen front (encoder and decoder blocks before ``first``) and the parent once.

    ``supervise``: the patches' labels are a training target (else only scored); ``kd``: where the
    parent is the target: ``"unlabelled"`` (pixels without a label), ``"labelled"`` (pixels with
    one: a replay tile, not its padding) or ``"none"``.
    """
    if kd not in ("unlabelled", "labelled", "none"):
        raise ValueError(f"unknown kd region {kd!r}")
    model.eval().to(device)
    feats: list[list[Tensor]] = []
    logits: list[Tensor] = []
    has_skip: tuple[bool, ...] = ()
    for chunk, (front, has_skip, out) in oom_batches(patches, mean, std, device, batch,
                                                     lambda x: _front(model, x, first), cancel):
        feats.append([f.half().cpu() for f in front])
        logits.append(out.half().cpu())
        if on_batch is not None:
            on_batch(len(chunk))
    if not patches:
        empty = torch.zeros(0, 1, 1, dtype=torch.uint8)
        return FeatureCache([], (), torch.zeros(0), empty, empty.bool(), empty)
    labels = torch.from_numpy(np.stack([p.label for p in patches]))
    unknown = labels == IGNORE
    kd_mask = unknown if kd == "unlabelled" else ~unknown if kd == "labelled" else torch.zeros_like(unknown)
    return FeatureCache([torch.cat(level) for level in zip(*feats)], has_skip, torch.cat(logits),
                        labels if supervise else torch.full_like(labels, IGNORE), kd_mask, labels,
                        patch_strata(patches) if supervise else [])


def draw(cache: FeatureCache, n: int, rng: np.random.Generator, by_kind: bool = False) -> list[int]:
    """``n`` patch indices of ``cache`` at random; ``by_kind``: each of its :attr:`~FeatureCache.strata`
    as often, then a patch of it at random (every patch when it has no strata)."""
    if not by_kind or not cache.strata:
        return rng.integers(0, len(cache), n).tolist()
    kinds = rng.integers(0, len(cache.strata), n)
    return [cache.strata[k][int(rng.integers(0, len(cache.strata[k])))] for k in kinds]


#: Least share of a patch's labelled pixels for a class to make the patch's kind.
STRATUM_SHARE = 0.02


def patch_strata(patches: Sequence[Patch]) -> list[list[int]]:
    """The patches' indices grouped by kind: the slide and the classes labelled on at least
    :data:`STRATUM_SHARE` of its labelled pixels (patches with no label are left out).

    A round draws its correction patches kind by kind, each kind as often (:class:`AnchoredTrainer`):
    drawn patch by patch, three thin septa a pathologist marked as background on a carcinoma were
    about one patch in twenty of the round, beside large tumour boxes and another slide's ROIs, and
    the round never learnt them (70 % of the trained septum still called tumour)."""
    groups: dict[tuple[int, tuple[int, ...]], list[int]] = {}
    for i, p in enumerate(patches):
        lab = p.label[p.label != IGNORE]
        if not lab.size:
            continue
        counts = np.bincount(lab.astype(np.int64))
        kind = tuple(int(c) for c in np.flatnonzero(counts >= STRATUM_SHARE * lab.size))
        groups.setdefault((p.slide_id, kind), []).append(i)
    return [groups[k] for k in sorted(groups)]


@torch.no_grad()
def score_cache(model: nn.Module | None, cache: FeatureCache, classes: Sequence[str], device: torch.device,
                batch: int = 16, first: int = 0, merge: Sequence[int] | None = None) -> dict[str, Any]:
    """mIoU / Dice over the labelled ``truth`` pixels; ``model`` None scores the cached parent.
    ``merge``: the model's class ``i`` is scored as ``classes[merge[i]]`` (a new output class on
    data that knows only the parent's classes)."""
    cm = ConfusionMatrix(len(classes))
    truth = cache.truth.numpy()
    lut = None if merge is None else np.asarray(merge, dtype=np.int64)
    for chunk, pred in cached_classes(model, cache, device, batch, first):
        for y, p in zip(truth[list(chunk)], pred if lut is None or model is None else lut[pred]):
            cm.update(y, p)
    s = cm.summary(list(classes))
    return {"miou": s["miou"], "dice": s["dice"], "pixel_accuracy": s["pixel_accuracy"],
            "pixels": s["pixels"], "per_class": s["per_class"]}


@torch.no_grad()
def cached_classes(model: nn.Module | None, cache: FeatureCache, device: torch.device, batch: int = 16,
                   first: int = 0) -> Iterator[tuple[Sequence[int], np.ndarray]]:
    """(indices, class maps) of the cached patches, ``batch`` at a time, by ``model``'s trainable
    part on the cached features; ``model`` None: by the cached parent."""
    def predict(idx: list[int]) -> np.ndarray:
        if model is None:
            return cache.parent[idx].float().argmax(1).numpy()
        was = model.training
        model.eval()
        try:
            return _decode(model, first, cache.batch(idx, device), cache.has_skip).argmax(1).cpu().numpy()
        finally:
            model.train(was)

    backoff = Backoff(batch, f"scoring: out of memory even with one patch at a time; {oom_hint(device)}",
                      label="scoring", error=RoundOutOfMemory)
    yield from backoff.chunks(lambda c: predict(list(c)), range(len(cache)))


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
    final_scorings: int = 0  # scorings after the last step (the blends)
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
        left = self.deadline - self.clock() - self.reserve_s - self.score_s * (1 + self.final_scorings)
        per = self.step_s + self.score_s / max(1, math.ceil(max(self.total, MIN_STEPS) / SCORINGS))
        more = int(max(0.0, left) // max(per, 1e-6))
        self.total = int(min(self.max_steps, max(MIN_STEPS, done + more)))
        return self.total

    def eta(self, done: int) -> float:
        if self.step_s is None:
            return max(0.0, self.deadline - self.clock())
        left = self.total - done
        scorings = math.ceil(left / max(1, math.ceil(self.total / SCORINGS))) + 1
        return left * self.step_s + (scorings + self.final_scorings) * self.score_s + self.reserve_s


@dataclass
class Pools:
    """The round's cached patch sets."""

    train: FeatureCache  # correction patches: labels + KD outside the ROIs
    tissue: FeatureCache  # unreviewed tissue of the same slides: KD
    replay: FeatureCache  # tiles of the base training data: KD
    heldout: FeatureCache  # held-out ROIs: scored only
    check: FeatureCache  # other tiles of the base training data: scored only (the replay guard)


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
    passed_replay: bool = True  # False: no step gained without losing on the replay check; the
    # kept step is the held-out's best, worse on the replay check
    blend: float = 1.0  # the kept step's share in a blend with the parent's weights (1: not blended)
    blends: list[tuple[float, float, float | None]] = field(default_factory=list)  # (a, held-out, replay) tried


class AnchoredTrainer:
    """Trains the head and the decoder blocks from ``first`` on (see the module docstring); the
    pools must have been cached with the same ``first``."""

    def __init__(self, model: nn.Module, pools: Pools, classes: Sequence[str], device: torch.device, *,
                 first: int = 0, lr: float = 1e-3, batch_size: int = 8,
                 kd_weights: dict[str, float] | None = None, shares: dict[str, float] | None = None,
                 dice_weight: float = 1.0, seed: int = 0,
                 weight_decay: float = 1e-4, merge: Sequence[int] | None = None) -> None:
        """``classes``: the model's (new output classes included); ``merge``: with new classes, the
        parent's class that stands for each of the model's (see :func:`merged_log_probs`): the
        parent's logits, the replay tiles and the replay check know only the parent's classes."""
        check_anchorable(model)
        self.model, self.pools, self.classes, self.device = model, pools, list(classes), device
        self.merge = None if merge is None else list(merge)
        self.parent_classes = self.classes if merge is None else self.classes[:max(merge) + 1]
        self.lr, self.batch_size, self.dice_weight = lr, batch_size, dice_weight
        self.kd_weights = {**KD_WEIGHTS, **(kd_weights or {})}
        self.shares = {**SHARES, **(shares or {})}
        self.seed, self.first = seed, first
        for p in model.parameters():
            p.requires_grad_(False)
        self.trained = [*list(model.decoder.blocks)[first:], model.head]
        self.params = [p for m in self.trained for p in m.parameters()]
        for p in self.params:
            p.requires_grad_(True)
        self.opt = torch.optim.AdamW(self.params, lr=lr, weight_decay=weight_decay)

    def _composition(self, batch: int) -> list[tuple[str, FeatureCache, int]]:
        """Patches of each set in a batch, by :data:`SHARES` among the sets present (at least one
        correction patch; largest remainders first)."""
        p = self.pools
        present = [(name, c) for name, c in (("train", p.train), ("tissue", p.tissue), ("replay", p.replay))
                   if len(c)]
        weights = {name: self.shares.get(name, 0.0) for name, _ in present}
        norm = sum(weights.values()) or 1.0
        exact = {name: batch * w / norm for name, w in weights.items()}
        counts = {name: int(v) for name, v in exact.items()}
        for name in sorted(exact, key=lambda n: exact[n] - counts[n], reverse=True)[:batch - sum(counts.values())]:
            counts[name] += 1
        if counts.get("train", 0) == 0:
            donor = max(counts, key=counts.get)
            counts[donor] -= 1
            counts["train"] = 1
        return [(name, c, counts[name]) for name, c in present if counts[name]]

    def step(self, step: int, total: int) -> dict[str, float]:
        rng = np.random.default_rng((self.seed, 104729, step))
        for g in self.opt.param_groups:
            g["lr"] = self.lr * min(1.0, (step + 1) / WARMUP) * (1 - step / max(total, 1)) ** 0.9
        self.model.eval()  # normalisation statistics stay the parent's
        self.opt.zero_grad(set_to_none=True)
        terms: dict[str, Tensor] = {}
        total_loss: Tensor | None = None
        parts = self._composition(self.batch_size)
        n_all = sum(n for _, _, n in parts)
        for name, cache, n in parts:
            idx = draw(cache, n, rng, by_kind=name == "train")
            logits = _decode(self.model, self.first, cache.batch(idx, self.device), cache.has_skip)
            i = torch.as_tensor(idx, dtype=torch.long)
            label = cache.label.index_select(0, i).to(self.device).long()
            loss = logits.new_zeros(())
            # what knows only the parent's classes sees the new ones as the class they stand for
            merged = (logits if self.merge is None else
                      merged_log_probs(logits, self.merge, len(self.parent_classes)))
            if (label != IGNORE).any():
                target = merged if name == "replay" else logits  # replay masks: the parent's classes
                # a correction patch counts as much as another, however few pixels it labels
                for k, v in partial_label_loss(target, label, self.dice_weight,
                                               per_image=name == "train").items():
                    terms[k] = terms.get(k, 0) + v.detach() * n / n_all
                    loss = loss + v
            mask = cache.kd.index_select(0, i).to(self.device)
            weight = self.kd_weights[name]
            if weight and bool(mask.any()):
                parent = cache.parent.index_select(0, i).to(self.device).float()
                kd = masked_kd_loss(merged, parent, mask)["loss_kd"] * weight
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

    def _step_at(self, batch_size: int, step: int, total: int) -> dict[str, float]:
        self.batch_size = batch_size  # halved after running out of memory (see run): for good
        return self.step(step, total)

    def scores(self) -> tuple[dict[str, Any], dict[str, Any] | None]:
        held = score_cache(self.model, self.pools.heldout, self.classes, self.device, first=self.first)
        rep = (score_cache(self.model, self.pools.check, self.parent_classes, self.device, first=self.first,
                           merge=self.merge) if len(self.pools.check) else None)
        return held, rep

    def run(self, plan: StepPlan, cancel: CancelToken | None = None,
            on_step: Callable[[int, int, dict[str, float]], None] | None = None,
            on_score: Callable[[int, int, float, float | None], None] | None = None) -> AnchoredResult:
        t0 = plan.clock()
        before = score_cache(None, self.pools.heldout, self.classes, self.device)
        rep_before = (score_cache(None, self.pools.check, self.parent_classes, self.device)
                      if len(self.pools.check) else None)
        floor = None if rep_before is None else rep_before["miou"] - REPLAY_TOLERANCE
        plan.final_scorings = len(BLENDS) if floor is not None else 0
        parent = self._snapshot()
        best = (before["miou"], 0, before, rep_before, parent)
        best_any = best  # the best on the held-out ROIs whatever the replay check says
        curve: list[tuple[int, float, float | None]] = [(0, before["miou"], None if rep_before is None else rep_before["miou"])]
        step, total = 0, plan.planned(0)
        last_scored = 0
        backoff = Backoff(self.batch_size, f"training: out of memory even with a batch of one patch; "
                          f"{oom_hint(self.device)}", label="anchored step", error=RoundOutOfMemory)
        while step < total:
            check(cancel)
            ts = plan.clock()
            terms = backoff.call(lambda size: self._step_at(size, step, total))
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
                elif not eligible and held["miou"] > max(best_any[0], best[0]) + 1e-6:
                    best_any = (held["miou"], step, held, rep, self._snapshot())
                total = plan.planned(step)
        blend, blends = 1.0, []
        if floor is not None and best_any[1] and best_any[0] > best[0] + 1e-6:
            best, blend, blends = self._blend(parent, best, best_any, floor, cancel)
        # a step that passes the replay check if there is one; else the held-out's best, which the
        # guard will refuse to activate (published, so the pathologist can see it and decide)
        kept = best if best[1] or not best_any[1] else best_any
        self._restore(kept[4])
        return AnchoredResult(kept[1], step, before, kept[2], rep_before, kept[3], curve, plan.clock() - t0,
                              passed_replay=kept is best, blend=blend if kept is best else 1.0, blends=blends)

    def _blend(self, parent: list[dict[str, Tensor]], best: tuple, best_any: tuple, floor: float,
               cancel: CancelToken | None) -> tuple[tuple, float, list[tuple[float, float, float | None]]]:
        """Weight-space blends of the parent and the held-out's best step (WiSE-FT, Wortsman et
        al. 2022): ``(1 − a)·parent + a·step`` for ``a`` in :data:`BLENDS`. Where the step gained
        on the held-out ROIs and lost on the replay check, a blend often keeps much of the gain and
        none of the loss (measured on ``bench finetune``); the best blend that passes the replay
        check and beats ``best`` on the held-out ROIs replaces it. Returns (best, its a, every blend
        tried)."""
        tried: list[tuple[float, float, float | None]] = []
        kept, share = best, 1.0
        for a in BLENDS:
            check(cancel)
            mixed = [{k: (torch.lerp(p0[k].float(), p1[k].float(), a).to(p1[k].dtype)
                          if p1[k].is_floating_point() else p1[k]) for k in p1}
                     for p0, p1 in zip(parent, best_any[4])]
            self._restore(mixed)
            held, rep = self.scores()
            tried.append((a, held["miou"], None if rep is None else rep["miou"]))
            if rep is not None and rep["miou"] >= floor and held["miou"] > kept[0] + 1e-6:
                kept, share = (held["miou"], best_any[1], held, rep, mixed), a
        return kept, share, tried

    def _snapshot(self) -> list[dict[str, Tensor]]:
        return [{k: v.detach().clone() for k, v in m.state_dict().items()} for m in self.trained]

    def _restore(self, snap: list[dict[str, Tensor]]) -> None:
        for m, state in zip(self.trained, snap):
            m.load_state_dict(state)
        for p in self.model.parameters():
            p.requires_grad_(False)


def limit(patches: Sequence[Patch], n: int, seed: int) -> list[Patch]:
    """At most ``n`` of ``patches``, a seeded sample in their original order."""
    if len(patches) <= n:
        return list(patches)
    keep = sorted(np.random.default_rng((seed, 7)).permutation(len(patches))[:n].tolist())
    return [patches[i] for i in keep]


__all__ = ["CAPS", "AnchoredResult", "AnchoredTrainer", "FeatureCache", "Pools", "REPLAY_TOLERANCE", "StepPlan",
           "build_cache", "cached_classes", "check_anchorable", "first_trainable", "grow_head", "limit", "merged_log_probs",
           "score_cache"]

"""The training loop shared by teacher training and distillation.

An *objective* is an ``nn.Module`` whose ``forward(images, target)`` returns a dict of terms with a
``total`` to minimise, and which offers ``trainable_parameters()``, ``after_step()``, ``prepare(...)``,
``ddp_ignored_names()`` and ``network`` (the model to save): :class:`SupervisedObjective` for a
teacher, :class:`engine.distill.distiller.Distiller` for a student.

The loop is step-based and deterministic (seeded model init by the caller, seeded sampler, per-sample
augmentation seeded by (seed, epoch, index)); under ``torchrun`` it uses DistributedDataParallel and
a DistributedSampler, so N processes see the same global batch as one process. It emits
:class:`~engine.jobs.Progress`, stops cleanly when a :class:`~engine.jobs.CancelToken` is set
(saving a resumable state), and resumes from that state. CUDA: AMP (fp16 + GradScaler) and
channels_last; CPU: fp32 (bf16 autocast is ~10× slower on CPUs without bf16 instructions).
"""

from __future__ import annotations

import logging
import math
import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from engine.distill.losses.segmentation import segmentation_loss
from engine.jobs import CancelToken, Progress, Result
from engine.training.checkpoints import load_training_state, save_training_state

log = logging.getLogger(__name__)
ProgressFn = Callable[[Progress], None]


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 1000
    batch_size: int = 8  # global batch (split across processes)
    lr: float = 1e-3
    weight_decay: float = 1e-4
    seed: int = 0
    log_every: int = 10
    state_every: int = 0  # steps between resumable states (0: only when cancelled)
    device: str = "auto"
    workers: int = 0


class SupervisedObjective(nn.Module):
    """Cross-entropy + Dice on labels: the teacher's (and the plain student's) objective. A subclass
    may swap ``loss`` (same signature, ``loss_*`` terms), e.g. for partial labels."""

    loss = staticmethod(segmentation_loss)

    def __init__(self, model: nn.Module, dice_weight: float = 1.0) -> None:
        super().__init__()
        self.model = model
        self.dice_weight = dice_weight

    @property
    def network(self) -> nn.Module:
        return self.model

    def forward(self, images: Tensor, target: Tensor) -> dict[str, Tensor]:
        terms = self.loss(self.model(images), target, self.dice_weight)
        terms["total"] = sum(v for k, v in terms.items() if k.startswith("loss"))  # type: ignore[assignment]
        return terms

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def after_step(self) -> dict[str, float]:
        return {}

    def prepare(self, *_a: object, **_k: object) -> dict[str, float]:
        return {}

    def ddp_ignored_names(self) -> list[str]:
        return []


@dataclass(frozen=True)
class TrainSummary:
    result: Result
    history: tuple[dict[str, float], ...]  # per step, averaged over processes
    steps_done: int


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def distributed() -> tuple[int, int]:
    """(rank, world size); initialises the process group under torchrun (gloo on CPU, nccl on CUDA)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return torch.device("cpu")
    return torch.device(name)


def poly_lr(base: float, step: int, total: int) -> float:
    return base * (1 - step / max(total, 1)) ** 0.9


def amp_step(module: nn.Module, opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
             images: Tensor, target: Tensor, device: torch.device,
             teacher: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
    """One optimisation step on a batch: to ``device`` (channels_last on CUDA), forward under
    autocast (fp16 on CUDA, none on CPU), the scaled ``total`` backward, optimiser step; the terms.
    ``teacher``: the batch's stored teacher outputs (a crop bank), passed on to the objective."""
    cuda = device.type == "cuda"
    images, target = images.to(device, non_blocking=True), target.to(device, non_blocking=True)
    if cuda:
        images = images.contiguous(memory_format=torch.channels_last)
    kw = {"teacher": {k: v.to(device, non_blocking=True) for k, v in teacher.items()}} if teacher else {}
    with torch.autocast(device.type, dtype=torch.float16, enabled=cuda):
        terms = module(images, target, **kw)
    opt.zero_grad(set_to_none=True)
    scaler.scale(terms["total"]).backward()
    scaler.step(opt)
    scaler.update()
    return terms


def _batches(sampler: DistributedSampler, dataset: Dataset, epoch: int, local_bs: int) -> list[list[int]]:
    sampler.set_epoch(epoch)
    dataset.set_epoch(epoch)
    idx = list(sampler)
    return [idx[i:i + local_bs] for i in range(0, len(idx) - local_bs + 1, local_bs)]


def image_stream(dataset: Dataset, batch_size: int, seed: int) -> Iterator[Tensor | tuple[Tensor, dict]]:
    """Endless batches of images (for unsupervised pre-training such as the paraphraser's); from a
    crop bank, (images, stored teacher outputs) pairs."""
    g = torch.Generator().manual_seed(seed + 7919)
    while True:
        perm = torch.randperm(len(dataset), generator=g).tolist()
        for i in range(0, len(perm) - batch_size + 1, batch_size):
            items = [dataset[j] for j in perm[i:i + batch_size]]
            images = torch.stack([it[0] for it in items])
            if len(items[0]) > 2:
                yield images, {k: torch.stack([it[2][k] for it in items]) for k in items[0][2]}
            else:
                yield images


def train(
    objective: nn.Module, dataset: Dataset, cfg: TrainConfig, *, progress: ProgressFn | None = None,
    cancel: CancelToken | None = None, state_path: Path | None = None, resume: bool = False,
) -> TrainSummary:
    """Optimise ``objective`` for ``cfg.steps`` steps; returns the per-step history and a Result."""
    rank, world = distributed()
    device = pick_device(cfg.device)
    cuda = device.type == "cuda"
    if cfg.batch_size % world:
        raise ValueError(f"batch size {cfg.batch_size} does not split across {world} processes")
    local_bs = cfg.batch_size // world
    sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=cfg.seed, drop_last=True)
    per_epoch = len(sampler) // local_bs
    if per_epoch == 0:
        raise ValueError(f"{len(dataset)} training images are fewer than one batch of {cfg.batch_size}")
    objective.to(device)
    if cuda:
        objective.to(memory_format=torch.channels_last)
    objective.train()
    emit = progress if (progress is not None and rank == 0) else None
    prep = objective.prepare((_to(x, device) for x in image_stream(dataset, local_bs, cfg.seed)), cancel, emit)
    params = objective.trainable_parameters()
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    start, before, t_run = 0, 0.0, time.perf_counter()
    if resume and state_path is not None and Path(state_path).is_file():
        saved = load_training_state(Path(state_path), objective, opt)
        start, before = int(saved["step"]), float(saved.get("seconds") or 0.0)
        log.info("resuming at step %d from %s", start, state_path)

    def so_far() -> dict[str, float]:  # the state's record: steps and training time over every resume
        return {"step": step, "seconds": before + time.perf_counter() - t_run}
    module: nn.Module = objective
    if world > 1 and cuda:
        # One set of BatchNorm statistics across processes (the CPU/gloo path cannot: torch's
        # SyncBatchNorm is GPU-only, so CPU data parallelism keeps per-process BN statistics).
        objective = nn.SyncBatchNorm.convert_sync_batchnorm(objective)
        module = objective
    if world > 1:
        ignored = objective.ddp_ignored_names()
        if ignored:
            nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(objective, ignored)
        module = nn.parallel.DistributedDataParallel(objective, device_ids=[device.index] if cuda else None)
    scaler = torch.amp.GradScaler("cuda", enabled=cuda)
    history: list[dict[str, float]] = []
    batches: list[list[int]] = []
    step = start
    status = "done"
    while step < cfg.steps:
        epoch, b = divmod(step, per_epoch)
        if b == 0 or not batches:
            batches = _batches(sampler, dataset, epoch, local_bs)
        loader = DataLoader(dataset, batch_sampler=batches[b:], num_workers=cfg.workers, pin_memory=cuda)
        for images, target, *stored in loader:
            if cancel is not None and cancel.cancelled:
                status = "cancelled"
                break
            for g in opt.param_groups:
                g["lr"] = poly_lr(cfg.lr, step, cfg.steps)
            terms = amp_step(module, opt, scaler, images, target, device, stored[0] if stored else None)
            extra = objective.after_step()
            logged = _reduce({k: v.detach().float() for k, v in terms.items()}, world)
            logged.update(extra)
            if not math.isfinite(logged["total"]):
                raise FloatingPointError(f"loss became {logged['total']} at step {step}; lower the learning rate")
            history.append(logged)
            step += 1
            if step % cfg.log_every == 0 or step == cfg.steps:
                log.info("step %d/%d total %.4f", step, cfg.steps, logged["total"])
                if emit:
                    emit(Progress("train", step, cfg.steps, logged))
            if state_path is not None and cfg.state_every and step % cfg.state_every == 0 and rank == 0:
                save_training_state(Path(state_path), objective, opt, so_far())
            if step >= cfg.steps:
                break
        if status == "cancelled":
            break
        batches = []
    if state_path is not None and rank == 0:
        if status == "cancelled":
            save_training_state(Path(state_path), objective, opt, so_far())
        elif Path(state_path).is_file():
            Path(state_path).unlink()  # finished: the checkpoint the caller writes supersedes it
    # training time over every resume, and the part of it earlier processes spent
    metrics = {"steps": float(step), "train_seconds": so_far()["seconds"], "resumed_seconds": before, **prep}
    if history:
        metrics["final_loss"] = history[-1]["total"]
    return TrainSummary(Result(status, metrics), tuple(history), step)


def _to(x: Tensor | tuple[Tensor, dict[str, Tensor]], device: torch.device):  # noqa: ANN202
    if isinstance(x, tuple):
        return x[0].to(device), {k: v.to(device) for k, v in x[1].items()}
    return x.to(device)


def _reduce(terms: dict[str, Tensor], world: int) -> dict[str, float]:
    if world == 1:
        return {k: float(v) for k, v in terms.items()}
    keys = sorted(terms)
    vec = torch.stack([terms[k].to("cpu" if dist.get_backend() == "gloo" else terms[k].device) for k in keys])
    dist.all_reduce(vec)
    return {k: float(v) / world for k, v in zip(keys, vec)}

"""End-to-end runs shared by the CLI and the benchmark: data → split → train teacher / distil
student → evaluate → checkpoint with a JSON config (architecture, classes, normalisation, data,
split, metrics, command)."""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from engine.distill.config import load_config
from engine.distill.distiller import Distiller
from engine.jobs import CancelToken, Result
from engine.models import SegmentationModel, count_flops, count_params, create_model
from engine.training.augment import AugmentConfig
from engine.training.checkpoints import save_model
from engine.training.datasets import DatasetError, find_pairs, load_or_make_split, split_from_cases
from engine.training.evaluate import evaluate
from engine.training.loader import MEAN, STD, SegDataset
from engine.training.trainer import ProgressFn, SupervisedObjective, TrainConfig, TrainSummary, seed_everything, train

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DataSpec:
    folders: tuple[str, ...]
    group_regex: str
    split_path: str
    split_seed: int = 0
    size: int | None = None  # resize so the short side is this (None: native)
    crop: int | None = 224
    mask_mode: str = "binary"
    classes: tuple[str, ...] = ("background", "tumour")
    negatives: tuple[str, ...] = ()  # folders (by name) whose images hold no tumour: masks all background
    balance: bool = False  # oversample training images so tiles with and without tumour are as many
    #: (folder name, factor): training images of that folder are seen ``factor`` times as often (before
    #: balancing), for a kind of tissue the model gets wrong more than its share of images shows
    repeat: tuple[tuple[str, int], ...] = ()


@dataclass
class Data:
    spec: DataSpec
    train: SegDataset
    val: SegDataset
    test: SegDataset
    split: dict[str, Any]

    def part(self, name: str) -> SegDataset:
        """The train (without augmentation), val or test images."""
        if name not in ("train", "val", "test"):
            raise DatasetError(f"unknown split {name!r}; valid: train, val, test")
        if name == "train":
            ds = SegDataset([], augment_cfg=None, negatives=self.train.negatives)
            ds.pairs, ds.items = self.train.pairs, self.train.items
            return ds
        return self.val if name == "val" else self.test


def load_data(spec: DataSpec, seed: int = 0, augment: AugmentConfig | None = None,
              split: dict[str, Any] | None = None) -> Data:
    """Find the pairs, split them by case (the split file is reused) and load the three parts.

    Several folders: images are keyed ``<folder>/<stem>`` and split together, so one case's tiles
    of every folder fall in the same part. ``spec.negatives`` name folders whose masks count as all
    background; ``spec.repeat`` shows the training images of named folders several times;
    ``spec.balance`` then repeats training images of the smaller group (with / without any tumour
    pixel) until both are as many, each repeat augmented differently.
    """
    folders = [Path(f) for f in spec.folders]
    unknown = set(spec.negatives) - {f.name for f in folders}
    if unknown:
        raise DatasetError(f"negative folder(s) {', '.join(sorted(unknown))} are not among the data folders")
    pairs = find_pairs(folders, qualified=len(folders) > 1)
    if split is None:
        split = load_or_make_split(Path(spec.split_path), [p.key for p in pairs], spec.group_regex, spec.split_seed)
    by = {p.key: p for p in pairs}
    parts = {n: [by[s] for s in split[n] if s in by] for n in ("train", "val", "test")}
    aug = augment if augment is not None else AugmentConfig(crop=spec.crop)
    neg = frozenset(spec.negatives)
    train_ds = SegDataset(parts["train"], spec.size, spec.mask_mode, aug, seed, negatives=neg)
    if spec.repeat:
        train_ds.repeat_folders(dict(spec.repeat))
    if spec.balance:
        train_ds.balance()
    val_ds = SegDataset(parts["val"], spec.size, spec.mask_mode, negatives=neg)
    test_ds = SegDataset(parts["test"], spec.size, spec.mask_mode, negatives=neg)
    log.info("data: %d train / %d val / %d test images", len(train_ds), len(val_ds), len(test_ds))
    return Data(spec, train_ds, val_ds, test_ds, split)


def data_from_card(meta: dict[str, Any], data_root: Path | None = None, folders: Sequence[str] | None = None) -> Data:
    """The data a model card was trained and tested on, split as its case lists say.

    Folders come from ``folders`` or else the card (by name, under the shared ``seg/`` folder or
    ``data_root``); the split is rebuilt from the card's case lists, so no split file is needed.
    """
    from engine.shared_data import data_path

    d = meta.get("data") or {}
    names = list(folders) if folders else [Path(f).name for f in d.get("folders") or ()]
    if not names:
        raise DatasetError("the model card names no data folders: pass --data")
    paths = [str(Path(n) if folders else (data_root / n if data_root else data_path("seg", n))) for n in names]
    spec = DataSpec(tuple(paths), d.get("group_regex") or r"^(.*?)-\d+-400-\d+$", "", int(d.get("split_seed") or 0),
                    (meta.get("input") or {}).get("short_side"), None, d.get("mask_mode") or "binary",
                    tuple(meta.get("classes") or ("background", "tumour")),
                    negatives=tuple(n for n in d.get("negatives") or () if n in {Path(p).name for p in paths}))
    pairs = find_pairs([Path(p) for p in paths], qualified=len(paths) > 1)
    split = split_from_cases([p.key for p in pairs], spec.group_regex, d)
    return load_data(spec, split=split)


def model_meta(model: SegmentationModel, data: Data, role: str, extra: dict[str, Any]) -> dict[str, Any]:
    return {
        "role": role,
        "model": model.config,
        "classes": list(data.spec.classes),
        "input": {"mean": list(MEAN), "std": list(STD), "channels": "RGB", "scale": "0-255 → 0-1",
                  "short_side": data.spec.size, "mpp": None},
        "data": {"folders": [Path(f).name for f in data.spec.folders], "group_regex": data.spec.group_regex,
                 "negatives": list(data.spec.negatives), "balanced": data.spec.balance,
                 "repeat": dict(data.spec.repeat), "split_seed": data.spec.split_seed, "mask_mode": data.spec.mask_mode,
                 "train_cases": data.split.get("train_cases"), "val_cases": data.split.get("val_cases"),
                 "test_cases": data.split.get("test_cases")},
        "params": count_params(model),
        "flops_256": count_flops(model, 256),
        **extra,
    }


def _finish(
    summary: TrainSummary, model: SegmentationModel, data: Data, role: str, out: Path | None,
    extra: dict[str, Any],
) -> tuple[Result, dict[str, Any]]:
    metrics = {"val": evaluate(model, data.val, list(data.spec.classes))} if summary.result.status == "done" else {}
    meta = model_meta(model, data, role, {"training": extra, "metrics": metrics,
                                          "final_loss": summary.result.metrics.get("final_loss")})
    outputs: tuple[str, ...] = ()
    main_process = not (torch.distributed.is_available() and torch.distributed.is_initialized()) or \
        torch.distributed.get_rank() == 0
    if out is not None and summary.result.status == "done" and main_process:
        save_model(out, model, meta)
        outputs = (str(out), str(Path(out).with_suffix(".json")))
    res = Result(summary.result.status, {**summary.result.metrics,
                                         **({"val_miou": metrics["val"]["miou"]} if metrics else {})}, outputs)
    return res, meta


def train_teacher(
    data: Data, model_name: str, cfg: TrainConfig, out: Path | None = None, *, model_kw: dict[str, Any] | None = None,
    progress: ProgressFn | None = None, cancel: CancelToken | None = None, state_path: Path | None = None,
    resume: bool = False,
) -> tuple[SegmentationModel, Result, dict[str, Any]]:
    seed_everything(cfg.seed)
    model = create_model(model_name, classes=len(data.spec.classes), **(model_kw or {}))
    summary = train(SupervisedObjective(model), data.train, cfg, progress=progress, cancel=cancel,
                    state_path=state_path, resume=resume)
    res, meta = _finish(summary, model, data, "teacher", out, {"config": vars_of(cfg), "objective": "ce+dice"})
    return model, res, meta


def distill_student(
    data: Data, teacher: nn.Module, method: str, student_name: str, cfg: TrainConfig, out: Path | None = None, *,
    student_kw: dict[str, Any] | None = None, paraphraser_steps: int | None = None,
    progress: ProgressFn | None = None, cancel: CancelToken | None = None, state_path: Path | None = None,
    resume: bool = False, bank: Dataset | None = None,
) -> tuple[SegmentationModel, Result, dict[str, Any]]:
    """Distil ``student_name`` from the frozen ``teacher`` with ``method`` on ``data.train`` — or on
    ``bank`` (a :class:`~engine.distill.bank.CropBank` of crops with the teacher's stored outputs,
    so the teacher is never run during training)."""
    config = load_config(method)
    if paraphraser_steps is not None:
        config = replace(config, paraphraser_steps=paraphraser_steps)
    seed_everything(cfg.seed)
    student = create_model(student_name, classes=len(data.spec.classes), **(student_kw or {}))
    distiller = Distiller(config, teacher, student)
    try:
        summary = train(distiller, bank if bank is not None else data.train, cfg, progress=progress,
                        cancel=cancel, state_path=state_path, resume=resume)
    finally:
        distiller.close()
    teacher.eval()
    res, meta = _finish(summary, student, data, "student", out,
                        {"config": vars_of(cfg), "method": config.method, "description": config.description,
                         "crop_bank": len(bank) if bank is not None else None})
    return student, res, meta


def vars_of(cfg: TrainConfig) -> dict[str, Any]:
    return dict(cfg.__dict__)


def check_regex(regex: str) -> str:
    try:
        if re.compile(regex).groups < 1:
            raise DatasetError(f"--group-regex {regex!r} needs a group: its first group is the case id")
    except re.error as exc:
        raise DatasetError(f"--group-regex {regex!r} is not a valid regular expression ({exc})") from exc
    return regex


def images_per_second(
    models: dict[str, nn.Module], size: int, batch: int = 4, rounds: int = 7, threads: int | None = None,
) -> dict[str, float]:
    """CPU inference throughput (images/s at ``size``², ``batch`` images per pass) of several models.

    The models are timed in interleaved rounds and each one's median round is kept, so a change of
    load on a shared machine affects all of them alike and their ratio stays meaningful.
    """
    import statistics
    import time

    x = torch.randn(batch, 3, size, size)
    old = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    times: dict[str, list[float]] = {name: [] for name in models}
    try:
        with torch.no_grad():
            for m in models.values():
                m.eval().cpu()(x)  # warm-up
            for _ in range(rounds):
                for name, m in models.items():
                    t0 = time.perf_counter()
                    m(x)
                    times[name].append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(old)
    return {name: batch / statistics.median(ts) for name, ts in times.items()}


__all__: Sequence[str] = ("DataSpec", "Data", "load_data", "train_teacher", "distill_student", "images_per_second")

"""The crop bank: the frozen teacher's outputs computed once and used in its place, the same
losses as with the live teacher, and no teacher pass at all where a method reads nothing from it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from engine.distill.bank import FEATURES, CropBank, build_bank, load_or_build_bank
from engine.distill.config import DistillConfigError, load_config
from engine.distill.connectors import Paraphraser, Translator
from engine.distill.distiller import Distiller
from engine.models import create_model
from engine.training.augment import AugmentConfig
from engine.training.loader import SegDataset
from engine.training.trainer import TrainConfig, train


def _dataset(n: int = 6, size: int = 96) -> SegDataset:
    rng = np.random.default_rng(0)
    ds = SegDataset([], augment_cfg=AugmentConfig(crop=64), seed=1)
    ds.items = [(rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
                 (rng.random((size, size)) > 0.5).astype(np.uint8)) for _ in range(n)]
    ds.pairs = [None] * n  # type: ignore[list-item]
    return ds


@pytest.fixture(scope="module")
def teacher() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("mobile-unet").eval()


def test_the_bank_holds_the_teachers_outputs_on_its_own_crops(teacher: torch.nn.Module, tmp_path: Path) -> None:
    bank = load_or_build_bank(tmp_path / "bank.safetensors", _dataset(), teacher, 10)
    assert len(bank) == 10 and set(bank.teacher) == set(FEATURES)
    x, mask, stored = bank[7]
    assert x.shape == (3, 64, 64) and mask.shape == (64, 64) and mask.dtype == torch.long
    with torch.no_grad():
        live = teacher(x[None])[0]
    assert torch.allclose(stored["logits"], live, atol=2e-2, rtol=1e-2)  # stored as fp16
    again = load_or_build_bank(tmp_path / "bank.safetensors", _dataset(), teacher, 10)  # read back, not rebuilt
    assert torch.equal(again.images, bank.images) and torch.equal(again.teacher["logits"], bank.teacher["logits"])
    crops = {bytes(bank.images[i].numpy()) for i in range(10)}
    assert len(crops) == 10  # a fresh augmentation per crop (6 images, two epochs)


@pytest.mark.parametrize("method", ["kd", "coco", "coco-full", "ft"])
def test_stored_teacher_gives_the_live_teachers_losses(method: str, teacher: torch.nn.Module) -> None:
    bank = build_bank(_dataset(), teacher, 4)
    x = torch.stack([bank[i][0] for i in range(4)])
    y = torch.stack([bank[i][1] for i in range(4)])
    stored = {k: v.float() for k, v in bank.teacher.items()}
    torch.manual_seed(3)
    dist = Distiller(load_config(method), teacher, create_model("mobile-unet-small")).eval()
    try:
        live = dist(x, y)
        cached = dist(x, y, teacher=stored)
    finally:
        dist.close()
    for key, val in live.items():
        assert torch.allclose(cached[key], val, atol=2e-3, rtol=2e-2), key


def test_a_method_without_teacher_terms_never_runs_the_teacher(teacher: torch.nn.Module) -> None:
    calls = []
    handle = teacher.register_forward_hook(lambda *_: calls.append(1))
    try:
        dist = Distiller(load_config("student"), teacher, create_model("mobile-unet-small"))
        calls.clear()  # the build's dry run may not count either
        dist(torch.randn(2, 3, 64, 64), torch.randint(0, 2, (2, 64, 64)))
        dist.close()
    finally:
        handle.remove()
    assert calls == [] and dist.teacher_sources == frozenset()


def test_a_bank_without_a_needed_feature_is_refused(teacher: torch.nn.Module) -> None:
    dist = Distiller(load_config("coco"), teacher, create_model("mobile-unet-small"))
    try:
        with pytest.raises(DistillConfigError, match="enc_shallow"):
            dist(torch.randn(2, 3, 64, 64), torch.randint(0, 2, (2, 64, 64)),
                 teacher={"logits": torch.randn(2, 2, 64, 64)})
    finally:
        dist.close()


def test_training_on_a_bank_never_runs_the_teacher(teacher: torch.nn.Module) -> None:
    bank = build_bank(_dataset(), teacher, 8)
    calls = []
    dist = Distiller(load_config("coco-full"), teacher, create_model("mobile-unet-small"))
    dist.config = type(dist.config)(**{**dist.config.__dict__, "paraphraser_steps": 2})
    handle = teacher.register_forward_hook(lambda *_: calls.append(1))
    try:
        summary = train(dist, bank, TrainConfig(steps=3, batch_size=4, device="cpu"))
    finally:
        handle.remove()
        dist.close()
    assert summary.steps_done == 3 and calls == []
    para = dist.connectors["paraphraser"]
    assert not any(p.requires_grad for p in para.parameters())  # pre-trained on stored features, frozen


def test_bank_rejects_mismatched_parts() -> None:
    with pytest.raises(ValueError, match="differ in count"):
        CropBank(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), torch.zeros(3, 8, 8, dtype=torch.uint8), {})


def test_factor_transfer_connectors_have_no_batchnorm_and_an_untrained_paraphraser_is_frozen(
        teacher: torch.nn.Module) -> None:
    for module in (Paraphraser(16, 4), Translator(16, 4)):
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in module.modules())
    config = load_config("ft")
    dist = Distiller(type(config)(**{**config.__dict__, "paraphraser_steps": 0}), teacher,
                     create_model("mobile-unet-small"))
    try:
        dist.prepare(iter([]))
        assert not any(p.requires_grad for p in dist.connectors["paraphraser"].parameters())
    finally:
        dist.close()


def test_the_factor_transfer_term_is_not_inert(teacher: torch.nn.Module) -> None:
    """At the reference beta the FT term's gradient on the student is of the order of the labels' one
    (at weight 1 it was under 1 %)."""
    torch.manual_seed(0)
    student = create_model("mobile-unet-small")
    dist = Distiller(load_config("ft"), teacher, student)
    try:
        terms = dist(torch.randn(4, 3, 64, 64), torch.randint(0, 2, (4, 64, 64)))
        params = [p for p in student.encoder.parameters() if p.requires_grad]
        g_ft = torch.autograd.grad(terms["loss_ft"], params, retain_graph=True, allow_unused=True)
        g_ce = torch.autograd.grad(terms["loss_ce"], params, allow_unused=True)
    finally:
        dist.close()
    norm = lambda gs: torch.sqrt(sum((g ** 2).sum() for g in gs if g is not None))  # noqa: E731
    assert norm(g_ft) > 0.05 * norm(g_ce)

"""Out of memory in every allocation-heavy step of a round: the held-out measurement, the anchored
round's cache and training steps, the paraphraser's pre-training. The batch is halved until it fits
and the result is the one of a run that never failed (or of one started at the smaller batch); with
a batch of one that does not fit, the round fails with one line and the registry is unchanged."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from fault_fixtures import snapshot
from finetune_fixtures import halve_rgb, slide_rgb, tiny_model

from engine.finetune import anchored
from engine.finetune.data import Patch
from engine.finetune.loop import RoundError, heldout_scores
from engine.finetune.objective import FinetuneObjective, finetune_config
from engine.finetune.registry import ModelRegistry
from engine.finetune.round import RoundSettings, run_round
from engine.oom import OutOfMemory

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CPU = torch.device("cpu")


def patches(n: int = 5) -> list[Patch]:
    img = halve_rgb(slide_rgb())
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        x, y = 20 + 60 * i, 10 + 30 * i
        label = rng.integers(0, 2, (64, 64)).astype(np.uint8)
        label[:8] = 255
        out.append(Patch(img[y:y + 64, x:x + 64].copy(), label, 1, f"r{i}", x, y, 64.0))
    return out


class Fits:
    """A forward that runs out of memory on batches above ``n`` (CPU allocator's message)."""

    def __init__(self, module: torch.nn.Module, n: int, monkeypatch: pytest.MonkeyPatch, grad_only: bool = False):
        self.n, self.sizes = n, []
        real = type(module).forward

        def forward(mod, x, *a, **kw):
            if mod is module and (torch.is_grad_enabled() or not grad_only):
                self.sizes.append(x.shape[0])
                if x.shape[0] > self.n:
                    raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate "
                                       "2147483648 bytes. Error code 12 (Cannot allocate memory)")
            return real(mod, x, *a, **kw)

        monkeypatch.setattr(type(module), "forward", forward)


def test_heldout_scores_halve_and_score_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    model = tiny_model(3)
    want = heldout_scores(model, patches(), MEAN, STD, CPU, ["background", "tumour"], batch=4)
    fits = Fits(model, 1, monkeypatch)
    got = heldout_scores(model, patches(), MEAN, STD, CPU, ["background", "tumour"], batch=4)
    assert got == want and fits.sizes[:3] == [4, 2, 1]
    fits.n = 0
    with pytest.raises(RoundError, match="out of memory even with one patch at a time") as info:
        heldout_scores(model, patches(), MEAN, STD, CPU, ["background", "tumour"], batch=4)
    assert isinstance(info.value, OutOfMemory) and "\n" not in str(info.value)


def test_the_anchored_cache_halves_and_holds_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    model = tiny_model(3)
    kw = dict(supervise=True, kd="unlabelled", first=anchored.first_trainable(model, 2), batch=4)
    want = anchored.build_cache(model, patches(), MEAN, STD, CPU, **kw)
    fits = Fits(model.encoder, 2, monkeypatch)
    got = anchored.build_cache(model, patches(), MEAN, STD, CPU, **kw)
    assert fits.sizes[:2] == [4, 2] and max(fits.sizes[1:]) == 2
    for a, b in zip([*want.feats, want.parent, want.label, want.kd], [*got.feats, got.parent, got.label, got.kd],
                    strict=True):
        assert torch.equal(a, b)


def test_scoring_the_cache_halves_and_scores_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    model = tiny_model(3)
    first = anchored.first_trainable(model, 2)
    cache = anchored.build_cache(model, patches(), MEAN, STD, CPU, supervise=False, kd="none", first=first)
    want = anchored.score_cache(model, cache, ["background", "tumour"], CPU, batch=4, first=first)
    sizes: list[int] = []
    real = anchored._decode

    def decode(model, first, feats, has_skip):
        sizes.append(feats[0].shape[0])
        if feats[0].shape[0] > 1:
            raise MemoryError()
        return real(model, first, feats, has_skip)

    monkeypatch.setattr(anchored, "_decode", decode)
    assert anchored.score_cache(model, cache, ["background", "tumour"], CPU, batch=4, first=first) == want
    assert sizes[:3] == [4, 2, 1] and set(sizes[3:]) == {1}


def paraphrased(method: str, batch: int, monkeypatch: pytest.MonkeyPatch | None = None, fits: int = 99):
    """The connectors of an objective after its paraphraser pre-training at ``batch``."""
    torch.manual_seed(0)
    teacher, student = tiny_model(3).eval(), tiny_model(4)
    objective = FinetuneObjective(finetune_config(method, 3), teacher, student)
    if monkeypatch is not None:
        limit = Fits(teacher, fits, monkeypatch)

    def images(size: int):
        g = torch.Generator().manual_seed(size)
        while True:
            yield torch.randn(size, 3, 64, 64, generator=g)

    seen: list[int] = []
    try:
        stats = objective.prepare(images, batch=batch, on_backoff=seen.append)
    finally:
        objective.close()
    state = {k: v.clone() for k, v in objective.distiller.connectors.state_dict().items()}
    return state, stats, seen, (limit.sizes if monkeypatch is not None else [])


def test_the_paraphraser_pre_training_starts_over_at_half_the_batch(tiny_method: str,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    want, want_stats, _, _ = paraphrased(tiny_method, 2)
    got, got_stats, seen, sizes = paraphrased(tiny_method, 8, monkeypatch, fits=2)
    assert seen == [4, 2] and sizes[:3] == [8, 4, 2]
    assert got_stats == want_stats and want.keys() == got.keys()
    assert all(torch.equal(want[k], got[k]) for k in want)  # as if it had started at 2


def test_the_paraphraser_with_no_memory_at_all(tiny_method: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(RoundError, match="^paraphraser: out of memory even with a batch of one patch"):
        paraphrased(tiny_method, 4, monkeypatch, fits=0)


def trained(batch: int, steps: int = 8) -> tuple:
    """(held-out curve, trained weights) of the anchored trainer on the same cached pools."""
    model = tiny_model(3)
    first = anchored.first_trainable(model, 2)
    ps = patches(7)

    def cache(part: list[Patch], supervise: bool, kd: str) -> anchored.FeatureCache:
        return anchored.build_cache(model, part, MEAN, STD, CPU, supervise=supervise, kd=kd, first=first, batch=4)

    pools = anchored.Pools(train=cache(ps[:3], True, "unlabelled"), tissue=cache(ps[3:5], False, "unlabelled"),
                           replay=cache([], True, "labelled"), heldout=cache(ps[5:], False, "none"),
                           check=cache([], False, "none"))
    trainer = anchored.AnchoredTrainer(model, pools, ["background", "tumour"], CPU, first=first, lr=3e-3,
                                       batch_size=batch, seed=0)
    res = trainer.run(anchored.StepPlan(deadline=float("inf"), steps=steps))
    return res.curve, {k: v.clone() for m in trainer.trained for k, v in m.state_dict().items()}, trainer


def test_anchored_training_steps_halve_and_learn_as_if_started_at_the_smaller_batch(
        monkeypatch: pytest.MonkeyPatch) -> None:
    want_curve, want, _ = trained(2)
    sizes: list[int] = []
    real = anchored._decode

    def decode(model, first, feats, has_skip):  # the step's trainable part (with gradients)
        if torch.is_grad_enabled():
            sizes.append(feats[0].shape[0])
            if feats[0].shape[0] > 1:  # a batch of 4 is 3 + 1 patches (train, tissue); of 2, 1 + 1
                raise torch.OutOfMemoryError("CUDA out of memory")
        return real(model, first, feats, has_skip)

    monkeypatch.setattr(anchored, "_decode", decode)
    got_curve, got, trainer = trained(4)
    assert sizes[0] == 3 and max(sizes[1:]) == 1 and trainer.batch_size == 2
    assert got_curve == want_curve
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_a_round_out_of_memory_with_one_patch_fails_in_one_line_and_changes_nothing(
        project_dir: Path, checkpoints: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    reg = ModelRegistry.of_project(project_dir)
    reg.import_model(checkpoints["student"])
    before = snapshot(reg.root)

    def decode(*a, **kw):
        raise MemoryError()

    monkeypatch.setattr(anchored, "_decode", decode)
    result = run_round(project_dir, RoundSettings(patch=64, batch_size=4, unlabelled_per_roi=2, device="cpu",
                                                  steps=6))
    assert result.status == "failed" and "\n" not in result.message
    assert "out of memory even" in result.message and "one patch" in result.message
    assert snapshot(reg.root) == before

"""The anchored round (the default): learns within its budget from cached activations, keeps the
best step, never ends worse than its parent, and reads classes by name."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from finetune_fixtures import ROI_BOXES, card, halve_rgb, slide_rgb, tiny_model, tumour_shapes
from PIL import Image

from shapely.geometry import box

from engine.annotations import Annotation, AnnotationClass, Kind, Project
from engine.finetune import anchored
from engine.finetune.anchored import MIN_STEPS, StepPlan
from engine.finetune.registry import ModelRegistry
from engine.finetune.replay import replay_sample
from engine.finetune.round import RoundSettings, run_round
from engine.shared_data import SharedDataMissing
from engine.training.checkpoints import load_model, save_model
from engine.training.evaluate import predict_logits


def fast(**kw) -> RoundSettings:
    # a fixed step count: what a round learns must not depend on how busy the machine is (the
    # budget's sizing is tested with a fake clock)
    base = dict(patch=64, batch_size=4, unlabelled_per_roi=2, device="cpu", steps=40)
    return RoundSettings(**{**base, **kw})


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_step_plan_sizes_the_steps_to_the_budget_and_its_eta_adds_up() -> None:
    clock = FakeClock()
    plan = StepPlan(deadline=30.0, clock=clock, reserve_s=1.0)
    assert plan.planned(0) == MIN_STEPS and plan.eta(0) == 30.0  # nothing measured: the budget
    clock.now = 2.0  # set-up took 2 s
    step = 0
    while step < plan.planned(step):
        clock.now += 0.5  # every step 0.5 s
        step += 1
        plan.record_step(0.5)
        if step % 8 == 0:  # a scoring every few steps, 0.25 s
            clock.now += 0.25
            plan.score_s = 0.25
    # the steps fill what is left of the budget, less the reserve and the scorings
    assert 40 <= step <= 56 and clock.now <= 30.0 - 0.5
    plan2 = StepPlan(deadline=10.0, clock=FakeClock(), steps=17)
    assert plan2.planned(3) == 17  # a fixed step count wins over the budget
    late = StepPlan(deadline=1.0, clock=FakeClock())
    late.clock.now = 5.0  # the budget was spent before training began
    late.record_step(0.5)
    assert late.planned(1) == MIN_STEPS  # a few steps all the same
    mid = StepPlan(deadline=100.0, clock=FakeClock(), reserve_s=1.0)
    mid.record_step(1.0)
    total = mid.planned(1)
    assert math.isclose(mid.eta(1), 100.0 - mid.clock(), rel_tol=0.2)  # ETA ≈ time left when planned
    assert total > 80


def _write_seg(root: Path, name: str, stems: list[str], size: int, tumour: bool) -> None:
    (root / name / "images").mkdir(parents=True)
    (root / name / "masks").mkdir(parents=True)
    for i, stem in enumerate(stems):
        rgb = np.full((size, size, 3), 200 - 10 * i, np.uint8)
        mask = np.zeros((size, size), np.uint8)
        if tumour:
            mask[: size // 2] = 255
        Image.fromarray(rgb).save(root / name / "images" / f"{stem}.png")
        Image.fromarray(mask).save(root / name / "masks" / f"{stem}.png")


def test_replay_sample_takes_training_cases_half_without_tumour(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seg = tmp_path / "seg"
    _write_seg(seg, "pos", [f"GT{c}-1-400-{i}" for c in (1, 2, 3) for i in range(3)], 80, True)
    _write_seg(seg, "neg", [f"GT{c}-1-400-{i}" for c in (1, 2, 4) for i in range(3)], 40, False)
    meta = {"input": {"mean": [0.5, 0.5, 0.5]},
            "data": {"folders": ["pos", "neg"], "negatives": ["neg"], "group_regex": r"^(.*?)-\d+-400-\d+$",
                     "train_cases": ["GT1", "GT2"], "val_cases": ["GT3"], "mask_mode": "binary"}}
    sample = replay_sample(meta, 64, tiles=8, seed=0, root=tmp_path)
    assert sample.sources == {"pos": 4, "neg": 4}
    assert all(p.region.split("/")[1].split("-")[0] in ("GT1", "GT2") for p in sample.patches)  # no GT3, GT4
    for p in sample.patches:
        assert p.rgb.shape == (64, 64, 3) and p.label.shape == (64, 64)
        if p.region.startswith("replay:neg"):  # 40² padded: the padding is unknown, the tile background
            assert (p.label == 255).sum() == 64 * 64 - 40 * 40 and set(np.unique(p.label)) == {0, 255}
        else:  # 80² cropped to 64²: every pixel known, tumour in the top half of the tile
            assert (p.label != 255).all()
    again = replay_sample(meta, 64, tiles=8, seed=0, root=tmp_path)
    assert [p.region for p in again.patches] == [p.region for p in sample.patches]  # seeded
    assert "names no training data" in replay_sample({}, 64).note
    val = replay_sample(meta, 64, tiles=8, seed=0, root=tmp_path, part="val")
    assert val.sources == {"pos": 3} and "validation cases" in val.note  # GT3 (pos only); neg has GT4
    assert "lists no validation cases" in replay_sample({**meta, "data": {**meta["data"], "val_cases": []}}, 64,
                                                        root=tmp_path, part="val").note
    monkeypatch.setattr("engine.shared_data.data_root", lambda: tmp_path / "empty")
    assert "none of pos, neg" in replay_sample(meta, 64).note  # a data folder without those sets

    def missing() -> Path:
        raise SharedDataMissing("no shared data")
    monkeypatch.setattr("engine.shared_data.data_root", missing)
    assert "not on this machine" in replay_sample(meta, 64).note
    assert "none of pos, neg" in replay_sample(meta, 64, root=tmp_path / "elsewhere").note


def test_anchored_round_learns_from_cached_activations_within_its_budget(
        project_dir: Path, checkpoints: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    reg = ModelRegistry.of_project(project_dir)
    reg.import_model(checkpoints["broken"])  # says "background" everywhere
    calls = {"encoder": 0}
    real = anchored.build_cache

    def counting(model, patches, *a, **kw):  # the encoder runs only while the cache is built
        enc = model.encoder
        orig = enc.forward

        def fwd(x):
            calls["encoder"] += 1
            return orig(x)
        enc.forward = fwd
        try:
            return real(model, patches, *a, **kw)
        finally:
            del enc.forward
    monkeypatch.setattr(anchored, "build_cache", counting)
    events = []
    result = run_round(project_dir, fast(), events.append)
    assert result.status == "done", result.message
    assert (result.version, result.parent, result.activated) == ("v0002", "v0001", True)
    assert result.after["miou"] > result.before["miou"] + 0.2, (result.before, result.after)
    a = result.data["anchored"]
    assert 0 < a["best_step"] <= a["steps"] and a["steps"] >= MIN_STEPS
    assert calls["encoder"] == sum(math.ceil(n / 4) for n in a["patches"].values() if n)
    assert result.data["guard"]["heldout"] == {"before": result.before["miou"], "after": result.after["miou"],
                                               "ok": True}
    assert result.data["guard"]["activated"] and result.data["guard"]["reason"] == ""
    assert "replay: none (the model's card names no training data)" in result.message
    # the kept step is the best held-out measurement, not the last
    assert result.after["miou"] == pytest.approx(max(m for _, m in result.curves["heldout_miou"]))
    assert result.curves["heldout_miou"][0] == (0, result.before["miou"])
    stages = [e.stage for e in events]
    assert stages.index("gather") < stages.index("cache") < stages.index("student") < stages.index("publish")
    assert all("eta_s" in e.metrics for e in events if e.stage in ("student", "heldout", "cache"))
    v = reg.get("v0002")
    assert v.card["finetune"]["settings"]["method"] == "anchored"
    assert v.metrics["heldout_miou_parent"] == pytest.approx(result.before["miou"])
    # only the decoder and the head changed
    old, _ = load_model(reg.get("v0001").path)
    new, _ = load_model(v.path)
    so, sn = old.state_dict(), new.state_dict()
    # only the last two decoder blocks (the default) and the head learnt
    assert result.data["anchored"]["trained"] == "the last 2 decoder block(s) and the head"
    last = (f"decoder.blocks.{len(new.decoder.blocks) - 2}.", f"decoder.blocks.{len(new.decoder.blocks) - 1}.", "head.")
    assert all(torch.equal(so[k], sn[k]) for k in so if not k.startswith(last))
    assert any(not torch.equal(so[k], sn[k]) for k in so if k.startswith(last))


def test_a_sabotaged_round_never_ends_worse_than_its_parent(
        project_dir: Path, checkpoints: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    reg = ModelRegistry.of_project(project_dir)
    reg.import_model(checkpoints["student"])
    real_step = anchored.AnchoredTrainer.step

    def wrecking_step(self, step, total):  # every step ends with a head that calls everything tumour
        out = real_step(self, step, total)
        with torch.no_grad():
            self.model.head.weight.zero_()
            self.model.head.bias.copy_(torch.tensor([-10.0, 10.0]))
        return out
    monkeypatch.setattr(anchored.AnchoredTrainer, "step", wrecking_step)
    before_files = sorted(p.name for p in reg.root.rglob("*") if p.is_file())
    result = run_round(project_dir, fast(steps=6))
    assert result.status == "done" and result.version is None and not result.activated
    assert "nothing new" in result.message and result.after == result.before
    assert result.data["anchored"]["best_step"] == 0
    assert reg.active().version == "v0001" and [v.version for v in reg.versions()] == ["v0001"]
    assert sorted(p.name for p in reg.root.rglob("*") if p.is_file()) == before_files


def test_a_version_worse_on_the_replay_check_is_published_but_never_activated(
        project_dir: Path, checkpoints: dict, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    seg = tmp_path / "data" / "seg"
    _write_seg(seg, "pos", [f"GT{c}-1-400-0" for c in range(4)], 64, True)
    _write_seg(seg, "neg", [f"GT{c}-1-400-0" for c in range(4)], 64, False)
    monkeypatch.setenv("COCO_DATA", str(tmp_path / "data"))
    model = tiny_model(1, broken=True)
    meta = {**card(model), "data": {"folders": ["pos", "neg"], "negatives": ["neg"],
                                    "group_regex": r"^(.*?)-\d+-400-\d+$", "train_cases": ["GT0", "GT1"],
                                    "val_cases": ["GT2", "GT3"]}}
    path = save_model(tmp_path / "m.safetensors", model, meta)
    reg = ModelRegistry.of_project(project_dir)
    reg.import_model(path)
    real_score = anchored.score_cache

    def replay_collapses(model, cache, classes, device, batch=16, first=0, **kw):  # a trained step forgets replay
        s = real_score(model, cache, classes, device, batch, first, **kw)
        if model is not None and cache is pools_seen[0]:
            s = {**s, "miou": s["miou"] - 0.5}
        return s
    pools_seen: list = [None]
    real_init = anchored.AnchoredTrainer.__init__

    def init(self, model, pools, *a, **kw):
        pools_seen[0] = pools.check
        real_init(self, model, pools, *a, **kw)
    monkeypatch.setattr(anchored, "score_cache", replay_collapses)
    monkeypatch.setattr(anchored.AnchoredTrainer, "__init__", init)
    result = run_round(project_dir, fast(steps=30, replay_tiles=4))
    assert "replay: 4 tiles of the model's training cases (neg 2, pos 2)" in result.message
    assert "replay check: 4 tiles of the model's validation cases (neg 2, pos 2)" in result.message
    rep, guard = result.curves["replay_miou"], result.data["guard"]
    assert rep and all(m < guard["replay"]["before"] - 0.005 for _, m in rep)
    # the held-out's best step is kept and published for the pathologist to see, but not activated
    assert result.version == "v0002" and not result.activated
    assert result.data["anchored"]["best_step"] > 0 and result.after["miou"] > result.before["miou"]
    assert not guard["replay"]["ok"] and not guard["activated"]
    assert guard["reason"].startswith("worse on the replay sample")
    assert "lost on the replay check" in result.message and "not activated (worse on the replay" in result.message
    # every blend with the parent was tried, and failed as well: none kept
    assert [b[0] for b in result.data["anchored"]["blends"]] == list(anchored.BLENDS)
    assert result.data["anchored"]["blend"] == 1.0 and "so did its blends with the parent, down to 20%" in result.message
    assert reg.active().version == "v0001"
    v = reg.get("v0002")
    assert v.metrics["replay_miou"] < v.metrics["replay_miou_parent"] - 0.005  # what Accept's question shows
    assert v.metrics["replay_ok"] is False and v.metrics["heldout_ok"] is True  # the round's own judgement


def _tumour_share(model: torch.nn.Module) -> float:
    img = halve_rgb(slide_rgb())  # the slide at the model's 1 µm/px
    x = torch.from_numpy(img.copy()).permute(2, 0, 1).float().div(255)
    x = (x - torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    model.eval()
    with torch.no_grad():
        return float((predict_logits(model, x[None], 32).argmax(1) == 1).float().mean())


def test_a_stroma_only_correction_never_raises_the_tumour_area(tmp_path: Path, tumour_slide: Path) -> None:
    model = tiny_model(2)
    with torch.no_grad():  # a start that calls much of the tissue tumour
        model.head.bias.copy_(torch.tensor([-0.5, 0.5]))
    start = save_model(tmp_path / "start.safetensors", model, card(model))
    folder = tmp_path / "project"
    project = Project.create(folder)
    rec = project.add_slide(tumour_slide)
    project.set_class(AnnotationClass("Stroma", (0, 160, 0), "2"))
    store = project.store(rec)
    # the pathologist outlines Stroma (a class the model does not have) inside correction ROIs
    store.add([Annotation(g, "Stroma") for g in tumour_shapes()]
              + [Annotation(box(*b), kind=Kind.ROI) for b in ROI_BOXES])
    project.close()
    reg = ModelRegistry.of_project(folder)
    reg.import_model(start)
    before = _tumour_share(load_model(start)[0])
    assert before > 0.2
    result = run_round(folder, fast(activate="always"))
    assert result.status == "done", result.message
    assert "class 'Stroma' is taken as 'background' (not tumour)" in result.message
    assert result.version == "v0002" and result.data["anchored"]["best_step"] > 0
    after = _tumour_share(load_model(reg.get(result.version).path)[0])
    assert after < before - 0.1, (before, after)
    assert _tumour_share(load_model(reg.active().path)[0]) <= before


def _class_shares(model: torch.nn.Module) -> np.ndarray:
    img = halve_rgb(slide_rgb())
    x = torch.from_numpy(img.copy()).permute(2, 0, 1).float().div(255)
    x = (x - torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    model.eval()
    with torch.no_grad():
        pred = predict_logits(model, x[None], 32).argmax(1).numpy()
    return np.bincount(pred.ravel(), minlength=model.classes) / pred.size


def test_correction_patches_are_drawn_kind_by_kind() -> None:
    """Patches group by slide and the classes they label; a round draws each group as often, so a
    few thin septa beside many tumour patches are seen as often as the tumour."""
    from engine.finetune.data import Patch

    def patch(slide: int, tumour: float, label: bool = True) -> Patch:
        lab = np.full((10, 10), anchored.IGNORE if not label else 0, np.uint8)
        lab.flat[:int(100 * tumour)] = 1 if label else anchored.IGNORE
        return Patch(np.zeros((10, 10, 3), np.uint8), lab, slide, "r", 0, 0, 10.0)

    patches = [patch(1, 1.0)] * 8 + [patch(1, 0.0), patch(2, 0.0), patch(1, 0.5), patch(1, 0.01),
                                       patch(1, 0.0, label=False)]
    strata = anchored.patch_strata(patches)
    # slide 1 background-only (a 1 % tumour sliver is below the 2 % that makes a kind), slide 1
    # mixed, slide 1 tumour-only, slide 2 background; the unlabelled patch in none
    assert strata == [[8, 11], [10], list(range(8)), [9]]
    cache = anchored.FeatureCache([torch.zeros(13, 1, 2, 2)], (), torch.zeros(13, 2, 10, 10),
                                  torch.zeros(13, 10, 10, dtype=torch.uint8), torch.zeros(13, 10, 10, dtype=torch.bool),
                                  torch.zeros(13, 10, 10, dtype=torch.uint8), strata)
    rng = np.random.default_rng(0)
    drawn = np.array(anchored.draw(cache, 4000, rng, by_kind=True))
    shares = [np.isin(drawn, group).mean() for group in strata]
    assert shares == pytest.approx([0.25] * 4, abs=0.03)  # each kind a quarter, the 8 tumour patches too
    plain = np.array(anchored.draw(cache, 4000, rng))
    assert np.isin(plain, strata[2]).mean() == pytest.approx(8 / 13, abs=0.03)  # patch by patch


def test_a_class_the_model_lacks_can_become_a_new_output_class(tmp_path: Path, tumour_slide: Path) -> None:
    model = tiny_model(2)
    start = save_model(tmp_path / "start.safetensors", model, card(model))
    folder = tmp_path / "project"
    project = Project.create(folder)
    rec = project.add_slide(tumour_slide)
    project.set_class(AnnotationClass("Stroma", (0, 160, 0), "2"))
    project.set_class(AnnotationClass("Necrosis", (90, 90, 90), "3"))
    store = project.store(rec)
    store.add([Annotation(g, "Stroma") for g in tumour_shapes()]
              + [Annotation(box(*b), kind=Kind.ROI) for b in ROI_BOXES])
    project.close()
    reg = ModelRegistry.of_project(folder)
    reg.import_model(start)
    before = _class_shares(load_model(start)[0])
    # Necrosis is asked for but drawn nowhere: the round says so and adds no class for it
    result = run_round(folder, fast(activate="always", new_classes=("Stroma", "Necrosis")))
    assert result.status == "done", result.message
    assert "class 'Stroma' becomes a new output class of the model (not tumour either)" in result.message
    assert "class 'Necrosis' is not drawn on the slides of the round" in result.message
    assert result.data["new_classes"] == ["Stroma"]
    v = reg.get(result.version)
    assert v.card["classes"] == ["background", "tumour", "Stroma"]
    new, meta = load_model(v.path)  # the saved version rebuilds with its third output
    assert new.classes == 3 and meta["model"]["classes"] == 3 and new.head.out_channels == 3
    after = _class_shares(new)
    assert after[2] > 0.05, after  # it learnt to call the outlined shapes Stroma
    assert after[1] <= before[1] + 0.01, (before, after)  # and never more tumour than before
    from engine.inference.spec import load_spec
    spec = load_spec(v.path)  # inference shows the new class as its own layer
    assert spec.foreground == ("tumour", "Stroma")


def test_a_new_class_starts_where_the_parent_was_and_counts_as_background_on_the_parent_s_data() -> None:
    model = tiny_model(3).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        old = model(x)
        anchored.grow_head(model, 1)
        new = model(x)
    assert new.shape[1] == 3 and model.classes == 3 and model.config["classes"] == 3
    assert torch.equal(new[:, :2], old[:, :2]) and torch.equal(new.argmax(1), old.argmax(1))
    merged = anchored.merged_log_probs(new, [0, 1, 0], 2)
    assert torch.allclose(merged.exp().sum(1), torch.ones(2, 64, 64), atol=1e-5)
    p = new.softmax(1)
    assert torch.allclose(merged.exp()[:, 0], p[:, 0] + p[:, 2], atol=1e-5)


def test_new_classes_need_the_anchored_method() -> None:
    from engine.errors import CocoPathError
    with pytest.raises(CocoPathError, match="new output classes are learnt by the anchored method only"):
        RoundSettings(method="coco-full", new_classes=("Stroma",)).validate()


def test_a_slide_far_coarser_than_the_model_is_refused_unless_forced(
        project_dir: Path, tmp_path: Path) -> None:
    model = tiny_model(2)
    fine = save_model(tmp_path / "fine.safetensors", model, card(model, mpp=0.2))  # reads 0.2 µm/px
    reg = ModelRegistry.of_project(project_dir)
    reg.import_model(fine)
    result = run_round(project_dir, fast())
    assert result.status == "failed" and reg.versions()[-1].version == "v0001"
    assert "this slide is 0.5 µm/px; the model reads 0.2 µm/px" in result.message and "--force" in result.message
    forced = run_round(project_dir, fast(force=True, activate="never", steps=MIN_STEPS))
    assert forced.status == "done", forced.message
    assert "fine-tuned on it anyway" in forced.message


@pytest.mark.parametrize("blocks", [0, 2, 5])
def test_the_cached_front_gives_the_model_s_own_logits(blocks: int) -> None:
    from engine.finetune.data import Patch
    from engine.finetune.loop import normalise

    model = tiny_model(3).eval()
    img = halve_rgb(slide_rgb())
    patches = [Patch(img[y:y + 64, x:x + 64].copy(), np.full((64, 64), 255, np.uint8), 1, None, x, y, 64.0)
               for x, y in ((0, 0), (100, 60), (200, 120))]
    first = anchored.first_trainable(model, blocks)
    cache = anchored.build_cache(model, patches, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225],
                                 torch.device("cpu"), supervise=False, kd="none", first=first, batch=2)
    x = torch.stack([normalise(p.rgb, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]) for p in patches])
    with torch.no_grad():
        want = model(x)
        got = anchored._decode(model, first, cache.batch([0, 1, 2], torch.device("cpu")), cache.has_skip)
    assert torch.allclose(got, want, atol=0.05, rtol=0.02)  # fp16 storage of the front
    assert torch.allclose(cache.parent.float(), want, atol=0.02, rtol=0.01)


def test_a_blend_with_the_parent_is_kept_when_the_step_alone_loses_on_the_replay_check() -> None:
    from engine.finetune.data import Patch

    model = tiny_model(1).eval()
    img = halve_rgb(slide_rgb())
    label = np.zeros((64, 64), np.uint8)
    label[:32] = 1
    patches = [Patch(img[y:y + 64, x:x + 64].copy(), label.copy(), 1, None, x, y, 64.0)
               for x, y in ((0, 0), (100, 60))]
    cpu, first = torch.device("cpu"), anchored.first_trainable(model, 2)
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    c = anchored.build_cache(model, patches, mean, std, cpu, supervise=True, kd="unlabelled", first=first)
    trainer = anchored.AnchoredTrainer(model, anchored.Pools(c, c, c, c, c), ["background", "tumour"], cpu,
                                       first=first)
    parent = trainer._snapshot()
    with torch.no_grad():
        for p in trainer.params:
            p.add_(1.0)  # "the step": every trained weight moved by 1
    stepped = (0.80, 7, {}, {}, trainer._snapshot())
    p0 = parent[0][next(iter(parent[0]))].flatten()[0].item()

    def scores():  # the held-out gain grows with the step's share a, the replay check falls with it
        a = trainer.params[0].flatten()[0].item() - p0
        return {"miou": 0.5 + 0.3 * a}, {"miou": 0.65 - 0.04 * a}

    trainer.scores = scores
    start = (0.5, 0, {}, {}, parent)
    kept, share, tried = trainer._blend(parent, start, stepped, floor=0.64, cancel=None)
    assert [round(a, 2) for a, _, _ in tried] == list(anchored.BLENDS)
    assert share == 0.2 and kept[1] == 7  # only a = 0.2 keeps the replay check within its floor
    assert kept[0] == pytest.approx(0.56)
    for p_parent, p_step, p_kept in zip(parent, stepped[4], kept[4]):
        for k in p_kept:
            if p_kept[k].is_floating_point():
                assert torch.allclose(p_kept[k], p_parent[k] + 0.2 * (p_step[k] - p_parent[k]), atol=1e-6)
    # a blend that passes but gains less than the best passing step is not taken
    kept2, share2, _ = trainer._blend(parent, (0.6, 3, {}, {}, parent), stepped, floor=0.64, cancel=None)
    assert share2 == 1.0 and kept2[1] == 3

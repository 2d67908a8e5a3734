"""A round measures what it does to the slides nobody corrected, and does not make a version that
changed one of them wholesale active on its own."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from shapely.geometry import box
from finetune_fixtures import card, make_project, slide_rgb, tiny_model, write_slide

from engine.annotations.project import Project
from engine.finetune import elsewhere
from engine.finetune.data import GatherOptions, Patch, gather
from engine.finetune.registry import ModelRegistry
from engine.finetune.round import RoundSettings, run_round


def _patch(slide: int, tissue: np.ndarray | None) -> Patch:
    return Patch(np.zeros((4, 4, 3), np.uint8), np.full((4, 4), 255, np.uint8), slide, None, 0, 0, 4.0, tissue)


def test_drift_counts_tissue_pixels_per_slide_and_names_the_slide_that_changed() -> None:
    tissue = np.zeros((4, 4), bool)
    tissue[:, :2] = True  # the left half is tissue, the right half glass
    patches = [_patch(1, tissue), _patch(1, tissue), _patch(2, None)]
    tumour, bg = np.ones((4, 4), np.uint8), np.zeros((4, 4), np.uint8)
    glass_only = bg.copy()
    glass_only[:, 2:] = 1  # a change on the glass does not count
    slides = [{"id": 1, "name": "skin.svs"}, {"id": 2, "name": "scc.svs"}, {"id": 3, "name": "empty.svs"}]
    d = elsewhere.drift([bg, tumour, tumour], [glass_only, tumour, bg], patches, slides, ["background", "tumour"])
    by = {r["name"]: r for r in d["slides"]}
    assert set(by) == {"skin.svs", "scc.svs"}  # a slide without a patch is left out
    assert by["skin.svs"]["pixels"] == 16 and by["skin.svs"]["changed"] == 0.0
    assert by["skin.svs"]["before"] == {"tumour": 0.5} and by["skin.svs"]["after"] == {"tumour": 0.5}
    assert by["scc.svs"]["before"] == {"tumour": 1.0} and by["scc.svs"]["after"] == {"tumour": 0.0}
    assert by["scc.svs"]["changed"] == 1.0 and not by["scc.svs"]["ok"] and by["skin.svs"]["ok"]
    assert by["scc.svs"]["shift"] == 1.0 and by["skin.svs"]["shift"] == 0.0
    assert not d["ok"] and d["limits"] == {"share": elsewhere.SHARE_LIMIT, "changed": elsewhere.CHANGE_LIMIT,
                                           "clear": elsewhere.CLEAR_SHARE, "marked": elsewhere.MARKED_SHARE}
    why = elsewhere.reason(d)
    assert "a slide nobody corrected" in why and "scc.svs: tumour 100.0% → 0.0%" in why
    assert "skin.svs" not in why and why.endswith("; look at it before making it active")
    # a new output class counts as the class it stands for (here: Stroma as background)
    merged = elsewhere.drift([tumour], [np.full((4, 4), 2, np.uint8)], [_patch(2, None)], slides[1:2],
                             ["background", "tumour"], merge=[0, 1, 0])
    assert merged["slides"][0]["after"] == {"tumour": 0.0} and merged["slides"][0]["changed"] == 1.0
    assert elsewhere.drift([], [], [], slides, ["background", "tumour"]) is None
    # tumour that moves within a slide at the same share: named only beyond the changed-pixel limit
    left, right = np.zeros((4, 4), np.uint8), np.zeros((4, 4), np.uint8)
    left[:, :2], right[:, 2:] = 1, 1
    swap = elsewhere.drift([left], [right], [_patch(2, None)], slides[1:2], ["background", "tumour"])["slides"][0]
    assert swap["shift"] == 0.0 and swap["changed"] == 1.0 and not swap["ok"]
    edge = left.copy()
    edge[0, 2] = 1  # one pixel in 16 gained: 6 % changed, 6 points of share
    small = elsewhere.drift([left], [edge], [_patch(2, None)], slides[1:2], ["background", "tumour"])["slides"][0]
    assert small["ok"] and small["changed"] == pytest.approx(1 / 16) and small["shift"] == pytest.approx(1 / 16)
    assert elsewhere.reason(None) == "" and elsewhere.reason({**d, "ok": True}) == ""
    many = {**d, "slides": [{**by["scc.svs"], "name": f"s{i}.svs"} for i in range(5)]}
    assert elsewhere.summary(many).startswith("slides nobody corrected: s0.svs: tumour 100.0% → 0.0%")
    assert elsewhere.summary(many).endswith("; 2 more, at most 100% of their pixels changed")


def test_a_slide_that_showed_no_tumour_and_now_shows_some_is_named_however_small_the_move() -> None:
    """From ``bench loop``: the benign skin went from 0.1 % to 9.7 % of its sampled tissue called
    tumour, inside both limits, and that version was made active."""
    slides = [{"id": 1, "name": "skin.svs"}]

    def share(before: float, after: float) -> dict:
        b, a = np.zeros((100, 100), np.uint8), np.zeros((100, 100), np.uint8)
        b.flat[:round(before * 10_000)] = 1
        a.flat[:round(after * 10_000)] = 1
        return elsewhere.drift([b], [a], [_patch(1, None)], slides, ["background", "tumour"])

    appears = share(0.001, 0.097)
    row = appears["slides"][0]
    assert row["shift"] <= elsewhere.SHARE_LIMIT and row["changed"] <= elsewhere.CHANGE_LIMIT
    assert row["crossed"] == ["tumour"] and not row["ok"] and not appears["ok"]
    assert "skin.svs: tumour 0.1% → 9.7% of the sampled tissue (tumour appears where none was called)" in \
        elsewhere.reason(appears)
    assert share(0.0, 0.05)["slides"][0]["crossed"] == ["tumour"]  # the first share that counts as marked
    vanishes = share(0.06, 0.005)
    assert not vanishes["ok"] and "(tumour vanishes)" in elsewhere.reason(vanishes)
    for before, after in ((0.0, 0.049), (0.01, 0.09), (0.03, 0.12 - 0.03), (0.2, 0.25), (0.06, 0.01)):
        row = share(before, after)["slides"][0]
        assert row["ok"] and row["crossed"] == [], (before, after)


def test_the_guard_names_every_check_a_version_fails() -> None:
    from engine.finetune.round import _Round, _State

    tumour, bg = np.ones((4, 4), np.uint8), np.zeros((4, 4), np.uint8)
    d = elsewhere.drift([tumour], [bg], [_patch(2, None)], [{"id": 2, "name": "scc.svs"}], ["background", "tumour"])
    why = elsewhere.reason(d)
    assert "scc.svs" in why
    r = object.__new__(_Round)  # the guard reads only these
    r.state, r.replay, r.elsewhere = _State(None), ({"miou": 0.70}, {"miou": 0.60}), d
    r.state.before = {"miou": 0.50}
    g = r.guard({"miou": 0.40})
    assert g["reason"] == ("worse on the held-out ROIs (mIoU 0.500 → 0.400); and worse on the replay sample "
                           "of its training data (mIoU 0.700 → 0.600); and " + why)
    g = r.guard({"miou": 0.55})
    assert g["reason"].startswith("worse on the replay sample") and g["reason"].endswith("; and " + why)
    r.elsewhere = None
    assert r.guard({"miou": 0.55})["reason"] == "worse on the replay sample of its training data (mIoU 0.700 → 0.600)"
    r.replay = ({"miou": 0.70}, {"miou": 0.70})
    assert r.guard({"miou": 0.55})["reason"] == ""


def _two_slides(tmp_path: Path, tumour_slide: Path) -> tuple[Path, Path]:
    """The fixture's project, and a second slide in it that nobody corrected."""
    folder = tmp_path / "project"
    project = make_project(folder, tumour_slide)
    other = write_slide(tmp_path / "uncorrected.tif", slide_rgb(seed=5))
    project.add_slide(other)
    project.close()
    return folder, other


def test_gather_cuts_tissue_of_the_slides_nobody_corrected(tmp_path: Path, tumour_slide: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    folder, other = _two_slides(tmp_path, tumour_slide)
    data = gather(folder, card(tiny_model(0)), GatherOptions(patch=64, unlabelled_per_roi=2))
    assert [s["name"] for s in data.other_slides] == [other.name]
    assert 0 < len(data.others) <= GatherOptions().others_per_slide
    ids = {p.slide_id for p in data.others}
    assert len(ids) == 1 and ids != {p.slide_id for p in data.train}  # only the uncorrected slide
    for p in data.others:
        assert p.rgb.shape == (64, 64, 3) and p.tissue.shape == (64, 64) and p.tissue.any()
        assert (p.label == 255).all()  # never a training target
    assert data.summary()["patches"]["elsewhere"] == len(data.others)
    # more of its tissue is an anchor (the parent as the target), never where it is checked
    anchors = [p for p in data.unlabelled if p.slide_id in ids]
    assert 0 < len(anchors) <= GatherOptions().anchors_per_slide
    checked = [box(p.x, p.y, p.x + p.footprint, p.y + p.footprint) for p in data.others]
    for p in anchors:
        assert (p.label == 255).all()
        assert not any(box(p.x, p.y, p.x + p.footprint, p.y + p.footprint).intersects(c) for c in checked)
    none = gather(folder, card(tiny_model(0)), GatherOptions(patch=64, others_per_slide=0, anchors_per_slide=0))
    assert none.others == [] and none.other_slides == []
    assert {p.slide_id for p in none.unlabelled} == {p.slide_id for p in data.train}
    monkeypatch.setattr("engine.finetune.data.MAX_OTHER_SLIDES", 0)  # past the cap: named, not checked
    capped = gather(folder, card(tiny_model(0)), GatherOptions(patch=64))
    assert capped.others == [] and any(other.name in n and "were not checked" in n for n in capped.notes)


def test_the_slides_viewed_last_are_checked_first(tmp_path: Path, tumour_slide: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    folder, first = _two_slides(tmp_path, tumour_slide)
    later = write_slide(tmp_path / "viewed-last.tif", slide_rgb(seed=9))
    project = Project.open(folder)
    project.add_slide(later)
    project.close()
    monkeypatch.setattr("engine.finetune.data.MAX_OTHER_SLIDES", 1)  # room for one of the two
    opts = GatherOptions(patch=64, unlabelled_per_roi=2, anchors_per_slide=0)
    plain = gather(folder, card(tiny_model(0)), opts)
    assert [s["name"] for s in plain.other_slides] == [first.name]  # the project's order
    assert any(later.name in n and "were not checked" in n for n in plain.notes)
    told = gather(folder, card(tiny_model(0)), replace(opts, check_first=(str(later), "nowhere.svs")))
    assert [s["name"] for s in told.other_slides] == [later.name]
    assert any(first.name in n and "were not checked" in n for n in told.notes)
    assert any(n.startswith("nowhere.svs: not a slide of the project") and n.endswith(": not checked first")
               for n in told.notes)


@pytest.mark.parametrize("method", ["anchored", "tiny"])
def test_a_round_that_changes_an_uncorrected_slide_is_published_but_not_made_active(
        tmp_path: Path, tumour_slide: Path, checkpoints: dict, tiny_method: str, method: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    folder, other = _two_slides(tmp_path, tumour_slide)
    reg = ModelRegistry.of_project(folder)
    reg.import_model(checkpoints["broken"])  # says "background" everywhere: learning tumour changes both slides
    kw = dict(patch=64, batch_size=4, unlabelled_per_roi=2, device="cpu", lr=3e-3)
    if method == "anchored":
        settings = RoundSettings(method="anchored", steps=40, **kw)
    else:
        settings = RoundSettings(method=tiny_method, steps=12, teacher_steps=2, paraphraser_steps=2,
                                 eval_every=4, teacher=str(checkpoints["teacher"]), **kw)
    # measured first with the limit out of reach, so that the held-out gain is the round's own
    real = {name: getattr(elsewhere, name) for name in ("CHANGE_LIMIT", "SHARE_LIMIT", "CLEAR_SHARE")}
    monkeypatch.setattr(elsewhere, "CHANGE_LIMIT", 1.0)
    monkeypatch.setattr(elsewhere, "SHARE_LIMIT", 1.0)
    monkeypatch.setattr(elsewhere, "CLEAR_SHARE", 0.0)  # no share is below 0: no slide counts as clear
    free = run_round(folder, settings)
    assert free.status == "done" and free.activated, free.message
    ew = free.data["guard"]["elsewhere"]
    assert [r["name"] for r in ew["slides"]] == [other.name] and ew["ok"]
    row = ew["slides"][0]
    assert row["before"]["tumour"] < 0.05  # the broken parent calls nothing
    assert row["after"]["tumour"] > 0.15 and row["shift"] > 0.15, row  # the new version paints tumour there
    assert f"slide nobody corrected: {other.name}: tumour " in free.message
    v = reg.get(free.version)
    assert v.metrics["elsewhere"][other.name]["changed"] == pytest.approx(row["changed"])
    # the same round under the real limits: published, not made active, the slide named
    for name, value in real.items():
        monkeypatch.setattr(elsewhere, name, value)
    reg.activate("v0001")
    held = run_round(folder, settings)
    assert held.status == "done" and held.version is not None and not held.activated, held.message
    guard = held.data["guard"]
    assert guard["heldout"]["ok"] and not guard["elsewhere"]["ok"]
    assert other.name in guard["reason"] and "nobody corrected" in guard["reason"]
    assert reg.active().version == "v0001"
    always = run_round(folder, replace(settings, activate="always"))
    assert always.activated and "although it changes the mask" in always.message

"""A round's data: partial labels from the project, held-out ROIs by region without leakage."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import shapely
from finetune_fixtures import CLASSES, ROI_BOXES, card, make_project, tiny_model, tumour_shapes
from shapely.geometry import box

from engine.annotations import Annotation, Kind
from engine.annotations.mask import fill
from engine.finetune.data import (IGNORE, GatherOptions, Region, RoundDataError, class_lut, cluster_rois,
                                  gather, split_region, split_regions)

MEAN = (0.485, 0.456, 0.406)


def _gather(project_dir: Path, mpp: float | None = 1.0, **kw):
    return gather(project_dir, card(tiny_model(0), mpp), GatherOptions(patch=64, unlabelled_per_roi=3, **kw))


def _inside(geom, p) -> np.ndarray:
    """Patch pixels whose centre lies in ``geom`` (level-0 geometry)."""
    n = p.label.shape[0]
    return fill(geom, p.x, p.y, n, n, p.footprint / n)


def _tumour(p) -> np.ndarray:
    n = p.label.shape[0]
    return fill(shapely.union_all(tumour_shapes()), p.x, p.y, n, n, p.footprint / n)


def test_patches_are_labelled_inside_rois_and_ignored_outside(project_dir: Path) -> None:
    data = _gather(project_dir)
    assert data.train and data.heldout and data.unlabelled
    assert data.mpp == 1.0 and data.train[0].footprint == 128  # 1 µm/px model on a 0.5 µm/px slide
    for side, regions in ((data.train, data.train_regions), (data.heldout, data.heldout_regions)):
        for p in side:
            reviewed = _inside(shapely.union_all([r.geometry for r in regions]), p)
            assert (p.label[~reviewed] == IGNORE).all()  # outside the ROIs: unknown
            labelled = p.label != IGNORE
            # inside: tumour where the outlines are, background elsewhere (edge pixels may differ by
            # rounding between the two rasterisations)
            agree = (p.label[labelled] == _tumour(p)[labelled]).mean()
            assert agree > 0.97
    s = data.summary()
    assert s["pixels"]["labelled"] > 0 and s["patches"]["unlabelled"] == len(data.unlabelled)
    assert {sl["name"] for sl in s["slides"]} == {"tumour.tif"}


#: Small ROIs (40 px; a patch covers 128 px around one) 36 px apart: separate regions (over a
#: quarter patch apart), yet a patch of one reaches into its neighbours.
CLOSE_ROIS = ((100, 100, 140, 140), (176, 100, 216, 140), (100, 176, 140, 216), (176, 176, 216, 216))


@pytest.mark.parametrize("layout", ["apart", "close"])
def test_heldout_split_has_no_leakage(tmp_path: Path, tumour_slide: Path, layout: str) -> None:
    rois = ROI_BOXES if layout == "apart" else CLOSE_ROIS
    make_project(tmp_path / "p", tumour_slide, rois=rois).close()
    data = _gather(tmp_path / "p", seed=3)
    train_ids = {r for reg in data.train_regions for r in reg.roi_ids}
    held_ids = {r for reg in data.heldout_regions for r in reg.roi_ids}
    assert train_ids and held_ids and not train_ids & held_ids  # whole ROIs on one side
    assert len(train_ids | held_ids) == len(rois) and len(held_ids) == 1  # 25 % of 4
    held = shapely.union_all([r.geometry for r in data.heldout_regions])
    train = shapely.union_all([r.geometry for r in data.train_regions])
    fill_rgb = np.round(255 * np.array(MEAN)).astype(np.uint8)
    blanked = 0
    for p in data.train + data.unlabelled:
        hidden = _inside(held, p)
        assert (p.label[hidden] == IGNORE).all()
        assert (p.rgb[hidden] == fill_rgb).all()  # a training patch never shows held-out tissue
        blanked += int(hidden.sum())
    assert (blanked > 0) == (layout == "close")
    for p in data.unlabelled:
        assert not held.intersects(box(p.x, p.y, p.x + p.footprint, p.y + p.footprint))
    for p in data.heldout:
        assert p.region in {r.key for r in data.heldout_regions}
        assert (p.label[_inside(train, p) & ~_inside(held, p)] == IGNORE).all()
        assert (p.label[_inside(held, p)] != IGNORE).mean() > 0.9
    assert {p.region for p in data.train} <= {r.key for r in data.train_regions}


def test_touching_rois_form_one_region_held_out_together() -> None:
    rois = [Annotation(box(0, 0, 100, 100), kind=Kind.ROI), Annotation(box(100, 0, 200, 100), kind=Kind.ROI),
            Annotation(box(120, 90, 180, 300), kind=Kind.ROI)]
    rois += [Annotation(box(600 + 200 * i, 600, 700 + 200 * i, 700), kind=Kind.ROI) for i in range(4)]
    regions = cluster_rois(rois, slide_id=1, gap=10)
    assert sorted(len(r.roi_ids) for r in regions) == [1, 1, 1, 1, 3]
    for seed in range(6):
        train, held, _, note = split_regions(regions, 0.25, seed)
        assert note is None and train and held
        assert not {i for r in train for i in r.roi_ids} & {i for r in held for i in r.roi_ids}
        assert len({i for r in train + held for i in r.roi_ids}) == 7


def test_whole_regions_are_held_out_by_area_not_by_count() -> None:
    # one large region and four small ones: holding out "a quarter of the regions" by count could
    # hold out the large one (most of what was drawn); by area the held-out share stays near 25 %
    big = Region("1:big", 1, ("big",), box(0, 0, 1000, 1000))
    small = [Region(f"1:s{i}", 1, (f"s{i}",), box(2000 + 400 * i, 0, 2300 + 400 * i, 300)) for i in range(4)]
    total = 1000 * 1000 + 4 * 300 * 300
    for seed in range(10):
        train, held, _, note = split_regions([big, *small], 0.25, seed)
        share = sum(r.geometry.area for r in held) / total
        assert note is None and "1:big" in {r.key for r in train}, seed
        assert 0 < share <= 0.375


def test_whole_regions_hold_out_each_kind_but_never_its_last() -> None:
    # a real round's regions on tcga-cr-7395 and cmu-1 (level-0 areas): three tumour boxes, three
    # septa marked as background, the skin's background ROIs. By area alone, seed 0 held out all
    # three septa (the smallest fill the share first) and the round never learnt them.
    areas = {"1:t1": (200000, "tumour"), "1:t2": (150000, "tumour"), "1:t3": (175000, "tumour"),
             "1:s1": (28800, "septum"), "1:s2": (28550, "septum"), "1:s3": (39000, "septum"),
             "2:skin": (475200, "skin")}
    regions = [Region(k, int(k[0]), (k,), box(10000 * i, 0, 10000 * i + a / 100, 100))
               for i, (k, (a, _)) in enumerate(areas.items())]
    kinds = {k: kind for k, (_, kind) in areas.items()}
    total = sum(a for a, _ in areas.values())
    for seed in range(20):
        train, held, _, note = split_regions(regions, 0.25, seed, kinds)
        assert note is None, seed
        for kind in ("tumour", "septum"):  # learnt, and checked: two or more regions of each
            assert any(kinds[r.key] == kind for r in train) and any(kinds[r.key] == kind for r in held), seed
        assert "2:skin" in {r.key for r in train}  # the only one of its kind: learnt
        assert 0.125 <= sum(areas[r.key][0] for r in held) / total <= 0.375, seed


def test_a_region_is_told_by_the_classes_it_teaches(tmp_path: Path, tumour_slide: Path) -> None:
    # three large ROIs inside tumour squares, three small ones on stroma (reviewed background)
    tumour_rois = [(350, 50, 430, 130), (500, 200, 580, 280), (650, 350, 730, 430)]
    stroma_rois = [(157, 157, 173, 173), (292, 172, 308, 188), (457, 307, 473, 323)]
    make_project(tmp_path / "p", tumour_slide, rois=tumour_rois + stroma_rois).close()
    is_tumour = {b: True for b in tumour_rois} | {b: False for b in stroma_rois}
    for seed in range(4):
        data = _gather(tmp_path / "p", seed=seed)
        sides = [{is_tumour[tuple(round(v) for v in r.geometry.bounds)] for r in regions}
                 for regions in (data.train_regions, data.heldout_regions)]
        assert sides == [{True, False}, {True, False}], seed  # each kind learnt and checked


def test_few_regions_are_each_cut_so_every_class_is_learnt_and_checked() -> None:
    regions = [Region("1:a", 1, ("a",), box(0, 0, 400, 100)), Region("1:b", 1, ("b",), box(1000, 0, 1100, 800)),
               Region("1:c", 1, ("c",), box(3000, 0, 3001, 1))]  # c: too small to cut, learnt whole
    train, held, gap, note = split_regions(regions, 0.25, 0)
    assert note.startswith("3 reviewed regions: the last 25% of each") and gap > 0
    assert [r.key for r in train] == ["1:a/train", "1:b/train", "1:c"]
    assert [r.key for r in held] == ["1:a/heldout", "1:b/heldout"]
    a = held[0].geometry.bounds
    assert a[0] > 300 and held[1].geometry.bounds[1] > 600  # each across its longer side


def test_a_single_roi_is_cut_in_two_with_a_gap() -> None:
    roi = Region("1:x", 1, ("x",), box(0, 0, 400, 100))
    train, held, gap, note = split_regions([roi], 0.25, 0)
    assert len(train) == len(held) == 1 and "single reviewed region" in note
    assert train[0].geometry.distance(held[0].geometry) >= gap - 1e-6 > 0
    assert held[0].geometry.area == pytest.approx(0.25 * 400 * 100 - gap / 2 * 100)
    assert held[0].geometry.bounds[0] > train[0].geometry.bounds[2]  # cut across the longer side
    with pytest.raises(RoundDataError, match="too small"):
        split_region(Region("1:y", 1, ("y",), box(0, 0, 1.5, 1.5)), 0.25)


def test_single_roi_project_holds_out_part_of_it(tmp_path: Path, tumour_slide: Path) -> None:
    make_project(tmp_path / "p", tumour_slide, rois=[(40, 40, 600, 330)]).close()
    data = _gather(tmp_path / "p")
    assert any("single reviewed region" in n for n in data.notes)
    held = shapely.union_all([r.geometry for r in data.heldout_regions])
    for p in data.train:
        assert (p.label[_inside(held, p)] == IGNORE).all()
    assert data.summary()["train_rois"] == data.summary()["heldout_rois"]  # one ROI, two parts


def test_model_without_mpp_cuts_at_level0_and_says_so(project_dir: Path) -> None:
    data = _gather(project_dir, mpp=None)
    assert data.train[0].footprint == 64 and data.mpp is None
    assert any("no µm/px" in n and "level 0" in n for n in data.notes)


def test_nothing_to_learn_without_rois(tmp_path: Path, tumour_slide: Path) -> None:
    make_project(tmp_path / "p", tumour_slide, rois=[]).close()
    assert _gather(tmp_path / "p") is None


def test_class_lut_matches_names_and_says_what_it_did() -> None:
    lut, notes = class_lut(["Tumor", "Stroma"], CLASSES)
    assert (lut[0], lut[1], lut[2], lut[255]) == (0, 1, 0, IGNORE)
    assert any("'Stroma' is taken as 'background'" in n for n in notes)
    # never by position, nor because it is the only class drawn: a lone Stroma outline is not tumour
    lut, notes = class_lut(["Stroma"], CLASSES)
    assert lut[1] == 0 and any("learns only what is not tumour" in n for n in notes)
    assert any("'Stroma' is taken as 'background'" in n for n in notes)
    lut, _ = class_lut(["Lesion", "Stroma"], CLASSES)
    assert (lut[1], lut[2]) == (0, 0)
    lut, _ = class_lut(["Lesion", "Stroma", "Tumour"], CLASSES, used={"Tumour"})
    assert (lut[1], lut[2], lut[3]) == (0, 0, 1)
    lut, notes = class_lut(["necrosis", "Tumour"], ["background", "tumour", "stroma"])
    assert (lut[1], lut[2]) == (IGNORE, 1) and "ignored" in notes[0]

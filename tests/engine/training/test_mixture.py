"""The training mixture: tumour and real negatives, keyed and split by case across folders, negatives'
masks taken as background, balanced sampling, per-folder scores, the split rebuilt from a card."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from engine.shared_data import data_path
from engine.training import mixture
from engine.training.datasets import DatasetError, case_of, find_pairs, load_pair, split_by_case, split_from_cases
from engine.training.loader import SegDataset
from engine.training.runs import DataSpec, data_from_card, load_data


def test_case_ids_of_both_naming_schemes() -> None:
    pattern = re.compile(mixture.REGEX)
    assert case_of("GT2012237-1-400-005", pattern) == "GT2012237"
    assert case_of("ebhi-normal/GTxc2012827-2-400-003", pattern) == "GTxc2012827"
    assert case_of("camelyon-tumour/10672", pattern) == case_of("10679", pattern) == "1067"
    with pytest.raises(DatasetError):
        case_of("notes", pattern)


def test_folders_sharing_file_names_are_keyed_by_folder() -> None:
    folders = [data_path("seg", f) for f in mixture.FOLDERS]
    with pytest.raises(DatasetError, match="same name"):
        find_pairs(folders[:5])  # the EBHI classes share file names: unqualified keys collide
    pairs = find_pairs(folders, qualified=True)
    keys = [p.key for p in pairs]
    assert len(keys) == len(set(keys)) and all("/" in k for k in keys)
    assert {k.split("/")[0] for k in keys} == set(mixture.FOLDERS)


def test_one_patients_tiles_of_every_class_fall_in_one_part() -> None:
    pairs = find_pairs([data_path("seg", f) for f in mixture.FOLDERS], qualified=True)
    split = split_by_case([p.key for p in pairs], mixture.REGEX, seed=0)
    pattern = re.compile(mixture.REGEX)
    part_of_case: dict[str, set[str]] = {}
    folders_of_case: dict[str, set[str]] = {}
    for part in ("train", "val", "test"):
        for key in split[part]:  # type: ignore[union-attr]
            case = case_of(key, pattern)
            part_of_case.setdefault(case, set()).add(part)
            folders_of_case.setdefault(case, set()).add(key.split("/")[0])
    assert all(len(parts) == 1 for parts in part_of_case.values())
    assert any(len(f) > 1 for f in folders_of_case.values())  # cases do span folders: the check means something
    negatives_in_test = {k.split("/")[0] for k in split["test"]} & set(mixture.FP_TARGET_FOLDERS)  # type: ignore[union-attr]
    assert negatives_in_test == set(mixture.FP_TARGET_FOLDERS)


def test_a_negative_tiles_mask_is_all_background() -> None:
    pair = next(p for p in find_pairs([data_path("seg", "ebhi-normal")]) if load_pair(p)[1].any())
    # its file outlines the normal glands, which are not tumour:
    _, mask = load_pair(pair, negative=True)
    assert not mask.any()  # … which are not tumour


def test_balanced_training_part_and_per_folder_scores(tiny_mixture: Path, tmp_path: Path) -> None:
    spec = DataSpec((str(tiny_mixture / "ebhi-adenocarcinoma"), str(tiny_mixture / "ebhi-normal")), mixture.REGEX,
                    str(tmp_path / "split.json"), crop=64, negatives=("ebhi-normal",), balance=True)
    data = load_data(spec)
    has_tumour = [bool(m.any()) for _, m in data.train.items]
    assert sum(has_tumour) == len(has_tumour) - sum(has_tumour) > 0
    assert not any(m.any() for p, (_, m) in zip(data.test.pairs, data.test.items) if "normal" in p.source)

    class Constant(nn.Module):  # calls every pixel tumour
        classes, stride = 2, 32

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.stack([torch.zeros_like(x[:, 0]), torch.ones_like(x[:, 0])], 1)

    every = SegDataset(find_pairs(spec.folders, qualified=True), negatives=frozenset({"ebhi-normal"}))
    res = mixture.evaluate_by_source(Constant(), every, ["background", "tumour"])
    per = res["per_source"]
    assert per["ebhi-normal"]["tumour_share"] == pytest.approx(1.0)
    # the normal glands the tiles' own masks outline, and the rest: both all called tumour here
    assert 0 < per["ebhi-normal"]["lesion_share"] < 1
    assert per["ebhi-normal"]["lesion_tumour_share"] == per["ebhi-normal"]["outside_lesion_tumour_share"] == 1.0
    assert per["ebhi-adenocarcinoma"]["miou"] == pytest.approx(per["ebhi-adenocarcinoma"]["all_tumour_miou"])
    assert res["negatives_tumour_share"] == pytest.approx(1.0)


def test_a_folder_repeated_before_balancing(tiny_mixture: Path, tmp_path: Path) -> None:
    folders = (str(tiny_mixture / "ebhi-adenocarcinoma"), str(tiny_mixture / "ebhi-normal"))
    plain = load_data(DataSpec(folders, mixture.REGEX, str(tmp_path / "split.json"), crop=64,
                               negatives=("ebhi-normal",)))
    spec = DataSpec(folders, mixture.REGEX, str(tmp_path / "split.json"), crop=64, negatives=("ebhi-normal",),
                    balance=True, repeat=(("ebhi-normal", 3),))
    data = load_data(spec)

    def count(ds: SegDataset, folder: str) -> int:
        return sum(Path(p.source).name == folder for p in ds.pairs)

    normal = count(plain.train, "ebhi-normal")
    assert normal > 0 and count(data.train, "ebhi-normal") == 3 * normal  # repeated first …
    has_tumour = [bool(m.any()) for _, m in data.train.items]
    assert sum(has_tumour) == len(has_tumour) - sum(has_tumour)  # … then balanced against the repeats
    assert count(data.test, "ebhi-normal") == count(plain.test, "ebhi-normal")  # evaluation is untouched
    with pytest.raises(DatasetError, match="no training image"):
        load_data(DataSpec(folders, mixture.REGEX, str(tmp_path / "split.json"), repeat=(("ebhi-polyp", 2),)))
    with pytest.raises(DatasetError, match="whole numbers"):
        load_data(DataSpec(folders, mixture.REGEX, str(tmp_path / "split.json"), repeat=(("ebhi-normal", 0),)))


def test_unknown_negative_folder_is_refused(tiny_mixture: Path, tmp_path: Path) -> None:
    spec = DataSpec((str(tiny_mixture / "ebhi-adenocarcinoma"),), mixture.REGEX, str(tmp_path / "s.json"),
                    negatives=("ebhi-normal",))
    with pytest.raises(DatasetError, match="not among the data folders"):
        load_data(spec)


def test_the_split_is_rebuilt_from_a_cards_case_lists(tiny_mixture: Path, tmp_path: Path) -> None:
    spec = DataSpec((str(tiny_mixture / "ebhi-adenocarcinoma"), str(tiny_mixture / "ebhi-normal")), mixture.REGEX,
                    str(tmp_path / "split.json"), negatives=("ebhi-normal",))
    data = load_data(spec)
    card = {"data": {"folders": ["ebhi-adenocarcinoma", "ebhi-normal"], "group_regex": mixture.REGEX,
                     "negatives": ["ebhi-normal"], **{f"{p}_cases": data.split[f"{p}_cases"]
                                                      for p in ("train", "val", "test")}},
            "classes": ["background", "tumour"], "input": {"short_side": None}}
    again = data_from_card(card, tiny_mixture)
    for part in ("train", "val", "test"):
        assert [p.key for p in again.part(part).pairs] == data.split[part]
    keys = [p.key for p in find_pairs(spec.folders, qualified=True)]
    with pytest.raises(DatasetError, match="no train"):
        split_from_cases(keys, mixture.REGEX, {})


def test_rescaled_tiles_keep_masks_aligned(tiny_mixture: Path, tmp_path: Path) -> None:
    spec = DataSpec((str(tiny_mixture / "ebhi-adenocarcinoma"),), mixture.REGEX, str(tmp_path / "s.json"))
    test = load_data(spec).test
    half = test.rescaled(0.5)
    img, mask = test.items[0]
    img2, mask2 = half.items[0]
    assert img2.shape[:2] == mask2.shape == (round(mask.shape[0] / 2), round(mask.shape[1] / 2))
    assert abs(mask2.mean() - mask.mean()) < 0.05 and set(np.unique(mask2)) <= {0, 1}


def test_a_threshold_sweep_scores_every_rule_in_one_pass(tiny_mixture: Path) -> None:
    """A network whose tumour probability is the red channel: at threshold t exactly the pixels with
    red > t are tumour; None (the argmax) is evaluate_by_source's answer; a threshold above every
    probability calls nothing tumour."""
    from engine.training.metrics import ConfusionMatrix

    class Red(torch.nn.Module):
        stride = 1
        calls = 0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            Red.calls += 1
            p = x[:, 0].clamp(1e-3, 1 - 1e-3)  # the normalised red channel, clamped into (0, 1)
            return torch.stack([torch.log(1 - p), torch.log(p)], 1)

    folders = (str(tiny_mixture / "ebhi-adenocarcinoma"), str(tiny_mixture / "ebhi-normal"))
    every = SegDataset(find_pairs(folders, qualified=True), negatives=frozenset({"ebhi-normal"}))
    classes = ["background", "tumour"]
    argmax, strict, none = mixture.sweep_by_source(Red(), every, classes, [None, 0.6, 0.9999])
    assert Red.calls == len(every)  # one forward pass per image for all three rules
    assert argmax == mixture.evaluate_by_source(Red(), every, classes)
    assert none["negatives_tumour_share"] == 0.0 and none["per_source"]["ebhi-normal"]["tumour_share"] == 0.0
    assert none["per_source"]["ebhi-normal"]["lesion_tumour_share"] == 0.0
    # inside and outside the lesion, weighted by their areas, make the tile's share
    row = strict["per_source"]["ebhi-normal"]
    assert row["lesion_share"] * row["lesion_tumour_share"] + (1 - row["lesion_share"]) * \
        row["outside_lesion_tumour_share"] == pytest.approx(row["tumour_share"])
    assert none["per_source"]["ebhi-adenocarcinoma"]["miou"] == pytest.approx(
        none["per_source"]["ebhi-adenocarcinoma"]["all_background_miou"])
    cm = ConfusionMatrix(2)  # the 0.6 rule by hand on the adenocarcinoma tiles
    for i, pair in enumerate(every.pairs):
        if Path(pair.source).name == "ebhi-adenocarcinoma":
            img, mask = every[i]
            cm.update(mask.numpy(), (img[0].clamp(1e-3, 1 - 1e-3) > 0.6).numpy())
    assert strict["per_source"]["ebhi-adenocarcinoma"]["miou"] == pytest.approx(cm.summary(classes)["miou"])
    assert strict["negatives_tumour_share"] <= argmax["negatives_tumour_share"]
    with pytest.raises(ValueError, match="two-class"):
        mixture.sweep_by_source(Red(), every, ["background", "tumour", "stroma"], [0.5])


def test_every_folder_with_three_cases_reaches_validation_and_test() -> None:
    """A folder of few cases (CAMELYON: 4) is not left to chance: whatever the seed, validation and
    test each hold one of its cases, train keeps the rest; the big folder's split barely moves."""
    stems = [f"ebhi-adenocarcinoma/GT{i:04d}-1-400-{j}" for i in range(40) for j in range(3)]
    stems += [f"camelyon-tumour/{case}{k}" for case in (1007, 1067, 1068, 1069) for k in range(8)]
    for seed in range(12):
        split = split_by_case(stems, mixture.REGEX, seed=seed)
        for part in ("train", "val", "test"):
            assert any(s.startswith("camelyon") for s in split[part]), (seed, part)
            assert any(s.startswith("ebhi") for s in split[part]), (seed, part)
        assert sum(len(split[f"{p}_cases"]) for p in ("train", "val", "test")) == 44
        assert not set(split["val_cases"]) & set(split["test_cases"])

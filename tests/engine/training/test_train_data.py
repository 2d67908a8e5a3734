from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.shared_data import data_path
from engine.training.augment import AugmentConfig, augment, hed_jitter
from engine.training.datasets import DatasetError, find_pairs, load_or_make_split, load_pair, split_by_case
from engine.training.loader import SegDataset

REGEX = r"^(.*?)-\d+-400-\d+$"


@pytest.fixture(scope="module")
def ebhi_stems() -> list[str]:
    return [p.stem for p in find_pairs([data_path("seg", "ebhi-adenocarcinoma")])]


def test_split_never_puts_one_case_on_two_sides(ebhi_stems: list[str]) -> None:
    split = split_by_case(ebhi_stems, REGEX, seed=3)
    case = re.compile(REGEX)
    sides = {name: {case.match(s).group(1) for s in split[name]} for name in ("train", "val", "test")}  # type: ignore[union-attr]
    assert not sides["train"] & sides["val"] and not sides["train"] & sides["test"] and not sides["val"] & sides["test"]
    assert sorted(split["train"] + split["val"] + split["test"]) == sorted(ebhi_stems)  # type: ignore[operator]
    assert len(sides["train"]) + len(sides["val"]) + len(sides["test"]) == 96  # the data's 96 cases
    assert split_by_case(ebhi_stems, REGEX, seed=3) == split


def test_split_is_written_once_and_reused(tmp_path: Path, ebhi_stems: list[str]) -> None:
    path = tmp_path / "split.json"
    first = load_or_make_split(path, ebhi_stems, REGEX, seed=1)
    assert json.loads(path.read_text())["test"] == first["test"]
    again = load_or_make_split(path, ebhi_stems, REGEX, seed=99)  # seed ignored: the file wins
    assert again["test"] == first["test"]
    with pytest.raises(DatasetError, match="regex"):
        load_or_make_split(path, ebhi_stems, r"^(.*)$")
    with pytest.raises(DatasetError, match="does not cover"):
        load_or_make_split(path, [*ebhi_stems, "GT999-1-400-001"], REGEX)


def test_names_that_do_not_match_the_regex_are_a_clear_error() -> None:
    with pytest.raises(DatasetError, match="does not match"):
        split_by_case(["a-1-400-1", "b-1-400-1", "c-1-400-1", "oddname"], REGEX)


def test_folder_pairs_and_binary_threshold(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    Image.fromarray(np.full((8, 8, 3), 200, np.uint8)).save(tmp_path / "images" / "a.png")
    Image.fromarray(np.full((8, 8, 3), 200, np.uint8)).save(tmp_path / "images" / "lonely.jpg")
    mask = np.zeros((8, 8), np.uint8)
    mask[:, 4:] = 128
    mask[0, 0] = 127
    Image.fromarray(mask).save(tmp_path / "masks" / "a.png")
    pairs = find_pairs([tmp_path])
    assert [p.stem for p in pairs] == ["a"]
    img, m = load_pair(pairs[0])
    assert img.shape == (8, 8, 3) and m[0, 0] == 0 and m[0, 7] == 1 and m.sum() == 32
    with pytest.raises(DatasetError, match="images/ and masks/"):
        find_pairs([tmp_path / "images"])


def test_augmentation_is_deterministic_per_seed_and_keeps_masks_binary() -> None:
    pair = find_pairs([data_path("seg", "ebhi-adenocarcinoma")])[0]
    img, mask = load_pair(pair)
    cfg = AugmentConfig(crop=96)
    a1 = augment(img, mask, np.random.default_rng((0, 1, 2)), cfg)
    a2 = augment(img, mask, np.random.default_rng((0, 1, 2)), cfg)
    a3 = augment(img, mask, np.random.default_rng((0, 1, 3)), cfg)
    assert np.array_equal(a1[0], a2[0]) and np.array_equal(a1[1], a2[1])
    assert not np.array_equal(a1[0], a3[0])
    assert a1[0].shape == (96, 96, 3) and set(np.unique(a1[1])) <= {0, 1}


def test_hed_jitter_identity_at_zero_and_stain_change_otherwise() -> None:
    img, _ = load_pair(find_pairs([data_path("seg", "ebhi-adenocarcinoma")])[0])
    same = hed_jitter(img, np.random.default_rng(0), 0.0)
    assert np.abs(same.astype(int) - img.astype(int)).max() <= 1
    moved = hed_jitter(img, np.random.default_rng(0), 0.2)
    assert np.abs(moved.astype(int) - img.astype(int)).mean() > 2


def test_dataset_resizes_and_normalises() -> None:
    pairs = find_pairs([data_path("seg", "ebhi-adenocarcinoma")])[:2]
    ds = SegDataset(pairs, size=32)
    x, y = ds[0]
    assert x.shape == (3, 32, 32) and y.shape == (32, 32) and y.dtype.is_floating_point is False
    assert -3 < float(x.mean()) < 3


def test_label_index_masks_and_duplicate_names_across_folders(tmp_path: Path) -> None:
    for folder in ("a", "b"):
        (tmp_path / folder / "images").mkdir(parents=True)
        (tmp_path / folder / "masks").mkdir()
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / folder / "images" / "x.png")
        Image.fromarray(np.array([[0, 1, 2, 2]] * 4, np.uint8)).save(tmp_path / folder / "masks" / "x.png")
    (pair,) = find_pairs([tmp_path / "a"])
    _, idx = load_pair(pair, mask_mode="index")
    assert idx[0].tolist() == [0, 1, 2, 2]
    _, binary = load_pair(pair)
    assert binary.max() == 0  # grey levels 1 and 2 are below the 127 threshold
    with pytest.raises(DatasetError, match="same name"):
        find_pairs([tmp_path / "a", tmp_path / "b"])
    with pytest.raises(DatasetError, match="mask mode"):
        load_pair(pair, mask_mode="rgb")

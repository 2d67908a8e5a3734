"""bench finetune: the simulated pathologist's slides, corrections and scoring, and a tiny run of the
whole benchmark (tiny slides, tiny model, two round steps) through the command line."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from engine.annotations import Project
from engine.annotations.rois import IGNORE, partial_label_mask
from engine.errors import CocoPathError
from engine.finetune.simulate import (CELL, build_slide, candidate_regions, confusion,
                                      random_regions, roi_mask, summarize, unseen_pairs,
                                      write_corrections)
from engine.inference.cache import PredictionCache
from engine.inference.geometry import PredictionGrid
from engine.shared_data import data_path
from engine.slide import open_slide
from engine.slide.request import RegionRequest
from engine.training.datasets import DEFAULT_GROUP_REGEX, find_pairs, split_by_case


@pytest.fixture(scope="module")
def adeno() -> Path:
    return data_path("seg", "ebhi-adenocarcinoma")


@pytest.fixture(scope="module")
def small_slide(tmp_path_factory: pytest.TempPathFactory, adeno: Path):
    pairs, _ = unseen_pairs(adeno)
    return build_slide(tmp_path_factory.mktemp("slide"), "tiny", pairs[:4], mpp=1.0, border=32)


def test_only_test_cases_and_never_a_case_the_card_trained_on(adeno: Path) -> None:
    stems = [p.stem for p in find_pairs([adeno])]
    split = split_by_case(stems, DEFAULT_GROUP_REGEX, (0.7, 0.15, 0.15), 0)
    case = re.compile(DEFAULT_GROUP_REGEX)
    pairs, info = unseen_pairs(adeno)
    assert {p.stem for p in pairs} == set(split["test"])
    assert not {case.match(p.stem).group(1) for p in pairs} & set(split["train_cases"] + split["val_cases"])
    # a card whose training cases include a test case: that case is left out
    seen = split["test_cases"][0]
    fewer, info2 = unseen_pairs(adeno, {"data": {"train_cases": [seen]}})
    assert seen in info2["left_out_seen_cases"]
    assert all(case.match(p.stem).group(1) != seen for p in fewer) and len(fewer) < len(pairs)
    with pytest.raises(CocoPathError, match="never trained on"):
        unseen_pairs(adeno, {"data": {"train_cases": split["test_cases"]}})


def test_the_slide_shows_the_tiles_and_carries_their_truth(small_slide, adeno: Path) -> None:
    from PIL import Image

    s = small_slide
    assert s.size == (2 * CELL + 64, 2 * CELL + 64)
    assert s.known.sum() == 4 * CELL * CELL
    with open_slide(s.path) as slide:
        info = slide.info
        assert info.mpp is not None and info.mpp[0] == pytest.approx(1.0, rel=1e-3)
        assert info.level_count >= 2
        for i, stem in enumerate(s.tiles):
            r, c = divmod(i, 2)
            x, y = 32 + c * CELL, 32 + r * CELL
            rgb = slide.read_rgb(RegionRequest(info.path, 0, x, y, CELL, CELL))
            image = np.asarray(Image.open(adeno / "images" / f"{stem}.png").convert("RGB"))
            mask = np.asarray(Image.open(adeno / "masks" / f"{stem}.png").convert("L")) > 127
            err = np.abs(rgb.astype(int) - image).mean()
            other = np.asarray(Image.open(adeno / "images" / f"{s.tiles[(i + 1) % 4]}.png").convert("RGB"))
            assert err < 6 and err * 3 < np.abs(rgb.astype(int) - other).mean()  # JPEG tiles
            assert np.array_equal(s.truth[y:y + CELL, x:x + CELL], mask)
    assert not s.truth[:32].any() and not s.known[:, :32].any()  # glass around


def test_corrections_label_exactly_the_truth_inside_the_rois(small_slide, tmp_path: Path) -> None:
    s = small_slide
    rects = [(40, 40, 128, 128), (300, 250, 128, 128)]
    with Project.create(tmp_path / "p") as project:
        n = write_corrections(project, s, rects, "tumour")
        store = project.store(project.add_slide(s.path))
        anns = store.annotations(kind=None)
        assert n == len(anns) and len(store.rois()) == 2
        assert {a.author for a in anns} == {"simulated pathologist"}
        w, h = s.size
        label = partial_label_mask(anns, project.classes(), 0, 0, w, h)
    inside = roi_mask(s, rects)
    assert inside.sum() == 2 * 128 * 128
    assert np.array_equal(label[inside], s.truth[inside].astype(np.uint8))
    assert (label[~inside] == IGNORE).all()


def _cache_of(tmp: Path, s, prob: np.ndarray) -> PredictionCache:
    w, h = s.size
    grid = PredictionGrid(str(s.path), (w, h), 1.0, 0, 1.0, 64, 0)
    cols, rows = grid.shape
    cache = PredictionCache.open(tmp, grid, "v", 1, np.ones((rows, cols), bool))
    for c, r in grid.tiles():
        tile = np.zeros((64, 64, 1), np.uint8)
        part = prob[r * 64:(r + 1) * 64, c * 64:(c + 1) * 64]
        tile[:part.shape[0], :part.shape[1], 0] = part
        cache.write_tile(c, r, tile, flush=False)
    cache.flush()
    return cache


def test_scoring_counts_only_the_chosen_pixels(small_slide, tmp_path: Path) -> None:
    s = small_slide
    truth = s.truth.astype(np.uint8) * 255
    perfect = _cache_of(tmp_path / "a", s, truth)
    wrong = _cache_of(tmp_path / "b", s, 255 - truth)
    where = s.known & ~roi_mask(s, [(40, 40, 128, 128)])
    m = confusion(perfect, s, where)
    assert m.sum() == where.sum()
    assert m[0, 1] == m[1, 0] == 0 and m[1, 1] == (s.truth & where).sum()
    assert summarize(m, ["background", "tumour"])["miou"] == pytest.approx(1.0)
    assert summarize(confusion(wrong, s, where), ["background", "tumour"])["miou"] == 0.0
    # half wrong: tumour everywhere
    everywhere = _cache_of(tmp_path / "c", s, np.full(truth.shape, 200, np.uint8))
    frac = s.truth[where].mean()
    assert summarize(confusion(everywhere, s, where), ["background", "tumour"])["miou"] == \
        pytest.approx(frac / 2, abs=1e-6)


def test_random_regions_are_on_tissue_and_apart(small_slide) -> None:
    s = small_slide
    cands = candidate_regions(s, 128)
    assert cands and all(s.known[y:y + 128, x:x + 128].mean() >= 0.5 for x, y in cands)
    picked = random_regions([s, s], 128, 6, seed=3)
    assert len(picked) == 6 and picked == random_regions([s, s], 128, 6, seed=3)
    for i, (si, a) in enumerate(picked):
        for sj, b in picked[i + 1:]:
            if si == sj:
                assert not (a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3]
                            and b[1] < a[1] + a[3])
    with pytest.raises(CocoPathError, match="only"):
        random_regions([s], 128, 50)


def tiny_model(path: Path) -> Path:
    """An untrained small student with a card: 256-pixel windows at 1 µm/px."""
    from engine.models import create_model
    from engine.training.checkpoints import save_model
    from engine.training.loader import MEAN, STD

    model = create_model("mobile-unet-small", classes=2)
    meta = {"model": model.config, "classes": ["background", "tumour"],
            "input": {"mpp": 1.0, "tile": 256, "mean": list(MEAN), "std": list(STD)}}
    return save_model(path, model, meta)


def test_review_next_takes_each_slides_list_in_turn() -> None:
    """Slide 1's scores are all lower (a confidently wrong, stain-shifted slide), yet its best
    region comes second, before slide 0's second best; a slide whose list runs out drops out."""
    from engine.finetune.bench import interleave

    a = [(0, "a1", 0.9), (0, "a2", 0.8), (0, "a3", 0.7)]
    b = [(1, "b1", 0.3)]
    c = [(2, "c1", 0.5), (2, "c2", 0.4)]
    assert [t[1] for t in interleave([a, b, c])] == ["a1", "c1", "b1", "a2", "c2", "a3"]
    assert interleave([]) == [] and interleave([[], a[:1]]) == a[:1]


def test_the_model_predicts_the_slide_and_review_next_picks_from_it(small_slide, tmp_path: Path) -> None:
    from engine.finetune.bench import review_next
    from engine.finetune.simulate import predict

    s = small_slide
    model = tiny_model(tmp_path / "tiny.safetensors")
    cache = predict(s.path, model, tmp_path / "cache", device="cpu")
    assert cache.complete and cache.grid.downsample == pytest.approx(1.0)
    m = confusion(cache, s, s.known)
    assert m.sum() == s.known.sum()
    picked = review_next([cache, cache], 128, 3, 0.5)
    assert len(picked) == 3
    assert {p[0] for p in picked[:2]} == {0, 1}  # each slide's best before any slide's second
    assert picked[0][2] == picked[1][2] >= picked[2][2]
    assert all(0.0 <= p[2] <= 1.0 for p in picked)
    with pytest.raises(CocoPathError, match="only"):
        review_next([cache], 128, 100, 0.5)


@pytest.mark.slow
def test_the_whole_benchmark_runs_from_the_command_line(tmp_path: Path, tiny_method: str,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """Tiny slides (2 tiles each), a tiny untrained student, two round steps of 64-pixel patches with
    a small critic: the harness runs end to end and writes the JSON (miou_before / miou_after for k)
    and the table."""
    import argparse

    from engine.finetune.bench import register_bench

    model = tiny_model(tmp_path / "tiny.safetensors")
    parser = argparse.ArgumentParser()
    bench = parser.add_subparsers().add_parser("bench").add_subparsers()
    register_bench(bench)
    out = tmp_path / "out" / "finetune.json"
    args = parser.parse_args(["bench", "finetune", "--model", str(model), "--k", "1", "--steps", "2",
                              "--batch-size", "2", "--patch", "64", "--method", tiny_method, "--no-teacher", "--device", "cpu",
                              "--region-px", "128", "--tiles", "2", "--workdir", str(tmp_path / "w"),
                              "--out", str(out)])
    assert args.func(args) == 0
    said = capsys.readouterr().err
    for line in ("k1-review: student 2/2", "k1-random: student 2/2", "k1-review: publish 1/1"):
        assert line in said, said  # the round's progress reaches the console
    report = json.loads(out.read_text())
    assert set(report["k"]) == {"1"}
    for k, e in report["k"].items():
        for key in ("miou_before", "miou_after", "miou_after_random", "miou_active_after"):
            assert 0.0 <= e[key] <= 1.0, (k, key)
        assert len(e["review"]["rois"]) == len(e["random"]["rois"]) == int(k)
        assert e["review"]["status"] == e["random"]["status"] == "done"
        assert e["review"]["version"] == e["random"]["version"] == "v0002"  # v0001: the start
        assert e["eval_pixels"] > 0 and e["round_s"] > 0
        assert e["gain"] == pytest.approx(e["miou_after"] - e["miou_before"])
        rois = [tuple(r["rect"]) for r in e["review"]["rois"] + e["random"]["rois"]]
        assert all(w == h == 128 for _, _, w, h in rois)
    slides = {s["name"]: s for s in report["slides"]}
    assert slides["adenocarcinoma-unseen"]["tiles"] == 2 and slides["ebhi-polyp-shift"]["tiles"] == 2
    assert report["settings"]["round"]["steps"] == 2 and report["device"] == "cpu"
    assert report["settings"]["round"]["method"] == tiny_method
    table = out.with_suffix(".md").read_text()
    assert "| 1 |" in table and "Review next" in table
    # each k's projects hold the corrections and both versions
    from engine.finetune.registry import ModelRegistry

    for tag in ("k1-review", "k1-random"):
        reg = ModelRegistry.of_project(tmp_path / "w" / "projects" / tag)
        assert [v.version for v in reg.versions()] == ["v0001", "v0002"]
        with Project.open(tmp_path / "w" / "projects" / tag) as project:
            assert sum(len(project.store(s).rois()) for s in project.slides()) == 1

"""bench finetune: the simulated pathologist's slides (of images whose case the model never saw),
corrections and scoring, ``--data`` folders and seeds, the verdicts computed from the numbers, and a
tiny run of the whole benchmark (tiny slides, tiny model, short rounds) through the command line."""

from __future__ import annotations

import argparse
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from engine.annotations import Project
from engine.annotations.rois import IGNORE, partial_label_mask
from engine.errors import CocoPathError
from engine.finetune.simulate import (CELL, build_slide, candidate_regions, confusion,
                                      is_negative, random_regions, roi_mask, summarize,
                                      unseen_pairs, write_corrections)
from engine.inference.cache import PredictionCache
from engine.inference.geometry import PredictionGrid
from engine.shared_data import data_path
from engine.slide import open_slide
from engine.slide.request import RegionRequest
from engine.training.datasets import DEFAULT_GROUP_REGEX, case_of, find_pairs, split_by_case

REPO = Path(__file__).resolve().parents[3]
STUDENT_CARD = REPO / "resources" / "models" / "cocopath-student-tumour.json"


@pytest.fixture(scope="module")
def adeno() -> Path:
    return data_path("seg", "ebhi-adenocarcinoma")


@pytest.fixture(scope="module")
def small_slide(tmp_path_factory: pytest.TempPathFactory, adeno: Path):
    pairs, _ = unseen_pairs(adeno)
    return build_slide(tmp_path_factory.mktemp("slide"), "tiny", pairs[:4], mpp=1.0, border=32)


def tile_folder(root: Path, source: Path, count: int, prefix: str = "tile") -> Path:
    """A folder of the shared seg/ layout holding ``count`` real tiles of ``source``, renamed so
    that their names carry no case id."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i, pair in enumerate(find_pairs([source])[:count]):
        shutil.copy(pair.image, root / "images" / f"{prefix}{i}{pair.image.suffix}")
        shutil.copy(pair.mask, root / "masks" / f"{prefix}{i}{pair.mask.suffix}")
    return root


def test_without_case_lists_the_folders_own_test_cases(adeno: Path) -> None:
    stems = [p.stem for p in find_pairs([adeno])]
    split = split_by_case(stems, DEFAULT_GROUP_REGEX, (0.7, 0.15, 0.15), 0)
    case = re.compile(DEFAULT_GROUP_REGEX)
    pairs, info = unseen_pairs(adeno)
    assert {p.stem for p in pairs} == set(split["test"])
    assert not {case.match(p.stem).group(1) for p in pairs} & set(split["train_cases"] + split["val_cases"])
    assert info["images"] == len(pairs) and "test part" in info["from"]


def test_the_shipped_students_case_lists_decide_what_is_unseen(adeno: Path) -> None:
    """The student trained on a mixture split by case over six folders: every image of a case it
    trained or validated on is left out, in every folder (EBHI folders share case ids), and what is
    left of its own folders is exactly its test cases."""
    card = json.loads(STUDENT_CARD.read_text())
    data = card["data"]
    seen = set(data["train_cases"]) | set(data["val_cases"])
    pattern = re.compile(data["group_regex"])
    for name in ("ebhi-adenocarcinoma", "ebhi-polyp", "camelyon-tumour"):
        folder = data_path("seg", name)
        pairs, info = unseen_pairs(folder, card)
        cases = {case_of(p.stem, pattern) for p in pairs}
        assert pairs and not cases & seen, name
        assert cases <= set(data["test_cases"]) and info["unlisted_cases"] == []
        every = {case_of(p.stem, pattern) for p in find_pairs([folder])}
        assert set(info["left_out_seen_cases"]) == every & seen
        assert info["images"] + info["left_out_images"] == len(find_pairs([folder]))
    # the folder's own split would have kept cases the student trained on
    own, _ = unseen_pairs(adeno)
    assert {case_of(p.stem, pattern) for p in own} & seen
    # a card that lists one case: every other image of the folder is unseen
    one = sorted(seen & {case_of(p.stem, pattern) for p in find_pairs([adeno])})[0]
    rest, info = unseen_pairs(adeno, {"data": {"train_cases": [one], "group_regex": data["group_regex"]}})
    assert info["left_out_seen_cases"] == [one]
    assert len(rest) == len(find_pairs([adeno])) - info["left_out_images"] > 0
    with pytest.raises(CocoPathError, match="never trained on"):
        unseen_pairs(adeno, {"data": {"train_cases": sorted(every_case(adeno, pattern))}})


def every_case(folder: Path, pattern: re.Pattern[str]) -> set[str]:
    return {case_of(p.stem, pattern) for p in find_pairs([folder])}


def test_names_without_a_case_id_and_negative_folders(tmp_path: Path, adeno: Path) -> None:
    folder = tile_folder(tmp_path / "mine", adeno, 3)
    pairs, info = unseen_pairs(folder)
    assert len(pairs) == 3 and "every image" in info["from"]
    card = json.loads(STUDENT_CARD.read_text())
    pairs, info = unseen_pairs(folder, card)  # no case id: each image its own, never seen
    assert len(pairs) == 3 and info["no_case_id"] == 3
    assert is_negative(data_path("seg", "ebhi-polyp"), card)
    assert not is_negative(adeno, card) and not is_negative(folder, card)
    assert not is_negative(data_path("seg", "ebhi-polyp"), None)
    # a negative folder's truth is background whatever its masks outline
    negative = build_slide(tmp_path / "s", "neg", pairs, mpp=1.0, border=16, negative=True)
    positive = build_slide(tmp_path / "s", "pos", pairs, mpp=1.0, border=16)
    assert positive.truth.any() and not negative.truth.any()
    assert np.array_equal(negative.known, positive.known)


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


def parser() -> argparse.ArgumentParser:
    from engine.finetune.bench import register_bench

    p = argparse.ArgumentParser()
    register_bench(p.add_subparsers().add_parser("bench").add_subparsers())
    return p


def test_data_folders_seeds_and_round_settings_from_the_command_line(tmp_path: Path,
                                                                     adeno: Path) -> None:
    from engine.finetune.bench import config_from_args, round_settings, slide_folders

    a = tile_folder(tmp_path / "a" / "set", adeno, 2)
    b = tile_folder(tmp_path / "b" / "set", adeno, 2)  # same folder name: the slides get two names
    args = parser().parse_args(["bench", "finetune", "--data", f"{a},{b},camelyon-tumour",
                                "--seeds", "2", "--seed", "5", "--budget", "12"])
    cfg = config_from_args(args)
    assert cfg.data == (a, b, data_path("seg", "camelyon-tumour"))
    assert cfg.seed_list == [5, 6]
    assert [n for n, _ in slide_folders(cfg)] == ["set-unseen", "set-unseen-2", "camelyon-tumour-unseen"]
    rs = round_settings(cfg, seed=6)
    assert rs.budget_s == 12.0 and rs.seed == 6 and rs.steps is None  # steps only when given
    rs = round_settings(config_from_args(parser().parse_args(["bench", "finetune", "--steps", "3"])))
    assert rs.steps == 3 and rs.budget_s is None
    default = config_from_args(parser().parse_args(["bench", "finetune"]))
    assert [n for n, _ in slide_folders(default)] == ["adenocarcinoma-unseen", "ebhi-polyp-shift"]
    assert default.seed_list == [0, 1, 2] and default.data == ()
    quick = config_from_args(parser().parse_args(["bench", "finetune", "--quick"]))
    assert quick.seed_list == [0] and round_settings(quick).steps is None  # the budget sizes it
    for bad, match in ((["--data", str(tmp_path / "nowhere")], "no such folder"),
                       (["--data", str(tmp_path / "a")], "images/ and masks/"),
                       (["--data", str(a), "--shift", "camelyon-tumour"], "--shift"),
                       (["--seeds", "0"], "at least 1"), (["--budget", "-1"], "positive")):
        with pytest.raises(CocoPathError, match=match):
            config_from_args(parser().parse_args(["bench", "finetune", *bad]))


def fake_run(before: float, gain: float | str | None, activated: bool = True,
             wall: float = 30.0) -> dict:
    """A round's record: ``gain`` None (it failed) or "kept" (done, no step beat the parent)."""
    kept = gain == "kept"
    return {"miou_after": None if gain is None or kept else before + gain,  # type: ignore[operator]
            "activated": activated and not kept, "kept_parent": kept, "round_s": wall - 1,
            "round_wall_s": wall, "status": "failed" if gain is None else "done"}


def fake_k(gains_review, gains_random, before: float = 0.5, walls=(30.0, 40.0),
           activated=(True, True)) -> dict:
    from engine.finetune.bench import _k_entry, _seed_entry

    seeds = []
    for i, (g, r) in enumerate(zip(gains_review, gains_random)):
        runs = {"review": fake_run(before, g, activated[0], walls[0]),
                "random": fake_run(before, r, activated[1], walls[1])}
        errors = {"review": {"wrong_px": 100 + i}, "random": {"wrong_px": 50}}
        seeds.append(_seed_entry(i, {"miou": before, "dice": 0.6, "pixels": 1000,
                                     "per_slide": {}, "tumour_called": {}}, runs, errors))
    return _k_entry(seeds, [0.3], [{"slide": "s", "rect": [0, 0, 8, 8]}], "cpu")


def test_the_verdicts_come_from_the_numbers() -> None:
    from engine.finetune.bench import GAIN_TARGET, NOT_WORSE_TOLERANCE, beats, targets

    good = fake_k([0.06, 0.08, 0.07], [0.01, 0.02, 0.03])
    assert good["gain"] == pytest.approx(0.07) and good["gain_sd"] == pytest.approx(0.01)
    assert good["gain_random"] == pytest.approx(0.02) and good["gain_random_sd"] == pytest.approx(0.01)
    assert good["miou_after"] == pytest.approx(0.57) and good["miou_before"] == pytest.approx(0.5)
    b = good["review_beats_random"]
    assert b["margin"] == pytest.approx(0.05) and b["sd"] == pytest.approx(0.01) and b["beats"] is True
    assert good["not_worse"] is True and good["roi_errors"] == pytest.approx(101)
    assert good["round_wall_s"]["max"] == 40.0 and good["round_within_target"] is True
    t = targets({"1": fake_k([0.0, 0.01, 0.0], [0.0, 0.0, -0.004]), "10": good}, "cpu")
    assert t["every_round_not_worse"] is True and t["mean_gain_target_met"] is True
    assert t["mean_gain_at_target_k"] == pytest.approx(0.07) and t["gain_target"] == GAIN_TARGET
    assert t["review_beats_random"] == {"1": False, "10": True}
    assert t["rounds"] == 12 and t["round_within_target"] is True
    # a round that loses more than the tolerance, a small gain, no better than random, too slow
    bad = fake_k([0.02, -0.01, 0.03], [0.03, 0.02, 0.01], walls=(90.0, 30.0), activated=(False, True))
    assert bad["not_worse"] is False and bad["worst_change"]["change"] == pytest.approx(-0.01)
    assert bad["worst_change"]["strategy"] == "review" and bad["worst_change"]["seed"] == 1
    assert bad["not_worse_active"] is True  # not activated: the active model stayed as it was
    assert bad["gain_active"] == 0.0 and bad["review_beats_random"]["beats"] is False
    t = targets({"10": bad}, "cpu")
    assert t["every_round_not_worse"] is False and t["mean_gain_target_met"] is False
    assert t["worst_round"]["change"] < -NOT_WORSE_TOLERANCE and t["round_within_target"] is False
    # one seed: no sd, so no verdict on beating random; a round without a version is counted
    one = fake_k([0.1], [None])
    assert one["review_beats_random"]["beats"] is None and one["rounds_without_version"] == 1
    # a round that kept its parent (no step beat it) scores the parent: a gain of 0, not a gap
    kept = fake_k(["kept", 0.02], [0.01, "kept"])
    assert kept["gain"] == pytest.approx(0.01) and kept["gain_random"] == pytest.approx(0.005)
    assert kept["rounds_kept_parent"] == 2 and kept["rounds_without_version"] == 0
    assert kept["seeds"][0]["miou_after"] == kept["seeds"][0]["miou_before"]
    assert beats([0.1, None], [0.0, 0.0])["beats"] is None
    assert targets({"3": one}, "cpu")["mean_gain_target_met"] is None  # no k = 10


def test_the_report_reads_as_markdown_and_figures() -> None:
    from engine.finetune.bench import figures, markdown, targets

    results = {"10": fake_k([0.06, 0.08, 0.07], [0.01, 0.02, 0.03])}
    report = {"quick": False, "model": {"name": "m", "version": "v"}, "device": "cpu",
              "cpu_threads": 2, "cpu_count": 2, "settings": {"seed_list": [0, 1, 2]},
              "slides": [{"name": "s", "source": "f", "tiles": 4, "size": [100, 100],
                          "truth": "masks", "tumour_fraction": 0.5,
                          "split": {"from": "x", "cases": ["a"], "left_out_seen_cases": []}}],
              "protocol": "p", "k": results, "targets": targets(results, "cpu"),
              "predict_s": 1.0, "rank_s": 0.1, "total_s": 10.0}
    md = markdown(report)
    assert "| 10 | Review next | 0.5000 | 0.5700 | +0.0700 ± 0.0100 |" in md
    assert "| 10 | random | 0.5000 | 0.5200 | +0.0200 ± 0.0100 |" in md
    assert "Mean gain at k = 10 ≥ +0.05: yes" in md and "k = 10: yes" in md
    lines = figures(report)
    assert lines[0].startswith("k=10: mIoU 0.5000 → 0.5700 (+0.0700 ± 0.0100)")
    assert "beats random by > 1 sd: yes" in lines[0] and lines[-1].startswith("targets:")


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
    assert {p[0] for p in picked[:2]} == {0, 1}  # each slide's first before any slide's second
    assert all(0.0 <= p[2] <= 1.0 for p in picked)
    for _, (x, y, w, h), _ in picked:  # tissue only: the real tiles, not the glass around them
        assert s.known[y:y + h, x:x + w].mean() >= 0.5
    assert review_next([cache, cache], 128, 3, 0.5) == picked  # deterministic
    with pytest.raises(CocoPathError, match="only"):
        review_next([cache], 128, 100, 0.5)


@pytest.mark.slow
def test_the_whole_benchmark_runs_from_the_command_line(tmp_path: Path, adeno: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """A ``--data`` folder of real tiles (three), a tiny untrained student, two seeds of k = 1,
    rounds of a few seconds: the harness runs end to end and writes the JSON (per k the means,
    sds and verdicts, per seed before / after) and the table."""
    model = tiny_model(tmp_path / "tiny.safetensors")
    a = tile_folder(tmp_path / "d" / "alpha", adeno, 3, "a")
    out = tmp_path / "out" / "finetune.json"
    args = parser().parse_args(["bench", "finetune", "--model", str(model), "--data", str(a),
                                "--k", "1", "--seeds", "2", "--budget", "2", "--batch-size", "2",
                                "--patch", "64", "--no-teacher", "--device", "cpu",
                                "--region-px", "128", "--workdir", str(tmp_path / "w"),
                                "--out", str(out)])
    assert args.func(args) == 0
    said = capsys.readouterr()
    assert "k1-s0-review:" in said.err and "k1-s1-random:" in said.err  # the rounds' progress
    assert said.out.splitlines()[-1].startswith("targets:")
    report = json.loads(out.read_text())
    assert [s["name"] for s in report["slides"]] == ["alpha-unseen"]
    assert all(s["tiles"] == 3 and "every image" in s["split"]["from"] for s in report["slides"])
    assert report["settings"]["seed_list"] == [0, 1] and report["settings"]["round"]["budget_s"] == 2.0
    assert report["settings"]["round"]["steps"] is None and report["device"] == "cpu"
    e = report["k"]["1"]
    assert [s["seed"] for s in e["seeds"]] == [0, 1]
    gains, gains_random = [], []
    for s in e["seeds"]:
        assert s["review"]["status"] == s["random"]["status"] == "done", s
        for key in ("miou_before", "miou_after", "miou_after_random", "miou_active_after"):
            assert 0.0 <= s[key] <= 1.0, key  # a round that kept its parent scores the parent
        for run in (s["review"], s["random"]):
            assert (run["miou_after"] is None) == run["kept_parent"]
        assert s["gain"] == pytest.approx(s["miou_after"] - s["miou_before"])
        assert len(s["review"]["rois"]) == len(s["random"]["rois"]) == 1
        assert s["review"]["rois"] == e["review_rois"]  # Review next's regions do not change with the seed
        assert s["review"]["round_wall_s"] > 0 and s["eval_pixels"] > 0
        gains.append(s["gain"])
        gains_random.append(s["gain_random"])
    assert e["gain"] == pytest.approx(np.mean(gains)) and e["gain_sd"] == pytest.approx(np.std(gains, ddof=1))
    assert e["gain_random"] == pytest.approx(np.mean(gains_random))
    margin = np.mean(gains) - np.mean(gains_random)
    sd = max(np.std(gains, ddof=1), np.std(gains_random, ddof=1))
    assert e["review_beats_random"]["beats"] == bool(margin > sd)
    t = report["targets"]
    changes = gains + gains_random
    assert t["every_round_not_worse"] == all(g >= -0.005 for g in changes)
    assert t["mean_gain_target_met"] is None  # no k = 10 here
    walls = [s[r]["round_wall_s"] for s in e["seeds"] for r in ("review", "random")]
    assert t["round_wall_s"]["max"] == pytest.approx(max(walls)) and t["round_wall_s"]["n"] == 4
    table = out.with_suffix(".md").read_text()
    assert "| 1 | Review next |" in table and "## Targets" in table and "| 1 | 1 |" in table
    from engine.finetune.registry import ModelRegistry

    for tag, run in (("k1-s0-review", e["seeds"][0]["review"]), ("k1-s1-random", e["seeds"][1]["random"])):
        reg = ModelRegistry.of_project(tmp_path / "w" / "projects" / tag)
        assert [v.version for v in reg.versions()] == (["v0001"] if run["kept_parent"] else ["v0001", "v0002"])
        with Project.open(tmp_path / "w" / "projects" / tag) as project:
            assert sum(len(project.store(s).rois()) for s in project.slides()) == 1


def test_guard_rates_count_refusals_and_acceptances_against_the_truth() -> None:
    from engine.finetune.bench import guard_rates

    def seed(review, random):
        return {"review": review[0], "random": random[0], "gain": review[1], "gain_random": random[1]}
    published, kept = {"version": "v2", "activated": False}, {"activated": False}
    active = {"version": "v2", "activated": True}
    results = {"3": {"seeds": [seed((published, 0.04), (published, -0.02)), seed((active, 0.1), (kept, 0.0))]},
               "10": {"seeds": [seed((active, -0.03), (published, 0.001))]}}
    g = guard_rates(results)
    assert (g["published_refused"], g["false_rejections"], g["published_activated"], g["false_acceptances"]) == (3, 1, 2, 1)
    assert g["false_rejection_rate"] == pytest.approx(1 / 3) and g["false_acceptance_rate"] == pytest.approx(0.5)
    assert guard_rates({"1": {"seeds": [seed((kept, 0.0), (kept, 0.0))]}})["false_rejection_rate"] is None
    assert g["activated_blends"] == 0
    blended = {**active, "round": {"data": {"anchored": {"blend": 0.35}}}}
    whole = {**active, "round": {"data": {"anchored": {"blend": 1.0}}}}
    assert guard_rates({"10": {"seeds": [seed((blended, 0.03), (whole, 0.02))]}})["activated_blends"] == 1

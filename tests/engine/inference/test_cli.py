"""``cocopath-engine infer`` through ``engine.cli.main``: outputs, resume, ranks, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.cli import main
from engine.models import create_model
from engine.training.checkpoints import save_model
from infer_fixtures import pattern_rgb, write_slide


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """An untrained small student with a card: 128² input, 4 µm/px (tiny work on the real slides)."""
    model = create_model("mobile-unet-small", classes=2)
    path = tmp_path_factory.mktemp("model") / "student.safetensors"
    save_model(path, model, {"model": model.config, "classes": ["background", "tumour"],
                             "input": {"mpp": 4.0, "tile": 128}})
    return path


def run(capsys, *args: str) -> tuple[int, str, str]:
    rc = main(["infer", *map(str, args)])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_infer_writes_outputs_and_a_second_run_skips(capsys, checkpoint, small_svs, tmp_path):
    rc, out, err = run(capsys, small_svs, "--model", checkpoint, "--out", tmp_path, "--json",
                       "--backend", "torch")
    assert rc == 0, err
    [s] = json.loads(out)
    assert s["status"] == "done" and s["model"]["version"].startswith("mobile-unet-small-")
    for p in s["outputs"].values():
        assert Path(p).is_file()
    assert s["resolution"]["prediction_mpp"] == pytest.approx(4.0, rel=1e-3)
    assert s["measurements"]["tissue_area_mm2"] > 0
    rc, out, _ = run(capsys, small_svs, "--model", checkpoint, "--out", tmp_path)
    assert rc == 0 and "already done" in out


def test_infer_resumes_a_stopped_slide_from_its_cache(capsys, checkpoint, small_svs, tmp_path):
    from engine.inference.job import InferOptions, infer_slide
    from engine.inference.runner import TorchRunner
    from engine.inference.spec import load_spec
    from engine.jobs import CancelToken
    from engine.training.checkpoints import load_model

    spec = load_spec(checkpoint)
    token = CancelToken()
    seen = []

    def progress(p) -> None:
        seen.append(p)
        if p.step >= 3:
            token.cancel()

    model, _ = load_model(checkpoint)
    stopped = infer_slide(small_svs, spec, TorchRunner(model, spec), tmp_path, InferOptions(
        batch_size=1, window=spec.tile, margin=32), token, progress)
    assert stopped["status"] == "cancelled" and 3 <= stopped["tiles"]["done"] < stopped["tiles"]["tissue"]
    assert all(p.total == stopped["tiles"]["tissue"] for p in seen)
    assert not (tmp_path / "cmu-1-small-region.json").exists()
    rc, out, err = run(capsys, small_svs, "--model", checkpoint, "--out", tmp_path, "--json",
                       "--backend", "torch")
    assert rc == 0, err
    [s] = json.loads(out)
    assert s["status"] == "done" and s["tiles"]["done"] == s["tiles"]["tissue"]


@pytest.fixture
def no_mpp_slide(tmp_path) -> Path:
    """A small pyramid without µm/px (like the TCGA slide in the shared data, but fast to run)."""
    return write_slide(tmp_path / "nompp.tif", pattern_rgb(700, 520), mpp=None)


def test_slide_without_mpp_runs_at_the_chosen_level_and_says_so(capsys, checkpoint, no_mpp_slide,
                                                                 tmp_path):
    rc, out, err = run(capsys, no_mpp_slide, "--model", checkpoint, "--out", tmp_path, "--level",
                       "1", "--backend", "torch")
    assert rc == 0, err
    assert "no µm/px" in out and "px²" in out
    s = json.loads((tmp_path / "nompp.json").read_text())
    assert s["resolution"]["read_level"] == 1 and s["measurements"]["tissue_area_um2"] is None
    assert s["resolution"]["prediction_downsample"] == 2.0


def test_real_slide_without_mpp_falls_back_to_level_0_with_a_note(checkpoint, no_mpp_svs):
    from engine.inference.geometry import make_grid
    from engine.slide import open_slide

    with open_slide(no_mpp_svs) as s:
        grid = make_grid(s.info, 4.0, level=None)
    assert grid.read_level == 0 and "no µm/px" in grid.note


def test_torchrun_ranks_share_the_slides(capsys, checkpoint, pattern_slide, no_mpp_slide, tmp_path,
                                         monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    rc, out, err = run(capsys, pattern_slide, no_mpp_slide, "--model", checkpoint, "--out",
                       tmp_path / "o", "--level", "1", "--json", "--backend", "torch")
    assert rc == 0, err
    assert [Path(s["slide"]).name for s in json.loads(out)] == ["nompp.tif"]
    assert not (tmp_path / "o" / "pattern.json").exists()


@pytest.mark.parametrize("case, message", [
    ("missing-model", "no such checkpoint"),
    ("pickle", "not a safetensors checkpoint"),
    ("missing-slide", "no such slide"),
    ("bad-level", "has no level 7"),
    ("not-a-slide", "not a slide"),
])
def test_user_errors_are_one_line(capsys, checkpoint, small_svs, tmp_path, case, message):
    model, slide, extra = checkpoint, small_svs, []
    if case == "missing-model":
        model = tmp_path / "nope.safetensors"
    elif case == "pickle":
        model = tmp_path / "m.safetensors"
        model.write_bytes(b"\x80\x04garbage-pickle")
    elif case == "missing-slide":
        slide = tmp_path / "nope.svs"
    elif case == "bad-level":
        extra = ["--level", "7"]
    elif case == "not-a-slide":
        slide = tmp_path / "notes.txt"
        slide.write_text("hello")
    rc, _, err = run(capsys, slide, "--model", model, "--out", tmp_path / "o", *extra)
    assert rc == 1
    assert err.count("\n") == 1 and err.startswith("cocopath-engine: ") and message in err


@pytest.fixture
def coarse_slide(tmp_path) -> Path:
    """A small pyramid scanned at 10 µm/px: 2.5× coarser than the test model's 4 µm/px."""
    return write_slide(tmp_path / "coarse.tif", pattern_rgb(300, 220), mpp=10.0, levels=2)


def test_a_slide_much_coarser_than_the_model_is_refused_in_one_line(capsys, checkpoint,
                                                                    coarse_slide, tmp_path):
    rc, out, err = run(capsys, coarse_slide, "--model", checkpoint, "--out", tmp_path / "o")
    assert rc == 1 and out == ""
    assert err == ("cocopath-engine: coarse.tif: this slide is 10 µm/px; the model reads 4 µm/px: "
                   "its predictions here are not meaningful (--force runs it anyway)\n")
    assert not (tmp_path / "o" / "coarse.json").exists()


def test_force_runs_a_coarse_slide_with_a_warning(capsys, checkpoint, coarse_slide, tmp_path):
    rc, out, err = run(capsys, coarse_slide, "--model", checkpoint, "--out", tmp_path / "o",
                       "--force", "--json", "--backend", "torch")
    assert rc == 0, err
    warning = [line for line in err.splitlines() if "not meaningful" in line]
    assert warning == ["cocopath-engine: warning: coarse.tif: this slide is 10 µm/px; the model "
                       "reads 4 µm/px: its predictions here are not meaningful; running anyway "
                       "(--force)"]
    [s] = json.loads(out)
    assert s["status"] == "done" and (tmp_path / "o" / "coarse.json").is_file()

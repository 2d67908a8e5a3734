"""``infer`` on a full disk, into a read-only folder, onto folders in the way: one line naming the
file, exit status 1, nothing half-written left (no temporary file, no half-made cache, no output
that is not whole), and the next run (disk freed) ends as a run that never failed."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from fault_fixtures import DiskFull, leftovers, read_only
from infer_fixtures import pattern_rgb, write_slide

from engine.cli import main
from engine.inference.cache import PredictionCache
from engine.models import create_model
from engine.training.checkpoints import save_model


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained small student at 2 µm/px, 128² input: 4 tiles of tissue on the pattern slide."""
    model = create_model("mobile-unet-small", classes=2)
    path = tmp_path_factory.mktemp("model") / "student.safetensors"
    save_model(path, model, {"model": model.config, "classes": ["background", "tumour"],
                             "input": {"mpp": 2.0, "tile": 128}})
    return path


@pytest.fixture(scope="module")
def slide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_slide(tmp_path_factory.mktemp("slide") / "pattern.tif", pattern_rgb(700, 520))


def infer(slide: Path, checkpoint: Path, out: Path, *extra: str) -> int:
    return main(["infer", str(slide), "--model", str(checkpoint), "--out", str(out), "--json",
                 "--backend", "torch", "--window", "128", "--margin", "32", *extra])


def outputs(out: Path) -> tuple[list[np.ndarray], dict]:
    """(mask pages, measurements) of a finished run."""
    with tifffile.TiffFile(out / "pattern.mask.tif") as tif:
        pages = [p.asarray() for p in tif.pages]
    return pages, json.loads((out / "pattern.json").read_text())["measurements"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, slide: Path, checkpoint: Path) -> tuple:
    out = tmp_path_factory.mktemp("reference")
    assert infer(slide, checkpoint, out) == 0
    return outputs(out)


def one_line(capsys: pytest.CaptureFixture, *words: str) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("cocopath-engine: "), err
    assert "Traceback" not in err
    for w in words:
        assert w in err, (w, err)
    return err


def same(a: tuple, b: tuple) -> None:
    assert len(a[0]) == len(b[0]) and all(np.array_equal(x, y) for x, y in zip(a[0], b[0]))
    assert a[1] == b[1]


def tile_tmp(p: Path) -> bool:
    return p.name.endswith(".tmp") and ".z." in p.name


CASES = {  # where the disk fills up: (which writes fail, from the how-many-th on, what the line names)
    "first tile": (tile_tmp, 0, "/cache/pattern-"),
    "a later tile": (tile_tmp, 3, "/cache/pattern-"),
    "a pyramid tile": (lambda p: tile_tmp(p) and p.parent.name == "L1", 0, "/cache/pattern-"),
    "tissue map": (lambda p: p.name == "tissue.npy", 0, "/cache/pattern-"),
    "cache card": (lambda p: ".cache.json." in p.name, 0, "/cache/pattern-"),
    "mask TIFF": (lambda p: ".mask.tif" in p.name, 0, "pattern.mask.tif"),
    "GeoJSON": (lambda p: "pattern.geojson" in p.name, 0, "pattern.geojson"),
    "summary": (lambda p: "pattern.json" in p.name, 0, "pattern.json"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_full_disk_is_one_line_leaves_nothing_half_written_and_the_rerun_completes(
        case: str, slide: Path, checkpoint: Path, reference: tuple, tmp_path: Path,
        capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    matches, after, names = CASES[case]
    out = tmp_path / "out"
    capsys.readouterr()
    fault = DiskFull(monkeypatch, matches, after)
    assert infer(slide, checkpoint, out) == 1
    assert fault.hits >= 1
    err = one_line(capsys, "cannot", names)
    assert "no space left on device" in err.lower() or "the disk is full" in err
    assert leftovers(out) == []
    assert not (out / "pattern.json").exists()  # the summary, written last, says "done" only when all is
    if case not in ("GeoJSON", "summary"):
        assert not (out / "pattern.mask.tif").exists()
    for root in (out / "cache").glob("pattern-*"):
        PredictionCache(root)  # what stays of the cache is whole: it opens (a rerun resumes it)
    monkeypatch.undo()  # space freed
    assert infer(slide, checkpoint, out) == 0
    same(outputs(out), reference)


def test_a_full_quota_is_one_line_too(slide: Path, checkpoint: Path, tmp_path: Path,
                                      capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    capsys.readouterr()
    DiskFull(monkeypatch, tile_tmp, 1, code=errno.EDQUOT)
    assert infer(slide, checkpoint, tmp_path) == 1
    one_line(capsys, "cannot write", "/cache/pattern-", "disk quota exceeded")
    assert leftovers(tmp_path) == []


def test_the_onnx_graph_cache_on_a_full_disk(slide: Path, checkpoint: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("onnxruntime")
    capsys.readouterr()
    DiskFull(monkeypatch, lambda p: ".onnx." in p.name or p.suffix == ".choice")
    assert infer(slide, checkpoint, tmp_path, "--backend", "onnx") == 1
    one_line(capsys, "cannot write", "predictions/backends", "no space left on device")
    from engine.inference.runner import backend_cache_dir

    backends = backend_cache_dir()  # the user cache, never one per --out folder
    assert leftovers(backends) == [] and not list(backends.rglob("*.onnx"))
    assert leftovers(tmp_path) == [] and not list(tmp_path.rglob("*.onnx"))


def test_a_read_only_out_folder_is_one_line_before_any_work(
        slide: Path, checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "ro"
    out.mkdir()
    code = read_only(monkeypatch, out)
    capsys.readouterr()
    try:
        assert infer(slide, checkpoint, out) == 1
        err = one_line(capsys, f"cannot write {out}:")
        assert ("read-only file system" if code == errno.EROFS else "permission denied") in err
        assert list(out.iterdir()) == []
    finally:
        out.chmod(0o700)


def test_an_out_folder_below_a_read_only_one(slide: Path, checkpoint: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    parent = tmp_path / "ro"
    parent.mkdir()
    read_only(monkeypatch, parent)
    capsys.readouterr()
    try:
        assert infer(slide, checkpoint, parent / "new" / "out") == 1
        one_line(capsys, "cannot write", str(parent / "new" / "out"))
        assert not (parent / "new").exists()
    finally:
        parent.chmod(0o700)


@pytest.mark.parametrize("case", ["out is a file", "out below a file", "summary is a folder",
                                  "mask is a folder"])
def test_files_and_folders_in_the_way(case: str, slide: Path, checkpoint: Path, tmp_path: Path,
                                      capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    if case == "out is a file":
        out.write_text("x")
        words = (f"cannot write {out}: it is a file, not a folder",)
    elif case == "out below a file":
        (tmp_path / "file").write_text("x")
        out = tmp_path / "file" / "out"
        words = (f"cannot write {out}", "not a directory")
    else:
        name = "pattern.json" if case == "summary is a folder" else "pattern.mask.tif"
        (out / name).mkdir(parents=True)
        words = (name, "is a directory")
    capsys.readouterr()
    assert infer(slide, checkpoint, out) == 1
    one_line(capsys, *words)
    if out.is_dir():
        assert leftovers(out) == []

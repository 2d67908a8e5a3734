"""`cocopath-engine project …` and `annotations …`: JSON summaries, files written, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from PIL import Image

from engine.annotations import Project
from engine.cli import main

ROOT = Path(__file__).resolve().parents[3]


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict:
    assert main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def one_line_error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    assert main(list(argv)) == 1
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.startswith("cocopath-engine: ") and "\n" not in err and "Traceback" not in err
    return err


@pytest.fixture
def proj(tmp_path: Path, small_svs: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    folder = tmp_path / "case"
    data = run_json(capsys, "project", "create", str(folder))
    assert data["project"] == str(folder) and Path(data["database"]).is_file()
    slide = run_json(capsys, "project", "add-slide", str(folder), str(small_svs))["slide"]
    assert (slide["width"], slide["height"], slide["mpp"]) == (2220, 2967, [0.499, 0.499])
    return folder


def test_import_summarises_counts_and_areas(proj: Path, shared_data: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    src = shared_data / "annotations" / "asap" / "tissue_annotations" / "tumor_031.xml"
    data = run_json(capsys, "annotations", "import", str(proj), "cmu-1-small-region.svs", str(src))
    groups = [a.get("PartOfGroup") for a in ET.parse(src).getroot().iter("Annotation")]
    assert data["format"] == "ASAP XML" and data["imported"] == len(groups) == 10
    assert {k: v["count"] for k, v in data["classes"].items()} == {
        g: groups.count(g) for g in set(groups)}
    for v in data["classes"].values():
        assert v["area_um2"] == pytest.approx(v["area_px2"] * 0.499**2) and v["area_px2"] > 0
    assert data["annotations_on_slide"] == 10 and isinstance(data["step"], int)
    assert main(["annotations", "import", str(proj), "1", str(src), "--format", "asap"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("imported 10 annotation(s)") and "negative: 4" in text
    assert "ids" not in text  # ASAP names here are not ids: nothing to renumber


def test_areas_without_mpp_are_pixels_only(proj: Path, no_mpp_svs: Path, shared_data: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    run_json(capsys, "project", "add-slide", str(proj), str(no_mpp_svs))
    src = shared_data / "annotations" / "geojson" / "sample_histomicstk_nuclei_TCGA-02-0010.geojson"
    data = run_json(capsys, "annotations", "import", str(proj), str(no_mpp_svs), str(src))
    assert data["imported"] == 10 and data["classes"]["(unclassified)"]["area_um2"] is None
    assert main(["annotations", "import", str(proj), str(no_mpp_svs), str(src)]) == 0
    out = capsys.readouterr().out
    assert "µm²" not in out and "10 annotation(s) had ids already" not in out


def test_export_every_format(proj: Path, shared_data: Path, tmp_path: Path,
                             capsys: pytest.CaptureFixture[str]) -> None:
    src = shared_data / "annotations" / "asap" / "tissue_annotations" / "8_HE_spline.xml"
    run_json(capsys, "annotations", "import", str(proj), "1", str(src))
    gj = run_json(capsys, "annotations", "export", str(proj), "1", str(tmp_path / "a.geojson"))
    assert gj["exported"] == 2 and len(json.loads((tmp_path / "a.geojson").read_text())["features"]) == 2
    asap = run_json(capsys, "annotations", "export", str(proj), "1", str(tmp_path / "a.xml"))
    assert asap["format"] == "ASAP XML" and any("authors" in w for w in asap["warnings"])
    assert ET.parse(tmp_path / "a.xml").getroot().tag == "ASAP_Annotations"
    png = run_json(capsys, "annotations", "export", str(proj), "1", str(tmp_path / "m.png"),
                   "--format", "mask", "--downsample", "8")
    assert png["labels"] == {"1": "background", "2": "tissue"}  # the file's group order
    assert Image.open(tmp_path / "m.png").size == (278, 371)
    tif = run_json(capsys, "annotations", "export", str(proj), "1", str(tmp_path / "m.tif"),
                   "--downsample", "4")
    assert tif["format"] == "label mask" and (tmp_path / "m.tif").stat().st_size > 0
    assert tif["classes"] == png["classes"] == gj["classes"]


def test_errors_are_one_line_and_import_nothing(proj: Path, tmp_path: Path, shared_data: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    assert "no such project folder" in one_line_error(
        capsys, "annotations", "import", str(tmp_path / "nope"), "1", "x.xml")
    assert "already holds" in one_line_error(capsys, "project", "create", str(proj))
    bad = tmp_path / "broken.geojson"
    good = (shared_data / "annotations" / "geojson" /
            "sample_histomicstk_nuclei_TCGA-02-0010.geojson").read_text()
    bad.write_text(good.replace("[8441,18758,0]", '[8441,"x",0]', 1))
    err = one_line_error(capsys, "annotations", "import", str(proj), "1", str(bad))
    assert str(bad) in err and "is not a number" in err
    with Project.open(proj) as p:
        assert p.store(1).count() == 0 and p.store(1).steps() == []
    asap = shared_data / "annotations" / "asap" / "tissue_annotations" / "normal_042.xml"
    err = one_line_error(capsys, "annotations", "import", str(proj), "1", str(asap), "--format",
                         "geojson")
    assert "not JSON" in err and str(asap) in err
    assert "add-slide" in one_line_error(capsys, "annotations", "import", str(proj), "other.svs",
                                         str(asap))
    assert "cannot tell the format" in one_line_error(
        capsys, "annotations", "export", str(proj), "1", str(tmp_path / "out.txt"))
    notslide = tmp_path / "notes.txt"
    notslide.write_text("hello")
    assert "notes.txt" in one_line_error(capsys, "project", "add-slide", str(proj), str(notslide))
    (proj / "project.sqlite").write_bytes(b"garbage" * 200)
    for suffix in ("-wal", "-shm"):
        (proj / f"project.sqlite{suffix}").unlink(missing_ok=True)
    assert "damaged" in one_line_error(capsys, "annotations", "export", str(proj), "1",
                                       str(tmp_path / "x.geojson"))


def test_group_commands_without_action_print_usage(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["project"]) == 2 and main(["annotations"]) == 2
    assert "usage" in capsys.readouterr().err.lower()


def test_annotations_engine_imports_without_qt_or_torch() -> None:
    code = ("import sys, engine.annotations, engine.annotations.formats, engine.annotations.mask, "
            "engine.annotations.commands; "
            "bad = [m for m in ('PySide6', 'torch', 'app') if m in sys.modules]; assert not bad, bad")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_relink_finds_moved_slides(tmp_path: Path, small_svs: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    folder, copy = tmp_path / "p", tmp_path / "old" / "s.svs"
    copy.parent.mkdir()
    copy.write_bytes(small_svs.read_bytes())
    run_json(capsys, "project", "create", str(folder))
    run_json(capsys, "project", "add-slide", str(folder), str(copy))
    moved = tmp_path / "new" / "s-moved.svs"
    moved.parent.mkdir()
    copy.rename(moved)
    data = run_json(capsys, "project", "relink", str(folder), str(tmp_path / "old"))
    assert data == {"relinked": [], "still_missing": [{"id": 1, "path": str(copy)}]}
    data = run_json(capsys, "project", "relink", str(folder), str(tmp_path))
    assert data == {"relinked": [{"id": 1, "path": str(moved)}], "still_missing": []}


def test_bench_annotations_reports_latencies(tmp_path: Path, small_svs: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bench.json"
    assert main(["bench", "annotations", "--slide", str(small_svs), "--n", "60", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert json.loads(capsys.readouterr().out) == data
    assert data["annotations"] == 60 and data["load_all"]["count"] == 60
    for key in ("single_edit", "viewport_2000px", "viewport_10000px", "undo", "redo"):
        assert 0 < data[key]["p50_ms"] <= data[key]["p95_ms"] <= data[key]["max_ms"]
    assert "at least 1" in one_line_error(capsys, "bench", "annotations", "--n", "0")

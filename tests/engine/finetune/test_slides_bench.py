"""``bench loop``: a round on the real slides from the shipped student, measured by the whole-slide
tumour share of each slide before and after (the machinery, with a 20-step round; the benchmark
itself runs at the default budget)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.cli import main
from engine.errors import CocoPathError
from engine.finetune import slides_bench
from engine.finetune.slides_bench import LoopConfig, run_loop_bench
from engine.resources import resource_path
from engine.training.ship import BENIGN_TOLERANCE

SKIN, SCC = "cmu-1-small-region.svs", "tcga-cr-7395-01a-01-ts1.svs"
#: The shipped student, named: the tests' environment hides the default model.
SHIPPED = resource_path("models", "cocopath-student-tumour.safetensors")


def test_the_corrections_are_rois_on_the_slide_they_name() -> None:
    """The skin's corrections are ROIs with nothing drawn in them (all background); the carcinoma's
    are ROIs each filled by a tumour outline of the same box."""
    skin = json.loads(slides_bench.corrections_path(SKIN).read_text())["features"]
    scc = json.loads(slides_bench.corrections_path(SCC).read_text())["features"]
    kind = lambda f: f["properties"].get("metadata", {}).get("cocopath.kind")  # noqa: E731
    assert len(skin) == 3 and all(kind(f) == "roi" for f in skin)
    rois = [f["geometry"] for f in scc if kind(f) == "roi"]
    tumour = [f["geometry"] for f in scc if f["properties"].get("classification", {}).get("name") == "tumour"]
    assert len(rois) == 3 and rois == tumour


def test_a_carcinoma_round_reports_each_slide_before_and_after(tmp_path: Path) -> None:
    report = run_loop_bench(LoopConfig(model=SHIPPED, scenarios=("carcinoma",), steps=20, workdir=tmp_path))
    assert set(report["before"]) == {SKIN, SCC}
    assert all(0.0 <= v <= 1.0 for v in report["before"].values())
    e = report["scenarios"]["carcinoma"]
    assert e["corrected"] == [SCC] and e["steps"] == 20 and e["status"] == "done"
    # the skin is in the project uncorrected, so the round checked it as a slide nobody corrected
    assert [s["name"] for s in e["elsewhere"]["slides"]] == [SKIN]
    assert e["version"] is not None  # the shipped student marks nothing in the tumour boxes: any step gains
    assert set(e["after"]) == {SKIN, SCC}
    skin = e["slides"][SKIN]
    assert skin["stays_clear"] == (e["after"][SKIN] <= report["before"][SKIN] + BENIGN_TOLERANCE)
    assert e["slides"][SCC]["marked"] == (e["after"][SCC] > report["before"][SCC])
    # the masks the shares come from are kept in the work folder
    assert (tmp_path / "carcinoma" / "inference" / SCC).is_dir()
    md = slides_bench.markdown(report)
    assert "| carcinoma: tumour boxes on the carcinoma only" in md and e["message"] in md
    assert slides_bench.figures(report)[0].startswith("carcinoma: ")


def test_a_second_round_goes_on_from_the_first_with_the_septa_marked(tmp_path: Path) -> None:
    septa = json.loads(slides_bench.corrections_path(SCC, slides_bench.SEPTA).read_text())["features"]
    assert len(septa) == 3 and all(f["properties"]["metadata"]["cocopath.kind"] == "roi" for f in septa)
    report = run_loop_bench(LoopConfig(model=SHIPPED, scenarios=("septa",), steps=5, workdir=tmp_path))
    assert list(report["scenarios"]) == ["both", "septa"]  # the first round it goes on from, run first
    both, e = report["scenarios"]["both"], report["scenarios"]["septa"]
    assert e["after_scenario"] == "both" and e["corrected"] == sorted([SKIN, SCC])
    # its baseline is the version active after the first round
    assert e["before"] == (both["after"] if both["activated"] else report["before"])
    from engine.annotations.project import Project

    with Project.open(tmp_path / "septa") as project:
        rois = {r.name: len(project.store(r).rois()) for r in project.slides()}
    assert rois == {SCC: 6, SKIN: 3}  # the tumour boxes and the septa; the skin's ROIs
    md = slides_bench.markdown(report)
    start = e["before"][SCC]
    assert "| septa: after the both round" in md and f"{100 * start:.1f} % → " in md.split("| septa:")[1]


def test_bad_requests_get_a_clear_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(CocoPathError, match="unknown scenario nope"):
        run_loop_bench(LoopConfig(scenarios=("nope",), workdir=tmp_path))
    assert main(["bench", "loop", "--budget", "0"]) != 0
    assert "--budget must be a positive number" in capsys.readouterr().err
    from engine import shared_data

    def missing(*_parts: str) -> Path:
        raise shared_data.SharedDataMissing("shared test data not found")

    monkeypatch.setattr(shared_data, "data_path", missing)
    with pytest.raises(CocoPathError, match="needs the shared data's real slides"):
        run_loop_bench(LoopConfig(model=SHIPPED, workdir=tmp_path))

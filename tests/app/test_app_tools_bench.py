"""The annotation benchmark runs end to end on a small slide and reports every figure."""

from __future__ import annotations

import json
from pathlib import Path


def test_annotation_benchmark_smoke(qtbot, tmp_path: Path) -> None:
    from app.bench.annotations import run_annotation_benchmark

    out = tmp_path / "bench.json"
    assert run_annotation_benchmark(out, side=4000, n=300) == 0
    data = json.loads(out.read_text())
    assert data["annotations"]["count"] == 300
    assert set(data["pan"]) == {"10x", "2.5x", "fit"}
    for zoom in data["pan"].values():
        assert zoom["pan_frame"]["n"] > 0 and zoom["pan_frame"]["p95_ms"] > 0
        assert zoom["annotations_in_rendered_window"] > 0
    assert data["pan"]["fit"]["annotations_in_rendered_window"] == 300
    assert data["brush_stroke_frame"]["n"] == 12 * 41
    assert data["brush_stroke_commit"]["n"] == 12
    assert data["brush_long_stroke_frame"]["n"] == 2 * 401
    assert 0 < data["annotations"]["after_brush_strokes"] <= 300 + 14


def test_prediction_benchmark_smoke(qtbot, tmp_path: Path) -> None:
    import os

    from app.bench.predictions import run_prediction_benchmark

    data_dir = os.environ["COCOPATH_DATA_DIR"]
    out = tmp_path / "bench-pred.json"
    assert run_prediction_benchmark(out, side=4000) == 0
    assert os.environ["COCOPATH_DATA_DIR"] == data_dir  # its caches went to a folder of its own
    data = json.loads(out.read_text())
    assert data["model"]["status"] == "done" and data["model"]["tissue_tiles"] > 0
    assert data["visible_field_complete_s"] is not None
    assert 0 < data["visible_field_complete_s"] <= data["whole_slide_s"]
    for key in ("pan_frame_no_prediction", "pan_frame_overlay_on", "pan_frame_overlay_off"):
        assert data[key]["n"] == 30 and data[key]["p95_ms"] > 0


def test_training_benchmark_smoke(qtbot, tmp_path: Path, monkeypatch) -> None:
    """``cocopath --bench-training`` on a small slide with short blocks: a real round starts from
    the Training dock, trains while frames are timed, and is cancelled without touching the
    registry (it broke once, unnoticed, when the Training dock's actions were split)."""
    from app.bench import training as bench

    monkeypatch.setattr(bench, "BASELINE_S", 1.0)
    monkeypatch.setattr(bench, "BLOCKS", 1)
    monkeypatch.setattr(bench, "BLOCK_S", 1.0)
    out = tmp_path / "bench-train.json"
    assert bench.run_training_benchmark(out, side=4000) == 0
    data = json.loads(out.read_text())
    assert data["pan_frame_baseline"]["n"] > 0 and data["pan_frame_during_round"]["n"] > 0
    r = data["round"]
    assert r["stages_seen"] and r["events_while_measured"] > 0
    assert r["status"] == "cancelled" and r["registry_unchanged_by_cancel"]

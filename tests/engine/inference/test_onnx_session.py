"""A warm CLI run finds its remembered ONNX Runtime back-end from the model file alone: no torch
import, no weights loaded; anything missing sends it back to the torch path, which rebuilds it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from infer_fixtures import pattern_rgb, write_slide

from engine.inference.onnx_session import FLOAT, INT8, remembered_session
from engine.inference.runner import (OnnxRunner, choice_file, graph_name, make_runner, model_hash,
                                     remember_file, verdict_name)
from engine.training.checkpoints import load_model, save_model

pytest.importorskip("onnxruntime")

WINDOW, BATCH = 64, 2


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    import torch

    from engine.models import create_model

    torch.manual_seed(0)
    m = create_model("mobile-unet-small", classes=2).eval()
    return save_model(tmp_path / "m.safetensors", m, {
        "model": m.config, "classes": ["background", "tumour"], "input": {"mpp": 1.0, "tile": 64}})


def remember(model_file: Path, cache: Path, backend: str) -> None:
    """What a measured run leaves: the choice (forced to ``backend``), the graph, the file's alias."""
    from engine.inference.spec import load_spec

    model, _ = load_model(model_file)
    make_runner(model, load_spec(model_file), WINDOW, backend="onnx", cache_dir=cache)  # the graph
    choice_file(model, WINDOW, BATCH, cache).write_text(json.dumps({"backend": backend}))
    remember_file(model_file, model, cache)


def test_a_burst_session_gives_the_same_answer_and_keeps_no_memory_between_calls(model_file: Path) -> None:
    from engine.inference.spec import load_spec

    model, _ = load_model(model_file)
    run = OnnxRunner(model, load_spec(model_file), WINDOW)
    burst = run.with_threads(2)
    opts = burst.session.get_session_options()
    assert opts.intra_op_num_threads == 2 and opts.enable_cpu_mem_arena  # the arena speeds a first call …
    assert burst.run_options.get_run_config_entry("memory.enable_memory_arena_shrinkage") == "cpu:0"  # … and empties
    assert not run.session.get_session_options().enable_cpu_mem_arena and run.run_options is None
    x = np.random.default_rng(0).integers(0, 256, (1, 96, 160, 3), dtype=np.uint8)  # any size the stride divides
    assert np.allclose(burst(x), run(x), atol=1e-5) and np.allclose(burst(x), run(x), atol=1e-5)


def test_the_remembered_session_runs_the_same_graph(model_file: Path, tmp_path: Path) -> None:
    from engine.inference.spec import load_spec

    cache = tmp_path / "cache"
    assert remembered_session(model_file, WINDOW, BATCH, cache) is None  # nothing on record
    remember(model_file, cache, FLOAT)
    session = remembered_session(model_file, WINDOW, BATCH, cache)
    assert session is not None and session.name == FLOAT and session.remembered
    model, _ = load_model(model_file)
    x = np.random.default_rng(0).integers(0, 256, (BATCH, WINDOW, WINDOW, 3), dtype=np.uint8)
    ref = OnnxRunner(model, load_spec(model_file), WINDOW, cache)(x)
    assert np.array_equal(session(x), ref)
    # another window or batch has no choice on record
    assert remembered_session(model_file, 2 * WINDOW, BATCH, cache) is None
    assert remembered_session(model_file, WINDOW, BATCH + 1, cache) is None


@pytest.mark.parametrize("damage", ["torch-choice", "no-graph", "int8-without-verdict", "changed-file",
                                    "broken-alias"])
def test_anything_missing_falls_back_to_the_torch_path(model_file: Path, tmp_path: Path, damage: str) -> None:
    cache = tmp_path / "cache"
    remember(model_file, cache, INT8 if damage == "int8-without-verdict" else
             "torch-eager" if damage == "torch-choice" else FLOAT)
    model, _ = load_model(model_file)
    if damage == "int8-without-verdict":  # an int8 graph on record, but no accepted verdict
        graph = cache / graph_name(model_hash(model))
        (cache / graph_name(model_hash(model), int8=True)).write_bytes(graph.read_bytes())
        verdict = cache / verdict_name(model_hash(model))
        verdict.write_text(json.dumps({"accepted": True, "miou_drop": 0.001}))
        assert remembered_session(model_file, WINDOW, BATCH, cache).name == INT8  # with one: used
        verdict.write_text(json.dumps({"accepted": True, "miou_drop": 0.02}))  # too large a drop
    elif damage == "no-graph":
        (cache / graph_name(model_hash(model))).unlink()
    elif damage == "changed-file":  # same weights, another file: its alias is not on record
        with open(model_file, "ab") as f:
            f.write(b" ")
    elif damage == "broken-alias":
        for f in cache.glob("file-*.json"):
            f.write_text("{not json")
    assert remembered_session(model_file, WINDOW, BATCH, cache) is None
    if damage == "int8-without-verdict":  # the torch path does not take it either: it chooses again
        from engine.inference.spec import load_spec

        runner = make_runner(model, load_spec(model_file), WINDOW, batch_size=BATCH, cache_dir=cache,
                             measure=False)
        assert runner.name != INT8 and not runner.remembered


def test_a_warm_cli_run_never_imports_torch(model_file: Path, tmp_path: Path) -> None:
    slide = write_slide(tmp_path / "s.tif", pattern_rgb(300, 220), mpp=1.0)
    cache = tmp_path / "backends"
    probe = ("import sys, json\nfrom engine.cli import main\n"
             f"rc = main(['infer', {str(slide)!r}, '--model', {str(model_file)!r}, '--out', sys.argv[1],"
             f" '--backend-cache', {str(cache)!r}, '--window', '{WINDOW}', '--margin', '8',"
             f" '--batch-size', '{BATCH}', '--device', 'cpu', '--json'])\n"
             "print(json.dumps({'rc': rc, 'torch': 'torch' in sys.modules}))\n")

    def run(out: str) -> dict:
        env = {**os.environ, "COCOPATH_DATA_DIR": str(tmp_path / "user")}
        p = subprocess.run([sys.executable, "-c", probe, str(tmp_path / out)], capture_output=True,
                           text=True, env=env, timeout=300)
        assert p.returncode == 0, p.stderr[-2000:]
        return json.loads(p.stdout.strip().splitlines()[-1])

    first = run("one")  # measures the back-ends with torch, and notes the file's weights
    assert first == {"rc": 0, "torch": True}
    assert len(list(cache.glob("file-*.json"))) == 1
    model, _ = load_model(model_file)
    choice_file(model, WINDOW, BATCH, cache).write_text(json.dumps({"backend": FLOAT}))  # whatever won
    second = run("two")
    assert second == {"rc": 0, "torch": False}
    summary = json.loads((tmp_path / "two" / "s.json").read_text())
    assert summary["status"] == "done" and summary["backend"] == FLOAT
    assert Path(summary["outputs"]["mask"]).is_file() and Path(summary["outputs"]["geojson"]).is_file()

"""The first field of a run: no back-end trial before it, tissue handed over first, visible tiles
first, and the back-end measured only afterwards, in the background, the run going on with it.

Runs :class:`~app.state.inference_run.InferenceRun` (what the Model panel's Run starts) on
CMU-1-Small-Region with a hand-made uniform model; the back-end trial is replaced by a recorder so
the test sees when it starts (the real trial takes tens of seconds).
"""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest

from app.state import inference_run
from app.state.inference_run import InferenceRun
from app_students import save_uniform
from engine.api import load_spec


@pytest.fixture(scope="module")
def spec(tmp_path_factory: pytest.TempPathFactory):
    return load_spec(save_uniform(tmp_path_factory.mktemp("model") / "uniform.safetensors", tile=128))


def test_the_visible_field_comes_before_any_backend_trial(spec, small_svs, tmp_path, monkeypatch):
    monkeypatch.setenv("COCOPATH_DATA_DIR", str(tmp_path / "data"))
    events: list[tuple[str, object]] = []
    trial_done = threading.Event()

    def fake_trial(model, spec_, batch, window=None):  # the measured winner: eager torch, renamed
        events.append(("trial", time.perf_counter()))
        runner, _ = inference_run.quick_runner(model, spec_, batch, window)
        runner.name = "measured-winner"
        trial_done.set()
        return runner

    monkeypatch.setattr(inference_run, "measured_runner", fake_trial)
    view = (900.0, 1200.0, 400.0, 400.0)  # level-0 x, y, w, h: a small field in the tissue
    run = InferenceRun(str(small_svs), spec, view)
    run.on_tissue = lambda mask: events.append(("tissue", mask))
    run.on_backend = lambda name: events.append(("backend", name))
    tiles: list[tuple[int, int]] = []
    started = []

    def on_tile(c: int, r: int) -> None:
        tiles.append((c, r))
        events.append(("tile", (c, r)))

    end = run.run(lambda info: (started.append(info), events.append(("started", info))),
                  lambda p: None, on_tile)
    assert end.status == "done", end
    assert trial_done.wait(30), "the back-end trial never ran"
    kinds = [k for k, _ in events]
    assert kinds.index("tissue") < kinds.index("started") < kinds.index("tile")
    # no trial before it: nothing is remembered here, so the engine's unmeasured runner (ONNX
    # Runtime when its graph exports and agrees with torch, else eager torch), never the winner
    assert started[0].backend in ("onnxruntime", "torch-eager")
    job = run._job
    visible = {t for t in job.scheduler.visible_tiles() if job.cache.tissue[t[1], t[0]]}
    assert visible and len(visible) < len(job.cache.done_tiles()) / 2
    # every visible tile is final before any tile beyond the ring of windows it needs (a ring tile
    # at the slide's edge may become final in the same batch: it needs no further window)
    ring = {n for t in visible for n in job.grid.neighbours(*t)}
    last_visible = max(tiles.index(t) for t in visible)
    assert set(tiles[:last_visible + 1]) <= ring, "the visible field's tiles are final first"
    assert kinds.index("trial") > max(i for i, (k, v) in enumerate(events) if k == "tile" and v in visible)
    t_visible = run.timeline["visible"]
    assert t_visible > 0 and run.timeline["tissue"] <= run.timeline["model"] <= t_visible


def test_a_remembered_choice_means_no_trial(spec, small_svs, tmp_path, monkeypatch):
    monkeypatch.setenv("COCOPATH_DATA_DIR", str(tmp_path / "data"))

    def remembered(model, spec_, batch, window=None):
        from engine.api import make_runner

        runner = make_runner(model, spec_, spec_.tile, backend="torch")
        runner.remembered = True
        return runner, False

    calls = []
    monkeypatch.setattr(inference_run, "quick_runner", remembered)
    monkeypatch.setattr(inference_run, "measured_runner", lambda *a: calls.append(a))
    end = InferenceRun(str(small_svs), spec, (900.0, 1200.0, 400.0, 400.0)).run(
        lambda info: None, lambda p: None, lambda c, r: None)
    assert end.status == "done" and end.summary is not None
    time.sleep(0.2)
    assert not calls, "a trial ran although the back-end was remembered"
    assert np.isfinite(end.summary.tissue_area)


def test_a_coarse_preview_of_the_visible_field_comes_before_its_first_tile(spec, small_svs, tmp_path,
                                                                           monkeypatch):
    monkeypatch.setenv("COCOPATH_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setattr(InferenceRun, "_start_trial", lambda self, job, model: None)  # no trial
    events: list[tuple[str, object]] = []
    view = (900.0, 1200.0, 400.0, 400.0)
    run = InferenceRun(str(small_svs), spec, view)
    run.on_preview = lambda p: events.append(("preview", p))
    end = run.run(lambda info: events.append(("started", info)), lambda p: None,
                  lambda c, r: events.append(("tile", (c, r))))
    assert end.status == "done"
    kinds = [k for k, _ in events]
    assert kinds.count("preview") == 1
    assert kinds.index("started") < kinds.index("preview") < kinds.index("tile")
    preview = dict(events)["preview"]
    x, y, w, h = preview.rect
    assert (x, y) == view[:2] and w >= view[2] and h >= view[3]  # the field, whole
    assert preview.probs.shape[0] == len(spec.foreground)
    assert preview.downsample >= run._job.grid.downsample - 1e-9  # never finer than the run
    assert run.timeline["preview"] <= run.timeline.get("visible", 1e9)
    # a second run over the finished cache needs no preview: the field is final already
    again = InferenceRun(str(small_svs), spec, view)
    again.on_preview = lambda p: events.append(("preview again", p))
    again.run(lambda info: None, lambda p: None, lambda c, r: None)
    assert "preview again" not in [k for k, _ in events]


def test_a_network_loaded_ahead_of_run_is_the_one_the_run_uses(spec, small_svs, tmp_path, monkeypatch):
    monkeypatch.setenv("COCOPATH_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setattr(InferenceRun, "_start_trial", lambda self, job, model: None)  # no trial
    ahead = inference_run.preload(spec)
    assert inference_run.preload(spec) is ahead, "one load per model, however often asked"
    model, runner, _, field = ahead.result(120)
    if hasattr(runner, "with_threads") and len(os.sched_getaffinity(0)) > 1:
        # the preview's own ONNX Runtime session, on every core (the run's keeps off the GUI's)
        assert field is not runner and field.graph is runner.graph
        assert field.session.get_session_options().intra_op_num_threads == len(os.sched_getaffinity(0))
    loads = []
    monkeypatch.setattr(inference_run, "_load", lambda *a: loads.append(a))
    run = InferenceRun(str(small_svs), spec, (900.0, 1200.0, 400.0, 400.0))
    end = run.run(lambda info: None, lambda p: None, lambda c, r: None)
    assert end.status == "done" and run.preloaded and not loads
    assert run._job.runner is runner
    inference_run.forget_preload()
    assert inference_run.preloaded(spec, run.window, run.batch_size) is None


def test_a_remembered_onnx_choice_starts_without_loading_the_weights(spec, small_svs, tmp_path, monkeypatch):
    """A returning user's first Run: ONNX Runtime was measured and remembered for this model file on
    this machine, so the run starts from the cached graph alone (no torch import, no weights), gives
    the same tiles, and no trial is due."""
    pytest.importorskip("onnxruntime")
    import json

    from engine.api import load_model, make_runner, no_gpu_visible
    from engine.inference.runner import choice_file

    if not no_gpu_visible():
        pytest.skip("a GPU machine runs torch on the GPU")  # CI and this project's machines have none
    monkeypatch.setenv("COCOPATH_DATA_DIR", str(tmp_path / "data"))
    view = (900.0, 1200.0, 400.0, 400.0)
    first = InferenceRun(str(small_svs), spec, view)
    model, _ = load_model(spec.checkpoint)
    cache = inference_run.backends_dir()
    make_runner(model, spec, first.window, backend="onnx", cache_dir=cache)  # what a trial leaves: the graph,
    choice_file(model, first.window, first.batch_size, cache).write_text(json.dumps({"backend": "onnxruntime"}))
    inference_run.remember_file(spec, model)  # … the choice, and which weights the file holds
    inference_run.forget_preload()

    loads, trials = [], []
    monkeypatch.setattr("engine.api.load_model", lambda *a: loads.append(a))
    monkeypatch.setattr(inference_run, "measured_runner", lambda *a: trials.append(a))
    started = []
    end = InferenceRun(str(small_svs), spec, view).run(started.append, lambda p: None, lambda c, r: None)
    assert end.status == "done" and end.summary is not None
    assert started[0].backend == "onnxruntime" and not loads, "the weights were loaded"
    time.sleep(0.2)
    assert not trials, "a trial ran although the back-end was remembered"
    inference_run.forget_preload()

"""The first field of a run: no back-end trial before it, tissue handed over first, visible tiles
first, and the back-end measured only afterwards, in the background, the run going on with it.

Runs :class:`~app.state.inference_run.InferenceRun` (what the Model panel's Run starts) on
CMU-1-Small-Region with a hand-made uniform model; the back-end trial is replaced by a recorder so
the test sees when it starts (the real trial takes tens of seconds).
"""

from __future__ import annotations

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

    def fake_trial(model, spec_, batch):  # the measured winner: eager torch under another name
        events.append(("trial", time.perf_counter()))
        runner, _ = inference_run.quick_runner(model, spec_, batch)
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
    first = tiles[:len(visible)]
    assert set(first) == visible, "the visible field's tiles are final before any other"
    assert kinds.index("trial") > max(i for i, (k, v) in enumerate(events) if k == "tile" and v in visible)
    t_visible = run.timeline["visible"]
    assert t_visible > 0 and run.timeline["tissue"] <= run.timeline["model"] <= t_visible


def test_a_remembered_choice_means_no_trial(spec, small_svs, tmp_path, monkeypatch):
    monkeypatch.setenv("COCOPATH_DATA_DIR", str(tmp_path / "data"))

    def remembered(model, spec_, batch):
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

"""The back-end choice: measured once per model hash and machine, remembered in the user cache
(never per --out folder), never waited on when measure=False; the int8 graph only with an accepted
accuracy verdict and only when it agrees."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from infer_fixtures import pattern_rgb, write_slide

import engine.inference.runner as runner_mod
from engine.cli import main
from engine.inference.job import measure_backend_later, pick_runner
from engine.inference.runner import (INT8, TorchRunner, backend_cache_dir, int8_allowed, make_runner,
                                     measure_backend, model_hash, remembered_backend, verdict_file)
from engine.inference.spec import ModelSpec
from engine.models import create_model

pytest.importorskip("onnxruntime")

SPEC = ModelSpec("mobile-unet-small", "v", ("background", "tumour"), None, tile=64)


def small_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_model("mobile-unet-small", classes=2).eval()


class Trials:
    """Counts real back-end trials (wraps measure_backend)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        real = runner_mod.measure_backend

        def counted(*a, **kw):
            self.calls += 1
            return real(*a, **kw)

        monkeypatch.setattr(runner_mod, "measure_backend", counted)


def checkpoint(tmp_path: Path, name: str, seed: int) -> Path:
    from engine.training.checkpoints import save_model

    m = small_model(seed)
    return save_model(tmp_path / f"{name}.safetensors", m, {
        "model": m.config, "classes": ["background", "tumour"], "input": {"mpp": 1.0, "tile": 64}})


def test_the_choice_is_remembered_across_out_folders_and_keyed_by_model_hash(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    slide = write_slide(tmp_path / "s.tif", pattern_rgb(300, 220), mpp=1.0)
    trials = Trials(monkeypatch)
    a = checkpoint(tmp_path, "a", 0)
    for out in ("one", "two"):
        assert main(["infer", str(slide), "--model", str(a), "--out", str(tmp_path / out), "--json"]) == 0
    assert trials.calls == 1  # the second --out folder found the choice in the user cache
    backends = backend_cache_dir()
    assert len(list(backends.glob("*.choice"))) == 1 and len(list(backends.glob("*.onnx"))) == 1
    assert not list((tmp_path / "one").rglob("*.choice")) and not list((tmp_path / "two").rglob("*.onnx"))
    record = json.loads(next(backends.glob("*.choice")).read_text())
    assert record["backend"] in ("torch-eager", "torch-channels_last", "onnxruntime")
    assert {"model_sha256", "cpu", "threads", "window", "batch_size"} <= set(record)

    b = checkpoint(tmp_path, "b", 1)  # other weights: measured again, remembered beside the first
    assert main(["infer", str(slide), "--model", str(b), "--out", str(tmp_path / "three"), "--json"]) == 0
    assert trials.calls == 2 and len(list(backends.glob("*.choice"))) == 2
    capsys.readouterr()


def test_the_model_hash_follows_the_weights_not_the_object() -> None:
    m = small_model(0)
    h = model_hash(m)
    assert h == model_hash(small_model(0))  # same weights, other object
    with torch.no_grad():
        next(m.parameters()).add_(1.0)  # changed in place: a new hash
    assert model_hash(m) != h


def test_measure_false_never_runs_a_trial(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_trial(*a, **kw):
        raise AssertionError("a trial ran")

    monkeypatch.setattr(runner_mod, "measure_backend", no_trial)
    m = small_model()
    runner = pick_runner(m, SPEC, 64, batch_size=2, cache_dir=tmp_path, measure=False)
    assert runner.name in ("onnxruntime", "torch-eager") and runner.remembered is False
    assert not list(tmp_path.glob("*.choice"))  # nothing measured, nothing remembered
    x = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    assert np.abs(runner(x) - TorchRunner(m, SPEC)(x)).max() < 1e-4

    monkeypatch.undo()  # measured later (the app: in the background), then used without a trial
    assert measure_backend_later(m, SPEC, 64, batch_size=2, cache_dir=tmp_path) is not None
    name = remembered_backend(m, 64, 2, tmp_path)
    monkeypatch.setattr(runner_mod, "measure_backend", no_trial)
    again = pick_runner(m, SPEC, 64, batch_size=2, cache_dir=tmp_path, measure=False)
    assert again.name == name and again.remembered is True
    assert measure_backend_later(m, SPEC, 64, batch_size=2, cache_dir=tmp_path) == name  # not twice


def test_pick_runner_defaults_to_the_user_cache() -> None:
    m = small_model()
    pick_runner(m, SPEC, 64, batch_size=2)
    assert remembered_backend(m, 64, 2) is not None
    assert list(backend_cache_dir().glob("*.choice"))


def _verdict(m, cache: Path, accepted: bool, drop: float) -> None:
    f = verdict_file(m, cache)
    f.parent.mkdir(parents=True, exist_ok=True)
    f.write_text(json.dumps({"accepted": accepted, "miou_drop": drop}))


def test_the_int8_graph_needs_an_accepted_verdict_and_must_agree(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    m = small_model()
    assert not int8_allowed(m, tmp_path)  # no verdict on record
    _verdict(m, tmp_path, True, 0.02)  # a drop over 0.005 is refused whatever "accepted" says
    assert not int8_allowed(m, tmp_path)
    _verdict(small_model(1), tmp_path, True, 0.001)  # another model's verdict does not count
    assert not int8_allowed(m, tmp_path)
    _verdict(m, tmp_path, True, 0.001)
    assert int8_allowed(m, tmp_path)

    make_int8(m, tmp_path)
    built = []
    real = runner_mod.OnnxRunner.__init__

    def spy(self, *a, **kw):
        built.append(kw.get("int8", False))
        real(self, *a, **kw)

    monkeypatch.setattr(runner_mod.OnnxRunner, "__init__", spy)
    monkeypatch.setattr(runner_mod, "QUANT_TOL", 0.0)  # int8 now "disagrees" on the probe
    chosen = measure_backend(m, SPEC, 64, batch_size=2, cache_dir=tmp_path)
    record = json.loads(next(tmp_path.glob("*.choice")).read_text())
    assert True in built  # it was a candidate ...
    assert chosen.name != INT8 and INT8 not in record["ms_per_window"]  # ... and refused


def make_int8(m, cache: Path) -> Path:
    from engine.inference.precision import make_int8_graph

    rng = np.random.default_rng(0)
    return make_int8_graph(m, SPEC, [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
                                     for _ in range(4)], cache)


def test_the_int8_back_end_needs_its_graph(tmp_path: Path) -> None:
    from engine.errors import CocoPathError

    m = small_model()
    with pytest.raises(CocoPathError, match="bench infer --precision"):
        make_runner(m, SPEC, 64, backend="onnx-int8", cache_dir=tmp_path)
    assert make_int8(m, tmp_path).name == f"{model_hash(m)[:20]}-int8.onnx"
    r = make_runner(m, SPEC, 64, backend="onnx-int8", cache_dir=tmp_path)
    x = np.random.default_rng(0).integers(0, 256, (1, 64, 64, 3), dtype=np.uint8)
    assert r.name == INT8 and r(x).shape == (1, 1, 64, 64)

"""Whole-slide inference out of memory: the network's batch is halved until it fits (the map is the
same as a run that never failed), and a window that fits nowhere is one line naming the slide."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from infer_fixtures import RedIsTumour, plain_spec, prepare

from engine.cli import main
from engine.inference.pipeline import SlideInference
from engine.inference.runner import ProbabilityHead, TorchRunner
from engine.oom import OutOfMemory

ERRORS = {
    "cuda": lambda: torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.50 GiB"),
    "cpu-allocator": lambda: RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to "
                                          "allocate 4294967296 bytes. Error code 12"),
    "memory-error": MemoryError,
}


def levels(cache) -> list[np.ndarray]:
    return [cache.read_region(k, 0, 0, *cache.levels[k]) for k in range(cache.level_count)]


@pytest.fixture
def clean(pattern_slide: Path, tmp_path: Path) -> list[np.ndarray]:
    spec = plain_spec()
    slide, grid, cache = prepare(pattern_slide, spec, tmp_path / "clean")
    with slide:
        SlideInference(slide, grid, cache, TorchRunner(RedIsTumour(), spec), batch_size=4).run()
    return levels(cache)


class Limited(RedIsTumour):
    """Runs out of memory on batches above ``fits`` windows, and on the first ``first`` calls."""

    def __init__(self, fits: int, first: int = 0, error=ERRORS["cuda"]) -> None:
        super().__init__()
        self.fits, self.first, self.error, self.sizes = fits, first, error, []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.sizes.append(x.shape[0])
        if x.shape[0] > self.fits or len(self.sizes) <= self.first:
            raise self.error()
        return super().forward(x)


@pytest.mark.parametrize("kind", list(ERRORS))
def test_the_batch_is_halved_until_it_fits_and_the_map_is_the_same(kind: str, pattern_slide: Path, tmp_path: Path,
                                                                   clean: list[np.ndarray]) -> None:
    spec = plain_spec()
    slide, grid, cache = prepare(pattern_slide, spec, tmp_path / "c")
    model = Limited(fits=1, error=ERRORS[kind])
    with slide:
        job = SlideInference(slide, grid, cache, TorchRunner(model, spec), batch_size=4)
        assert job.run().status == "done"
    assert job.backoff.backoffs == [2, 1] and job.backoff.size == 1
    assert model.sizes[:3] == [4, 2, 1] and set(model.sizes[3:]) == {1}  # halved once, for good
    assert cache.complete
    for got, want in zip(levels(cache), clean, strict=True):
        np.testing.assert_array_equal(got, want)


def test_memory_that_was_short_for_the_first_calls_only(pattern_slide: Path, tmp_path: Path,
                                                        clean: list[np.ndarray]) -> None:
    spec = plain_spec()
    slide, grid, cache = prepare(pattern_slide, spec, tmp_path / "c")
    model = Limited(fits=99, first=2)  # the first two calls fail whatever their size
    with slide:
        job = SlideInference(slide, grid, cache, TorchRunner(model, spec), batch_size=4)
        job.run()
    assert model.sizes[:3] == [4, 2, 1] and job.backoff.size == 1
    for got, want in zip(levels(cache), clean, strict=True):
        np.testing.assert_array_equal(got, want)


def test_a_window_that_never_fits_is_one_line_naming_the_slide(pattern_slide: Path, tmp_path: Path) -> None:
    spec = plain_spec()
    slide, grid, cache = prepare(pattern_slide, spec, tmp_path / "c")
    with slide, pytest.raises(OutOfMemory) as info:
        SlideInference(slide, grid, cache, TorchRunner(Limited(fits=0), spec), batch_size=4).run()
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{slide.info.path}: out of memory")
    assert f"{grid.window}×{grid.window} px window" in message
    assert cache.done_tiles() == set()  # nothing half-done: a later run starts clean


def test_infer_on_the_command_line(pattern_slide: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    from engine.models import create_model
    from engine.training.checkpoints import save_model

    model = create_model("mobile-unet-small", classes=2)
    ckpt = save_model(tmp_path / "m.safetensors", model, {"model": model.config, "classes": ["background", "tumour"],
                                                          "input": {"mpp": 2.0, "tile": 128}})
    argv = ["infer", str(pattern_slide), "--model", str(ckpt), "--backend", "torch", "--batch-size", "4", "--json",
            "--window", "128", "--margin", "32"]
    assert main([*argv, "--out", str(tmp_path / "clean")]) == 0
    capsys.readouterr()
    real, sizes = ProbabilityHead.forward, []

    def forward(self, x, fits=[2]):  # noqa: B006 - the test changes how much fits
        sizes.append(x.shape[0])
        if x.shape[0] > fits[0]:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return real(self, x)

    monkeypatch.setattr(ProbabilityHead, "forward", forward)
    assert main([*argv, "--out", str(tmp_path / "oom")]) == 0
    assert 4 in sizes and max(sizes[sizes.index(2):]) == 2
    got, want = (json.loads((tmp_path / d / "pattern.json").read_text())["measurements"] for d in ("oom", "clean"))
    assert got == want
    forward.__defaults__[0][0] = 0  # nothing fits
    capsys.readouterr()
    assert main([*argv, "--out", str(tmp_path / "none")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("cocopath-engine: ") and "Traceback" not in err
    assert "pattern.tif: out of memory running the model even on one" in err
    assert not (tmp_path / "none" / "pattern.json").exists()


def test_choosing_the_back_end_out_of_memory_falls_back_to_eager_torch(monkeypatch, tmp_path: Path) -> None:
    from engine.inference.job import pick_runner

    spec = plain_spec()
    real = ProbabilityHead.forward

    def forward(self, x):  # the trial's window (128 px, one at a time) does not fit
        if x.shape[1] >= 128:
            raise RuntimeError("DefaultCPUAllocator: not enough memory: you tried to allocate 2147483648 bytes.")
        return real(self, x)

    monkeypatch.setattr(ProbabilityHead, "forward", forward)
    runner = pick_runner(RedIsTumour(), spec, 128, batch_size=4, cache_dir=tmp_path)
    assert isinstance(runner, TorchRunner) and runner.name == "torch-eager"
    assert not list(tmp_path.glob("*.choice"))  # nothing measured, nothing remembered

    def broken(self, x):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    monkeypatch.setattr(ProbabilityHead, "forward", broken)
    with pytest.raises(RuntimeError, match="shapes"):
        pick_runner(RedIsTumour(), spec, 128, batch_size=4)

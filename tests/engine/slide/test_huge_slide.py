"""A 100 000 × 100 000 single-level slide (no pyramid: 37 GiB of RGBA) opens, has its tissue found
and is inferred over its tissue within a memory budget, peak resident memory measured in a child
process (``getrusage(RUSAGE_CHILDREN)`` of a probe whose only child is the command).

The slide is a generic tiled TIFF written tile by tile with tifffile
(:func:`tiff_fixtures.write_sparse_slide`): glass tiles are left out of the file, which OpenSlide
draws as transparent (white once composited), so the file is under 1 MB and reading it costs no
decoding; a 2 000² patch of tissue-like tiles sits at (40 000, 40 000).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tiff_fixtures import write_sparse_slide

ROOT = Path(__file__).resolve().parents[3]
SIZE = 100_000
PATCH = (40_000, 40_000, 2_000, 2_000)
MIB = 2**20
#: Peak resident memory allowed (the level whole would be 37 GiB of RGBA, 28 GiB of RGB).
BUDGET_OPEN = 400 * MIB
BUDGET_TISSUE = 1024 * MIB
BUDGET_INFER = 1536 * MIB

_PROBE = """
import json, resource, subprocess, sys
p = subprocess.run(sys.argv[1:], capture_output=True, text=True)
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(json.dumps({"rc": p.returncode, "out": p.stdout, "err": p.stderr,
                  "peak": peak if sys.platform == "darwin" else peak * 1024}))
"""


def patch_tiles(tile: int = 512) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1): the patch grown to the 512² tiles it meets (they hold the tissue)."""
    x, y, w, h = PATCH
    return (x // tile * tile, y // tile * tile, -(-(x + w) // tile) * tile, -(-(y + h) // tile) * tile)


def measured(*argv: str, timeout: float = 120) -> dict:
    """Run ``argv`` (a Python module or script of this project) in a child; its exit code, output
    and peak resident memory in bytes."""
    r = subprocess.run([sys.executable, "-c", _PROBE, sys.executable, *argv], capture_output=True,
                       text=True, timeout=timeout, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


@pytest.fixture(scope="module")
def huge(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = write_sparse_slide(tmp_path_factory.mktemp("huge") / "huge.tif", (SIZE, SIZE), PATCH)
    assert path.stat().st_size < 2 * MIB
    return path


def test_info_opens_it(huge: Path) -> None:
    r = measured("-m", "engine.cli", "info", str(huge), "--json")
    assert r["rc"] == 0, r["err"]
    data = json.loads(r["out"])
    assert data["dimensions"] == [SIZE, SIZE] and len(data["levels"]) == 1
    assert data["mpp"] == [0.25, 0.25]
    print(f"info: peak {r['peak'] / MIB:.0f} MiB")
    assert r["peak"] < BUDGET_OPEN


_TISSUE = """
import json, sys, numpy as np
from engine.slide import open_slide
from engine.slide.tissue import detect_tissue
with open_slide(sys.argv[1]) as s:
    thumb = s.thumbnail(512)
    t = detect_tissue(s)
ys, xs = np.nonzero(t.mask)
pink = np.nonzero((thumb[..., 0].astype(int) - thumb[..., 1]) > 40)
print(json.dumps({"ds": t.downsample, "shape": t.mask.shape, "cells": int(t.mask.sum()),
                  "box": [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1],
                  "thumb": thumb.shape, "thumb_box": [int(pink[1].min()), int(pink[0].min()),
                                                      int(pink[1].max()) + 1, int(pink[0].max()) + 1]}))
"""


def test_tissue_detection_finds_the_patch(huge: Path) -> None:
    r = measured("-c", _TISSUE, str(huge))
    assert r["rc"] == 0, r["err"]
    got = json.loads(r["out"])
    ds = got["ds"]
    assert max(got["shape"]) <= 4096  # coarser than 1/16 on a slide this size: bounded mask
    x0, y0, x1, y1 = patch_tiles()
    bx0, by0, bx1, by1 = (v * ds for v in got["box"])
    assert abs(bx0 - x0) <= 2 * ds and abs(by0 - y0) <= 2 * ds
    assert abs(bx1 - x1) <= 2 * ds and abs(by1 - y1) <= 2 * ds
    area = got["cells"] * ds * ds
    assert area == pytest.approx((x1 - x0) * (y1 - y0), rel=0.05)  # one patch, nothing else
    assert got["thumb"] == [512, 512, 3]
    tx0, ty0, tx1, ty1 = got["thumb_box"]
    scale = 512 / SIZE
    assert abs(tx0 - x0 * scale) <= 2 and abs(tx1 - x1 * scale) <= 2
    assert abs(ty0 - y0 * scale) <= 2 and abs(ty1 - y1 * scale) <= 2
    print(f"open + thumbnail + tissue: peak {r['peak'] / MIB:.0f} MiB")
    assert r["peak"] < BUDGET_TISSUE


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained small student: 128² windows at 4 µm/px (windows of 2048² slide pixels)."""
    from engine.models import create_model
    from engine.training.checkpoints import save_model

    model = create_model("mobile-unet-small", classes=2)
    path = tmp_path_factory.mktemp("model") / "student.safetensors"
    save_model(path, model, {"model": model.config, "classes": ["background", "tumour"],
                             "input": {"mpp": 4.0, "tile": 128}})
    return path


def test_infer_runs_over_the_tissue_only(huge: Path, checkpoint: Path, tmp_path: Path) -> None:
    r = measured("-m", "engine.cli", "infer", str(huge), "--model", str(checkpoint), "--out",
                 str(tmp_path), "--json", "--backend", "torch", timeout=240)
    assert r["rc"] == 0, r["err"]
    [s] = json.loads(r["out"])
    assert s["status"] == "done"
    tiles = s["tiles"]
    from engine.inference.geometry import run_window

    window, margin = run_window(128)  # the run's windows for the card's 128 px tile
    side = -(-SIZE * 0.25 // 4.0)  # prediction map pixels at the model's 4 µm/px
    per_side = -(-side // (window - 2 * margin))
    assert 0 < tiles["done"] == tiles["tissue"] <= 16 and tiles["all"] == per_side ** 2
    for p in s["outputs"].values():
        assert Path(p).is_file()
    tissue_mm2 = s["measurements"]["tissue_area_mm2"]
    x0, y0, x1, y1 = patch_tiles()
    assert tissue_mm2 == pytest.approx((x1 - x0) * (y1 - y0) * 0.25e-3 ** 2, rel=0.1)
    print(f"infer: peak {r['peak'] / MIB:.0f} MiB, {tiles['done']} of {tiles['all']} tiles")
    assert r["peak"] < BUDGET_INFER


def test_read_reduced_matches_a_box_filter(small_svs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Exact below the pixel budget (every pixel, any split into bands and reads), close above."""
    import engine.slide.reduced as reduced
    from engine.slide import RegionRequest, open_slide

    monkeypatch.setattr(reduced, "BAND", 300)
    monkeypatch.setattr(reduced, "MAX_READ_PIXELS", 40_000)
    with open_slide(small_svs) as s:
        w, h = s.info.dimensions
        argb = s.read_argb(RegionRequest(s.info.path, 0, 0, 0, w, h))
        b = argb.view(np.uint8).reshape(h, w, 4).astype(np.float64)
        for step in (1, 7, 16, 450):
            got = reduced.read_reduced(s, 0, 0, 0, w, h, step)
            nr, nc = -(-h // step), -(-w // step)
            padded = np.zeros((nr * step, nc * step, 5))
            padded[:h, :w, :4], padded[:h, :w, 4] = b, 1  # channel 4 counts the pixels
            sums = padded.reshape(nr, step, nc, step, 5).sum(axis=(1, 3))
            n = sums[..., 4:].astype(np.int64)
            total = sums[..., [2, 1, 0]].astype(np.int64) + 255 * n - sums[..., 3:4].astype(np.int64)
            want = np.minimum((2 * total + n) // (2 * n), 255)  # the mean on white, half up
            assert got.shape == (nr, nc, 3)
            assert np.array_equal(got, want), step
            if step > 1:  # sampled rows and columns: the same picture, roughly
                sampled = reduced.read_reduced(s, 0, 0, 0, w, h, step, exact_pixels=w * h / 4)
                assert np.abs(sampled.astype(int) - want).mean() < 12


def test_a_coarse_window_is_read_in_pieces(small_svs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An inference window far coarser than its level is averaged down in bounded reads, and shows
    what a single read would."""
    from engine.inference import pipeline
    from engine.inference.geometry import make_grid
    from engine.slide import open_slide

    with open_slide(small_svs) as s:
        grid = make_grid(s.info, 0.499 * 9, tile=128, margin=16)  # 1152² slide pixels a window
        whole = pipeline.read_window(s, grid, 1, 1)
        sizes = []
        read = s.read_argb
        monkeypatch.setattr(s, "read_argb", lambda req: sizes.append(req.width * req.height) or read(req))
        monkeypatch.setattr(pipeline, "MAX_READ_PIXELS", 100_000)
        monkeypatch.setattr("engine.slide.reduced.MAX_READ_PIXELS", 100_000)
        pieces = pipeline.read_window(s, grid, 1, 1)
    assert pieces.shape == whole.shape == (128, 128, 3)
    assert sizes and max(sizes) <= 100_000
    assert np.abs(pieces.astype(int) - whole).mean() < 8

"""With no screen, `cocopath SLIDE` says so; screenshots still work offscreen."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def _env_without_display() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in {"DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM"}}
    return env


def test_interactive_start_without_a_display_is_one_clear_line(small_svs: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "app", str(small_svs)], env=_env_without_display(),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert r.stderr.strip().startswith("cocopath: no display") and "\n" not in r.stderr.strip()


def test_screenshot_without_a_display_renders_offscreen(small_svs: Path, tmp_path: Path) -> None:
    out = tmp_path / "shot.png"
    r = subprocess.run([sys.executable, "-m", "app", str(small_svs), "--screenshot", str(out),
                        "--size", "640x480"], env=_env_without_display(), capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert out.stat().st_size > 10_000


def test_screenshot_with_predict_shows_the_models_mask(small_svs: Path, tmp_path: Path) -> None:
    """--predict runs the default model first: a tumour-everywhere model turns the tissue red."""
    import numpy as np
    from PIL import Image

    import torch

    from app.viewer.layers.palette import PREDICTION_COLORS
    from engine.models import create_model
    from engine.training.checkpoints import save_model

    model = create_model("mobile-unet-small", classes=2)  # a registered model the subprocess can build …
    with torch.no_grad():  # … that calls every pixel tumour
        model.head.weight.zero_()
        model.head.bias.copy_(torch.tensor([0.0, 8.0]))
    path = save_model(tmp_path / "everywhere.safetensors", model, {
        "model": model.config, "classes": ["background", "tumour"], "input": {"mpp": 2.0, "tile": 256}})
    env = {**os.environ, "COCOPATH_DEFAULT_MODEL": str(path),
           "COCOPATH_DATA_DIR": str(tmp_path / "data"), "QT_QPA_PLATFORM": "offscreen"}
    shots = {}
    for name, extra in (("plain", []), ("predicted", ["--predict"])):
        out = tmp_path / f"{name}.png"
        r = subprocess.run([sys.executable, "-m", "app", str(small_svs), "--screenshot", str(out), *extra,
                            "--size", "800x600"], env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        shots[name] = np.asarray(Image.open(out).convert("RGB")).astype(int)
    plain, pred = shots["plain"], shots["predicted"]
    changed = np.abs(pred - plain).sum(axis=2) > 30
    colour = np.array(PREDICTION_COLORS[0])  # predictions are drawn in their own colours
    nearer = np.abs(pred - colour).sum(axis=2) < np.abs(plain - colour).sum(axis=2)
    assert changed.mean() > 0.02 and (changed & nearer).sum() > 0.8 * changed.sum()
    r = subprocess.run([sys.executable, "-m", "app", str(small_svs), "--predict"], env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--predict goes with --screenshot" in r.stderr

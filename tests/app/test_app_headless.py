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

"""The sample-slide download (against a local HTTP server) and the ``cocopath`` command line."""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from qt_probe import wait_drawn

ROOT = Path(__file__).resolve().parents[2]


class _SlowHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files; with ``delay`` it sends them in 64 KiB pieces, ``delay`` seconds apart."""

    delay = 0.0

    def log_message(self, *args: object) -> None:  # keep the test output clean
        pass

    def copyfile(self, source, outputfile) -> None:  # type: ignore[override]
        while chunk := source.read(64 * 1024):
            try:
                outputfile.write(chunk)
            except (BrokenPipeError, ConnectionResetError):
                return
            if self.delay:
                time.sleep(self.delay)


@pytest.fixture
def http_dir(tmp_path: Path, small_svs: Path, no_mpp_svs: Path) -> Iterator[tuple[str, type]]:
    root = tmp_path / "www"
    root.mkdir()
    shutil.copy(small_svs, root / "CMU-1-Small-Region.svs")
    shutil.copy(no_mpp_svs, root / "wrong.svs")
    handler = type("Handler", (_SlowHandler,), {"delay": 0.0})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                             functools.partial(handler, directory=str(root)))
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", handler
    server.shutdown()
    server.server_close()


@pytest.fixture
def no_local_sample(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COCOPATH_SAMPLE", raising=False)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sample_download_shows_progress_and_opens_the_slide(qtbot, window, http_dir, no_local_sample) -> None:
    from engine.slide import sample

    base, _ = http_dir
    assert sample.local_sample() is None
    window.open_sample(url=f"{base}/CMU-1-Small-Region.svs")
    dl = window.downloader
    assert dl is not None and dl.dialog.isVisible()
    values = []
    dl.worker.progress.connect(lambda done, total: values.append((done, total)))
    qtbot.waitUntil(lambda: window.source is not None, timeout=20000)
    assert values and values[-1][0] == values[-1][1] == sample.SAMPLE_SIZE
    assert not dl.dialog.isVisible()
    assert Path(window.source.info.path) == sample.cached_sample_path().resolve()
    assert sample.local_sample() is not None  # cached: next time no download
    wait_drawn(qtbot, window.view)


@pytest.mark.parametrize("where", ["offline", "wrong_file"])
def test_sample_download_failure_is_a_clear_message(qtbot, window, http_dir, no_local_sample, where) -> None:
    from engine.slide import sample

    base, _ = http_dir
    url = f"http://127.0.0.1:{_closed_port()}/x.svs" if where == "offline" else f"{base}/wrong.svs"
    failures: list[str] = []
    window.open_sample(url=url)
    dl = window.downloader
    dl.failed.connect(failures.append)
    qtbot.waitUntil(lambda: bool(failures), timeout=30000)
    box = dl.error_box
    qtbot.waitUntil(lambda: window.downloader is None, timeout=5000)
    assert window.source is None
    assert "Traceback" not in failures[0] and "\n" not in failures[0]
    assert box is not None and box.isVisible() and box.text() == failures[0]
    assert not sample.cached_sample_path().exists()
    box.close()


def test_sample_download_can_be_cancelled(qtbot, window, http_dir, no_local_sample) -> None:
    from engine.slide import sample

    base, handler = http_dir
    handler.delay = 0.05  # about 1.5 s for the whole file
    window.open_sample(url=f"{base}/CMU-1-Small-Region.svs")
    dl = window.downloader
    got: list[int] = []
    dl.worker.progress.connect(lambda done, total: got.append(done))
    qtbot.waitUntil(lambda: bool(got) and got[-1] > 0, timeout=10000)
    from PySide6.QtCore import Qt
    from PySide6.QtWidgets import QPushButton

    button = next(b for b in dl.dialog.findChildren(QPushButton) if "Cancel" in b.text())
    qtbot.mouseClick(button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: window.downloader is None, timeout=10000)
    assert window.source is None
    assert dl.error_box is None  # cancelling is not an error
    assert not sample.cached_sample_path().exists()


# -- the command line ---------------------------------------------------------------------------------

def run_cli(*args: str, tmp_path: Path, env: dict[str, str] | None = None,
            timeout: float = 90) -> subprocess.CompletedProcess[str]:
    e = dict(os.environ)
    e.update({"QT_QPA_PLATFORM": "offscreen", "XDG_CONFIG_HOME": str(tmp_path / "config"),
              "COCOPATH_DATA_DIR": str(tmp_path / "data")})
    e.pop("COCOPATH_SAMPLE", None)
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "app", *args], cwd=ROOT, env=e, capture_output=True,
                          text=True, timeout=timeout)


def png_rgb(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def test_cli_screenshot_writes_a_non_blank_png(tmp_path, small_svs) -> None:
    out = tmp_path / "shot.png"
    r = run_cli(str(small_svs), "--screenshot", str(out), "--center", "1100,1500",
                "--magnification", "10", "--size", "1000x700", tmp_path=tmp_path)
    assert r.returncode == 0, r.stderr
    img = png_rgb(out)
    assert img.shape[:2] == (700, 1000)
    assert img.std() > 20 and len(np.unique(img.reshape(-1, 3), axis=0)) > 1000


def test_cli_opens_the_sample_when_no_slide_is_given(tmp_path, small_svs) -> None:
    out = tmp_path / "sample.png"
    r = run_cli("--screenshot", str(out), "--size", "800x600", tmp_path=tmp_path,
                env={"COCOPATH_SAMPLE": str(small_svs)})
    assert r.returncode == 0, r.stderr
    assert png_rgb(out).std() > 20


@pytest.mark.parametrize("args", [["broken"], ["damaged", "--magnification", "20"], ["missing.svs"],
                                  ["--center", "nonsense"], ["no_mpp", "--magnification", "10"]])
def test_cli_errors_are_one_line(tmp_path, small_svs, no_mpp_svs, args) -> None:
    broken = tmp_path / "broken.svs"
    broken.write_bytes(Path(small_svs).read_bytes()[:200_000])
    data = bytearray(Path(small_svs).read_bytes())
    data[700_000:800_000] = b"\xff" * 100_000  # opens, but tiles cannot be decoded
    damaged = tmp_path / "damaged.svs"
    damaged.write_bytes(bytes(data))
    names = {"broken": str(broken), "damaged": str(damaged), "no_mpp": str(no_mpp_svs)}
    argv = [names.get(a) or (str(tmp_path / a) if a.endswith(".svs") else a) for a in args]
    if argv[0].startswith("--"):
        argv = [str(small_svs), *argv]
    r = run_cli(*argv, "--screenshot", str(tmp_path / "x.png"), tmp_path=tmp_path)
    assert r.returncode != 0
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("cocopath: error:")]
    assert len(lines) == 1 and "Traceback" not in r.stderr
    assert not (tmp_path / "x.png").exists()


def test_start_up_does_not_import_torch(tmp_path, small_svs) -> None:
    r = run_cli(str(small_svs), "--first-frame-probe", tmp_path=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "torch=False" in r.stdout and "ok=True" in r.stdout


@pytest.mark.slow
def test_viewer_benchmark_runs_and_writes_every_figure(tmp_path) -> None:
    """A small run of ``cocopath --bench-viewer`` (figures are not asserted: timings vary)."""
    import json

    out = tmp_path / "viewer.json"
    r = run_cli("--bench-viewer", str(out), "--size", "2048", tmp_path=tmp_path, timeout=240)
    assert r.returncode == 0, r.stderr[-2000:]
    data = json.loads(out.read_text())
    assert set(data) >= {"machine", "slide", "viewport_to_final", "frame_pan_cached",
                         "tile_path_vs_raw_read_region", "memory", "startup"}
    assert data["slide"]["width"] == 2048
    v = data["viewport_to_final"]
    assert v["cold"]["n"] == v["steps"] * v["cold_passes"] and v["warm"]["n"] == v["steps"]
    assert data["startup"]["torch_imported"] is False
    # the start-up probe's app kept its settings and data elsewhere: the user's are untouched
    assert not (tmp_path / "data").exists() and not (tmp_path / "config").exists()


def test_cli_screenshot_at_high_dpi(tmp_path, small_svs) -> None:
    out = tmp_path / "hidpi.png"
    r = run_cli(str(small_svs), "--screenshot", str(out), "--size", "900x600", "--magnification", "5",
                tmp_path=tmp_path, env={"QT_SCALE_FACTOR": "2"})
    assert r.returncode == 0, r.stderr
    img = png_rgb(out)
    assert img.shape[1] == 1800 and img.shape[0] >= 1200  # device pixels
    assert img.std() > 20

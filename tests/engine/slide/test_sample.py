"""The sample-slide download: checked, resumable from nothing, clear when offline or cancelled."""

from __future__ import annotations

import hashlib
import http.server
import socket
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest

from engine.slide import sample
from engine.slide.sample import SampleDownloadError, download_sample, local_sample


@pytest.fixture()
def server(tmp_path: Path, small_svs: Path) -> Iterator[str]:
    root = tmp_path / "www"
    root.mkdir()
    (root / "CMU-1-Small-Region.svs").write_bytes(small_svs.read_bytes())
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None  # type: ignore[method-assign]
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/CMU-1-Small-Region.svs"
    httpd.shutdown()
    httpd.server_close()


def test_published_checksum_matches_the_shared_copy(small_svs: Path) -> None:
    data = small_svs.read_bytes()
    assert len(data) == sample.SAMPLE_SIZE
    assert hashlib.sha256(data).hexdigest() == sample.SAMPLE_SHA256


def test_download_with_progress_then_cached(server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(sample.ENV_VAR, raising=False)
    assert local_sample() is None
    seen: list[tuple[int, int]] = []
    path = download_sample(lambda d, t: seen.append((d, t)), url=server)
    assert path == sample.cached_sample_path() and path.stat().st_size == sample.SAMPLE_SIZE
    assert seen[0] == (0, sample.SAMPLE_SIZE) and seen[-1] == (sample.SAMPLE_SIZE, sample.SAMPLE_SIZE)
    assert local_sample() == path
    # a second call does not download again (the server is gone)
    assert download_sample(url="http://127.0.0.1:9/none") == path


def test_wrong_checksum_keeps_nothing(server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(sample.ENV_VAR, raising=False)
    with pytest.raises(SampleDownloadError, match="damaged"):
        download_sample(url=server, sha256="0" * 64)
    assert not list(sample.cached_sample_path().parent.iterdir())


def test_cancel_keeps_nothing(server: str) -> None:
    with pytest.raises(SampleDownloadError, match="cancelled"):
        download_sample(url=server, cancelled=lambda: True)
    assert not list(sample.cached_sample_path().parent.iterdir())


def test_offline_says_so() -> None:
    with socket.socket() as s:  # a port with nobody listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(SampleDownloadError, match="offline") as err:
        download_sample(url=f"http://127.0.0.1:{port}/x.svs", timeout=2)
    assert "COCOPATH_SAMPLE" in str(err.value)


def test_environment_variable_wins(monkeypatch: pytest.MonkeyPatch, small_svs: Path) -> None:
    monkeypatch.setenv(sample.ENV_VAR, str(small_svs))
    assert local_sample() == small_svs
    monkeypatch.setenv(sample.ENV_VAR, "/no/such/slide.svs")
    assert local_sample() is None

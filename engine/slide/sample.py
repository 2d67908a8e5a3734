"""The sample slide: OpenSlide's public CC0 test slide CMU-1-Small-Region, downloaded on request.

``COCOPATH_SAMPLE`` naming a local slide file wins over any download (tests, offline machines).
Downloads go to a temporary file, are checked against the published size and SHA-256, and only
then are moved into the user data folder, so a half-finished download is never mistaken for a slide.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from engine.errors import CocoPathError

log = logging.getLogger(__name__)

SAMPLE_URL = "https://openslide.cs.cmu.edu/download/openslide-testdata/Aperio/CMU-1-Small-Region.svs"
SAMPLE_SIZE = 1_938_955
SAMPLE_SHA256 = "ed92d5a9f2e86df67640d6f92ce3e231419ce127131697fbbce42ad5e002c8a7"
SAMPLE_NAME = "CMU-1-Small-Region.svs"
ENV_VAR = "COCOPATH_SAMPLE"
_CHUNK = 64 * 1024


class SampleDownloadError(CocoPathError):
    """The sample slide could not be fetched (offline, interrupted, wrong checksum, cancelled)."""


def user_data_dir() -> Path:
    """CoCoPath's per-user data folder (XDG on Linux, Application Support on macOS, AppData)."""
    if env := os.environ.get("COCOPATH_DATA_DIR"):
        return Path(env)
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA", Path.home() / "AppData" / "Local"))
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    else:
        base = Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local" / "share"))
    return base / "cocopath"


def cached_sample_path() -> Path:
    return user_data_dir() / "samples" / SAMPLE_NAME


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def local_sample() -> Path | None:
    """A sample slide already on this machine: ``$COCOPATH_SAMPLE``, else the verified cached copy."""
    env = os.environ.get(ENV_VAR)
    if env:
        p = Path(env).expanduser()
        if p.exists():
            return p
        log.warning("%s=%s does not exist; ignoring it", ENV_VAR, env)
    cached = cached_sample_path()
    if cached.is_file() and cached.stat().st_size == SAMPLE_SIZE:
        return cached
    return None


def download_sample(
    progress: Callable[[int, int], None] | None = None,
    cancelled: Callable[[], bool] | None = None,
    url: str = SAMPLE_URL,
    *,
    sha256: str = SAMPLE_SHA256,
    size: int = SAMPLE_SIZE,
    timeout: float = 20.0,
) -> Path:
    """Download the sample slide into the user data folder and return its path (blocking).

    ``progress(done, total)`` is called as bytes arrive; ``cancelled()`` is polled between chunks.
    Raises :class:`SampleDownloadError` with a clear message on any failure; nothing partial remains.
    """
    dest = cached_sample_path()
    if dest.is_file() and dest.stat().st_size == size and sha256_of(dest) == sha256:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    h = hashlib.sha256()
    done = 0
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp, open(tmp, "wb") as out:
            total = int(resp.headers.get("Content-Length") or size)
            if progress:
                progress(0, total)
            while chunk := resp.read(_CHUNK):
                if cancelled and cancelled():
                    raise SampleDownloadError("download of the sample slide was cancelled")
                out.write(chunk)
                h.update(chunk)
                done += len(chunk)
                if progress:
                    progress(done, total)
            out.flush()
            os.fsync(out.fileno())
    except SampleDownloadError:
        tmp.unlink(missing_ok=True)
        raise
    except (urllib.error.URLError, OSError, ValueError) as exc:
        tmp.unlink(missing_ok=True)
        reason = getattr(exc, "reason", None) or exc
        raise SampleDownloadError(
            f"cannot download the sample slide from {url}: {reason}. Are you offline? "
            f"Open a slide of your own, or set {ENV_VAR} to a local slide file"
        ) from None
    if h.hexdigest() != sha256 or done != size:
        tmp.unlink(missing_ok=True)
        raise SampleDownloadError(
            f"the sample slide downloaded from {url} is damaged ({done} bytes, checksum "
            f"{h.hexdigest()[:12]}… instead of {size} bytes, {sha256[:12]}…); try again later"
        )
    tmp.replace(dest)
    log.info("sample slide saved to %s", dest)
    return dest

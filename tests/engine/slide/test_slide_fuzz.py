"""Fuzzing slide headers: small valid slides (a generic tiled TIFF, the same as BigTIFF, an
Aperio-like SVS), their IFD entries, header bytes and tiles corrupted and the files truncated, then
opened as the engine does (open, read a region, detect tissue, thumbnail, associated images).

Every outcome is a working slide or a :class:`SlideError` of one line naming the file: never another
exception, never a crash of the process (OpenSlide aborts on some corrupt headers: a tile of 476 GB
claimed by a mutated TileWidth; the engine refuses those before it reads), never a hang. The checks
run in a worker process so that a crash or a hang is seen and counted (it is restarted), not fatal
to the test run; each example has :data:`LIMIT_S` seconds.
"""

from __future__ import annotations

import collections
import json
import selectors
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tiff_fixtures import tissue_like_tile

ROOT = Path(__file__).resolve().parents[3]
LIMIT_S = 30.0
FUZZ = settings(deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])

_WORKER = """
import json, sys, traceback
from engine.errors import SlideError
from engine.slide import RegionRequest, open_slide
from engine.slide.tissue import detect_tissue
for line in sys.stdin:
    path = line.rstrip("\\n")
    try:
        with open_slide(path) as s:
            i = s.info
            w, h = i.dimensions
            s.read_rgb(RegionRequest(i.path, 0, w // 3, h // 3, min(w, 64), min(h, 64)))
            detect_tissue(s, target_downsample=2)
            s.thumbnail(64)
            for name in i.associated_images:
                s.associated_image(name)
        res = {"outcome": "ok"}
    except SlideError as e:
        res = {"outcome": "error", "message": str(e)}
    except BaseException:
        res = {"outcome": "traceback", "message": traceback.format_exc()}
    print(json.dumps(res), flush=True)
"""


class Worker:
    """The engine's slide checks in a child process: crashes and hangs are outcomes, not the end."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None

    def _start(self) -> subprocess.Popen:
        if self.proc is None or self.proc.poll() is not None:
            self.proc = subprocess.Popen([sys.executable, "-c", _WORKER], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                         text=True, cwd=ROOT)
        return self.proc

    def check(self, path: Path) -> dict:
        proc = self._start()
        proc.stdin.write(f"{path}\n")
        proc.stdin.flush()
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            ready = sel.select(LIMIT_S)
        if not ready:
            proc.kill()
            proc.wait()
            return {"outcome": "hang"}
        line = proc.stdout.readline()
        if not line:
            rc = proc.wait()
            return {"outcome": "crash", "message": f"exit {rc}: {proc.stderr.read()[-400:]}"}
        return json.loads(line)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=30)


# -- seeds ---------------------------------------------------------------------------------------

def _image() -> np.ndarray:
    rgb = np.full((192, 256, 3), 242, np.uint8)
    rgb[32:160, 48:176] = tissue_like_tile(128)
    return rgb


def _generic(path: Path, bigtiff: bool) -> Path:
    import tifffile

    rgb = _image()
    with tifffile.TiffWriter(path, bigtiff=bigtiff) as tif:
        for k, page in enumerate([rgb, rgb[::2, ::2].copy()]):
            tif.write(page, tile=(64, 64), photometric="rgb", compression="zlib",
                      subfiletype=0 if k == 0 else 1, metadata=None,
                      resolution=(1e4 / (0.5 * 2**k),) * 2, resolutionunit="CENTIMETER")
    return path


def _aperio(path: Path) -> Path:
    """Aperio's layout: level 0 (tiled, JPEG, the description OpenSlide recognises), a stripped
    thumbnail, level 1."""
    import tifffile

    rgb = _image()
    desc = ("Aperio Image Library v10.0.50\r\n256x192 [0,0 256x192] (64x64) JPEG/RGB Q=80"
            "|AppMag = 20|MPP = 0.5")
    with tifffile.TiffWriter(path) as tif:
        tif.write(rgb, tile=(64, 64), photometric="rgb", compression="jpeg", description=desc,
                  metadata=None)
        tif.write(rgb[::4, ::4].copy(), photometric="rgb", compression="jpeg", metadata=None,
                  description="Aperio Image Library v10.0.50\r\n64x48 -> 64x48 - ")
        tif.write(rgb[::2, ::2].copy(), tile=(64, 64), photometric="rgb", compression="jpeg",
                  description=desc, metadata=None)
    return path


def _entries(path: Path) -> list[tuple[int, int]]:
    """(file offset, size of its count and value fields) of every IFD entry."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        field = 8 if tif.is_bigtiff else 4
        return [(tag.offset, field) for page in tif.pages for tag in page.tags]


@pytest.fixture(scope="module")
def seeds() -> Iterator[dict[str, tuple[Path, bytes, list[tuple[int, int]]]]]:
    with tempfile.TemporaryDirectory() as d:
        made = {"tiff": _generic(Path(d) / "seed.tif", False),
                "bigtiff": _generic(Path(d) / "seed-big.tif", True),
                "svs": _aperio(Path(d) / "seed.svs")}
        yield Seeds({k: (p, p.read_bytes(), _entries(p)) for k, p in made.items()})


class Seeds(dict):
    def __repr__(self) -> str:  # (hypothesis prints the test's arguments: not the bytes)
        return f"Seeds({', '.join(self)})"


@pytest.fixture(scope="module")
def worker() -> Iterator[Worker]:
    w = Worker()
    yield w
    w.close()


COUNTS: collections.Counter = collections.Counter()


@pytest.fixture(scope="module", autouse=True)
def _report() -> Iterator[None]:
    yield
    families = sorted({k[0] for k in COUNTS})
    for fam in families:
        n = {o: COUNTS[fam, o] for o in ("ok", "error", "traceback", "crash", "hang")}
        print(f"\nslide fuzz {fam}: {sum(n.values())} tried, {n['ok']} opened, {n['error']} clear "
              f"errors, {n['traceback']} tracebacks, {n['crash']} crashes, {n['hang']} hangs")


@pytest.fixture(scope="module")
def scratch() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as d:
        yield Path(d)


def _check(worker: Worker, path: Path, family: str) -> None:
    res = worker.check(path)
    outcome = res["outcome"]
    COUNTS[family, outcome] += 1
    event(outcome)
    assert outcome in ("ok", "error"), f"{outcome}: {res.get('message', '')}"
    if outcome == "error":
        text = res["message"]
        assert str(path) in text and "\n" not in text, text


# -- mutations -----------------------------------------------------------------------------------

INTERESTING = st.sampled_from([0, 1, 2, 7, 0xFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, 2**40, 2**63 - 1,
                               2**64 - 1, 16, 64, 4096, 65536, 1 << 20, 1 << 30])
VALUE = st.one_of(INTERESTING, st.integers(0, 2**64 - 1))


@st.composite
def ifd_edit(draw: st.DrawFn, entries: list[tuple[int, int]]) -> tuple[int, bytes]:
    """(offset, bytes): a new type, count or value/offset for one IFD entry."""
    offset, field = draw(st.sampled_from(entries))
    part = draw(st.sampled_from(["type", "count", "value", "tag"]))
    if part == "tag":
        return offset, draw(st.integers(0, 0xFFFF)).to_bytes(2, "little")
    if part == "type":
        return offset + 2, draw(st.integers(0, 20)).to_bytes(2, "little")
    where = offset + 4 if part == "count" else offset + 4 + field
    return where, (draw(VALUE) % (1 << 8 * field)).to_bytes(field, "little")


@st.composite
def mutated(draw: st.DrawFn, seed: tuple[Path, bytes, list[tuple[int, int]]]) -> bytes:
    _, data, entries = seed
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 3))):
        if not out:
            break
        op = draw(st.sampled_from(["ifd", "ifd", "header", "bytes", "truncate"]))
        if op == "ifd":
            at, new = draw(ifd_edit(entries))
        elif op == "header":  # byte order, magic, first IFD offset
            at, new = draw(st.integers(0, 15)), draw(st.binary(min_size=1, max_size=4))
        elif op == "bytes":
            at, new = draw(st.integers(0, len(out) - 1)), draw(st.binary(min_size=1, max_size=8))
        else:
            del out[draw(st.integers(0, len(out) - 1)):]
            continue
        if at < len(out):
            out[at:at + len(new)] = new[:len(out) - at]
    return bytes(out)


@settings(FUZZ, max_examples=1200)
@given(data=st.data(), family=st.sampled_from(["tiff", "bigtiff", "svs"]))
def test_corrupted_slides_open_or_fail_in_one_line(seeds, worker, scratch, data, family) -> None:
    seed = seeds[family]
    path = scratch / f"fuzz{seed[0].suffix}"
    path.write_bytes(data.draw(mutated(seed)))
    _check(worker, path, family)


@settings(FUZZ, max_examples=150)
@given(data=st.binary(max_size=256), suffix=st.sampled_from([".tif", ".svs", ".ndpi", ".dcm"]))
def test_random_bytes_fail_in_one_line(worker, scratch, data, suffix) -> None:
    path = scratch / f"random{suffix}"
    path.write_bytes(b"II*\x00" + data if data[:1] == b"\x00" else data)  # often a TIFF's magic
    _check(worker, path, "random")


def test_the_seeds_open(seeds, worker) -> None:
    for family, (path, _, _) in seeds.items():
        assert worker.check(path) == {"outcome": "ok"}, family

"""Special files given as a slide (a FIFO would block OpenSlide's open for ever; a device or a socket
is never a slide) are refused before anything opens them, with one line; so is a slide whose folder
OpenSlide scans (DICOM, MIRAX) when it holds one. Folders that are slides keep working."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.errors import SlideError
from engine.slide import open_slide

ROOT = Path(__file__).resolve().parents[3]
pytestmark = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs (POSIX)")


@pytest.fixture
def fifo(tmp_path: Path) -> Path:
    path = tmp_path / "slide.svs"
    os.mkfifo(path)
    return path


@pytest.fixture
def unix_socket(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "slide.tif"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(path))
        yield path


def _info(path: Path) -> subprocess.CompletedProcess:
    """``cocopath-engine info`` in a child with a time limit: a hang fails the test, not the run."""
    return subprocess.run([sys.executable, "-m", "engine.cli", "info", str(path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def test_info_refuses_a_fifo_at_once(fifo: Path) -> None:
    r = _info(fifo)
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.strip().rstrip(".") == f"cocopath-engine: {fifo}: is a FIFO (named pipe), not a file"


@pytest.mark.parametrize("device", ["/dev/null", "/dev/zero", "/dev/urandom"])
def test_devices_are_refused(device: str) -> None:
    if not Path(device).exists():
        pytest.skip(f"no {device}")
    with pytest.raises(SlideError, match="is a character device, not a file"):
        open_slide(device)


def test_a_socket_is_refused(unix_socket: Path) -> None:
    with pytest.raises(SlideError) as e:
        open_slide(unix_socket)
    assert str(e.value).rstrip(".") == f"{unix_socket}: is a socket, not a file"


def test_a_link_to_a_fifo_is_refused(fifo: Path, tmp_path: Path) -> None:
    link = tmp_path / "link.svs"
    link.symlink_to(fifo)
    r = _info(link)
    assert r.returncode == 1 and "is a FIFO (named pipe), not a file" in r.stderr
    assert r.stderr.count("\n") == 1


def test_a_fifo_in_a_dicom_folder_is_refused(dicom_dir: Path, tmp_path: Path) -> None:
    """OpenSlide reads every file beside a DICOM file (it blocked for ever on a FIFO there)."""
    folder = tmp_path / "dicom"
    shutil.copytree(dicom_dir, folder)
    os.mkfifo(folder / "zz")
    r = _info(folder)
    assert r.returncode == 1
    line = r.stderr.strip()
    assert line.count("\n") == 0 and "zz there is a FIFO (named pipe), not a file" in line
    with pytest.raises(SlideError, match="move it out of that folder"):
        open_slide(sorted(folder.glob("*.dcm"))[0])


def test_dicom_and_mirax_folders_still_open(dicom_dir: Path, tmp_path: Path) -> None:
    """A sub-folder or a dangling link beside the slide is no reason to refuse it."""
    folder = tmp_path / "dicom"
    shutil.copytree(dicom_dir, folder)
    (folder / "notes").mkdir()
    (folder / "gone.dcm").symlink_to(tmp_path / "nowhere.dcm")
    with open_slide(folder) as s:
        assert s.info.dimensions == (2220, 2967)


def test_a_fifo_in_a_mirax_data_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "slide").mkdir()
    (tmp_path / "slide.mrxs").write_bytes(b"not read")
    (tmp_path / "slide" / "Slidedat.ini").write_text("[GENERAL]\n")
    os.mkfifo(tmp_path / "slide" / "Data0000.dat")
    with pytest.raises(SlideError, match="Data0000.dat there is a FIFO"):
        open_slide(tmp_path / "slide.mrxs")

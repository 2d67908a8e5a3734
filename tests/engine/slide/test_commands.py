"""`cocopath-engine info` and `make-pyramid`: JSON out, one-line errors, exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.cli import main


def test_info_json(small_svs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", str(small_svs), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["dimensions"] == [2220, 2967] and data["mpp"] == [0.499, 0.499]
    assert data["vendor"] == "aperio" and data["properties"]["openslide.vendor"] == "aperio"


def test_info_text_without_mpp(no_mpp_svs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", str(no_mpp_svs)]) == 0
    assert "not recorded (no physical units)" in capsys.readouterr().out


def test_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.svs"
    bad.write_text("hello")
    assert main(["info", str(bad)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("cocopath-engine: ") and "bad.svs" in err and "\n" not in err
    assert main(["make-pyramid", str(tmp_path / "x.tif"), "--size", "big"]) == 1
    assert "WIDTHxHEIGHT" in capsys.readouterr().err


def test_make_pyramid(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "p.tif"
    assert main(["make-pyramid", str(out), "--size", "1500x1200"]) == 0
    assert out.exists()
    assert main(["info", str(out), "--json"]) == 0
    text = capsys.readouterr().out
    assert json.loads(text[text.index("{"):])["dimensions"] == [1500, 1200]


def test_no_command_prints_usage(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "usage" in capsys.readouterr().err.lower()

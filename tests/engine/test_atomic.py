from __future__ import annotations

import json
from pathlib import Path

from engine.atomic import write_report


def test_write_report_puts_the_json_and_its_markdown_side_by_side(tmp_path: Path) -> None:
    out = tmp_path / "benchmarks" / "x.json"
    write_report(out, {"figure": 0.5, "slide": tmp_path / "a.svs"}, "# X\n")
    assert json.loads(out.read_text()) == {"figure": 0.5, "slide": str(tmp_path / "a.svs")}  # a path as text
    assert (tmp_path / "benchmarks" / "x.md").read_text() == "# X\n"
    assert sorted(p.name for p in out.parent.iterdir()) == ["x.json", "x.md"]  # no temporary file left

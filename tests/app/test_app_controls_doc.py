"""The controls help (app/CONTROLS.md, shown by Help ▸ Controls) is the README's controls section,
and it names every tool's shortcut."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_readme_carries_the_controls_help_line_for_line():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    lines = [line.lstrip("#").strip() for line in
             (ROOT / "app" / "CONTROLS.md").read_text(encoding="utf-8").splitlines()]
    missing = [line for line in lines if line and line not in readme]
    assert not missing, f"README.md lacks these lines of app/CONTROLS.md: {missing}"


def test_every_tool_and_accept_shortcut_is_in_the_controls_help():
    from app.viewer.tools import TOOL_CLASSES

    text = (ROOT / "app" / "CONTROLS.md").read_text(encoding="utf-8")
    rows = [line for line in text.splitlines() if line.startswith("|")]
    for tool in TOOL_CLASSES:
        assert any(tool.shortcut in row.split("|")[3] for row in rows), tool.name
    assert any("Accept" in row and "A / Shift+A" in row for row in rows)

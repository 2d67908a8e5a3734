"""The architecture's dependency rules hold (import-linter contracts in pyproject.toml)."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
import tomllib
from pathlib import Path

import engine

ROOT = Path(__file__).resolve().parents[1]


def _contract(name_start: str) -> dict:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    contracts = config["tool"]["importlinter"]["contracts"]
    return next(c for c in contracts if c["name"].startswith(name_start))


def _engine_modules() -> set[str]:
    return {f"engine.{m.name}" for m in pkgutil.iter_modules(engine.__path__)}


def test_import_contracts_are_kept() -> None:
    lint = Path(sys.executable).with_name("lint-imports")
    proc = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 broken" in proc.stdout


def test_engine_imports_without_qt_or_torch() -> None:
    code = ("import sys, engine, engine.slide, engine.cli; engine.cli.build_parser(); "
            "bad = [m for m in ('PySide6', 'torch') if m in sys.modules]; "
            "assert not bad, bad")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_the_app_contract_forbids_every_engine_module_but_the_facade() -> None:
    """A new engine module is behind the facade from the day it is written."""
    forbidden = set(_contract("the app reaches the engine only")["forbidden_modules"])
    assert _engine_modules() - {"engine.api"} <= forbidden
    assert "engine.api" not in forbidden


def test_every_engine_module_has_a_layer() -> None:
    layers = _contract("engine layers")["layers"]
    placed = {m.strip() for layer in layers for m in layer.split(":")}
    assert placed == _engine_modules()


def _app_modules() -> set[str]:
    import app

    return {f"app.{m.name}" for m in pkgutil.iter_modules(app.__path__)}


def test_every_app_module_but_the_command_line_is_kept_from_the_benchmarks() -> None:
    """A new module of the app may not import app.bench from the day it is written."""
    sources = set(_contract("nothing in the app imports the benchmarks")["source_modules"])
    assert sources == _app_modules() - {"app.__main__", "app.bench"}


def test_the_benchmarks_import_nothing_private_of_one_another() -> None:
    """Shared helpers are public (app.bench.common); a benchmark never takes another's ``_name``."""
    import ast

    bad = []
    for path in sorted((ROOT / "app" / "bench").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("app"):
                bad += [f"{path.name}: {node.module}.{a.name}" for a in node.names
                        if a.name.startswith("_")]
    assert not bad, bad
    modules = {f"app.bench.{m.name}" for m in pkgutil.iter_modules([str(ROOT / "app" / "bench")])}
    assert {"app.bench.common", "app.bench.viewer", "app.bench.training"} <= modules


def test_the_learning_loop_s_parts_import_none_of_one_another() -> None:
    """Rounds, registry and review talk through Qt signals (wired by app.actions.training) and the
    engine API: none imports another, and none reaches into the window's private attributes."""
    import ast
    import re

    parts = {"rounds", "registry", "review"}
    for name in parts:
        text = (ROOT / "app" / "actions" / f"{name}.py").read_text(encoding="utf-8")
        imported = {n.module for n in ast.walk(ast.parse(text)) if isinstance(n, ast.ImportFrom)}
        others = {f"app.actions.{p}" for p in parts - {name}}
        assert not imported & others, (name, imported & others)
        assert not re.search(r"window\._\w", text), name

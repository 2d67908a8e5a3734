"""A built wheel carries the resources the code loads, and the code finds them once installed.

The wheel is built offline from a copy of the sources (pip, with the venv's setuptools: no build
isolation, no index), unpacked as an installer would put it, and a fresh interpreter, started
outside the checkout, loads a distillation config and finds the shipped student from there.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: The resource folders the code reads (engine.distill.config, engine.finetune.registry).
LOADED = ("configs/distill", "models")


def _copy_sources(dest: Path) -> None:
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, dest / name)
    skip = shutil.ignore_patterns("__pycache__", "*.pyc", "screenshots", "benchmarks")
    for name in ("app", "engine", "resources"):
        shutil.copytree(ROOT / name, dest / name, ignore=skip)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("src")
    out = tmp_path_factory.mktemp("wheel")
    _copy_sources(src)
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                           "--no-index", "--quiet", str(src), "-w", str(out)],
                          capture_output=True, text=True, timeout=300, cwd=src)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (found,) = out.glob("cocopath-*.whl")
    return found


@pytest.mark.slow
def test_the_wheel_carries_every_resource_the_code_loads(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {p.relative_to(ROOT).as_posix() for folder in LOADED
               for p in (ROOT / "resources" / folder).rglob("*") if p.is_file()}
    assert shipped and shipped <= names, sorted(shipped - names)
    assert "engine/resources.py" in names and "app/CONTROLS.md" in names
    assert not any(n.startswith(("resources/screenshots/", "resources/benchmarks/")) for n in names)


@pytest.mark.slow
def test_an_installed_wheel_finds_its_resources(wheel: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)  # a pure wheel installs as it unpacks
    code = ("import engine, engine.resources as r; "
            "from engine.distill.config import load_config, method_names; "
            "from engine.finetune.registry import default_model_path; "
            "print(engine.__file__); print(r.resources_dir()); print(load_config('coco').method); "
            "print(len(method_names())); print(default_model_path())")
    env = {**os.environ, "PYTHONPATH": str(site), "PYTHONSAFEPATH": "1"}
    env.pop("COCOPATH_DEFAULT_MODEL", None)
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    engine_file, resources, method, n_methods, student = proc.stdout.split("\n")[:5]
    assert Path(engine_file).is_relative_to(site) and Path(resources) == site / "resources"
    assert method == "coco" and int(n_methods) == len(list((ROOT / "resources/configs/distill")
                                                           .glob("*.toml")))
    assert Path(student).is_relative_to(site / "resources" / "models")


def test_only_engine_resources_knows_where_resources_are() -> None:
    """No module finds shipped files through its own position in the checkout."""
    pattern = re.compile(r"""parents\[\d\]\s*/\s*["']resources["']|["']resources["']\s*/""")
    sources = [p for top in ("engine", "app") for p in (ROOT / top).rglob("*.py")]
    offenders = [str(p.relative_to(ROOT)) for p in sources
                 if p.name != "resources.py" and pattern.search(p.read_text())]
    assert offenders == []

"""Hostile and broken model files at the command line (issue 13): ``infer`` and ``models import`` of
each end in one line on stderr and exit 1, never a traceback; nothing is written outside ``--out``
and a folder named by the card survives. ``models export`` into a read-only folder, onto a folder or
onto a full disk: one line naming the file, no temporary file left. A prediction cache never
empties a folder that is not a prediction cache."""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import save as st_save

from engine.cli import main
from engine.models import create_model

TINY = {"decoder_channels": (16, 16, 16, 8, 8)}


@pytest.fixture(scope="module")
def base() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The weights and card of a small valid student (128² windows, 4 µm/px)."""
    torch.manual_seed(0)
    model = create_model("mobile-unet-small", classes=2, **TINY)
    card = {"format": "cocopath-model/1", "model": json.loads(json.dumps(model.config)),
            "classes": ["background", "tumour"], "input": {"mpp": 4.0, "tile": 128,
                                                          "mean": [0.485, 0.456, 0.406],
                                                          "std": [0.229, 0.224, 0.225]}}
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}, card


def _set(card: dict[str, Any], field: str, value: Any) -> dict[str, Any]:
    out = json.loads(json.dumps(card))
    *parents, last = field.split(".")
    node = out
    for p in parents:
        node = node.setdefault(p, {})
    node[last] = value
    return out


def _first_bn_var(tensors: dict[str, torch.Tensor]) -> str:
    return next(k for k in sorted(tensors) if k.endswith("running_var"))


#: name → (card change or raw card text, weight change, what the one line says)
CASES: dict[str, tuple[Any, Any, str]] = {
    "input-as-a-list": (("input", [4.0, 128]), None, "model card: input is a list"),
    "one-element-mean": (("input.mean", [0.5]), None, "model card: input.mean is a list of 1 item"),
    "mpp-fast": (("input.mpp", "fast"), None, "model card: input.mpp is 'fast', not a number"),
    "mpp-1e-9": (("input.mpp", 1e-9), None, "model card: input.mpp is 1e-09: it must be 0.05 to 100"),
    "mpp-nan": (("input.mpp", math.nan), None, "model card: input.mpp is nan"),
    "tile-2^20": (("input.tile", 2**20), None, "model card: input.tile is 1048576: it must be 64 to 2048"),
    "tile-not-x32": (("input.tile", 100), None, "model card: input.tile is 100: it must be a multiple of 32"),
    "huge-decoder": (("model.decoder_channels", [2**20] * 5), None,
                     "model card: model.decoder_channels[0] is 1048576"),
    "missing-encoder-weights": (("model.encoder_weights", "/nonexistent/enc.safetensors"), None,
                                "model card: model.encoder_weights names a file"),
    "encoder-weights-elsewhere": (("model.encoder_weights", "VICTIM"), None,
                                  "a model card may not point at files"),
    "std-0": (("input.std", [0, 0, 0]), None, "model card: input.std[0] is 0"),
    "mean-nan": (("input.mean", [math.nan, 0.5, 0.5]), None, "model card: input.mean[0] is nan"),
    "version-traversal": (("version", "../../../victim"), None, "model card: version is '../../../victim'"),
    "version-absolute": (("version", "VICTIM"), None, "it must be a plain name"),
    "version-dotdot": (("version", ".."), None, "model card: version is '..'"),
    "name-traversal": (("name", "../../victim"), None, "model card: name is '../../victim'"),
    "one-class": (("classes", ["tumour"]), None, "model card: classes lists 1 names"),
    "classes-do-not-fit": (("classes", ["background", "tumour", "necrosis"]), None, "do not fit together"),
    "unknown-architecture": (("model.name", "resnet-9000"), None, "model.name is 'resnet-9000', not a "
                                                                  "CoCoPath architecture"),
    "unknown-setting": (("model.depth", 152), None, "model.depth is not a setting of mobile-unet-small"),
    "card-is-a-list": ("[1, 2]", None, "model card is a list of 2 items, not a JSON object"),
    "card-not-json": ("{\"model\": ", None, "model card is not valid JSON"),
    "card-nested-deeply": ("[" * 50_000 + "]" * 50_000, None, "nested too deeply"),
    "nan-weights": (None, ("head.weight", math.nan), "weight head.weight holds non-finite values"),
    "inf-weights": (None, ("head.bias", math.inf), "weight head.bias holds non-finite values"),
    "negative-variance": (None, ("BNVAR", -1.0), "running_var is negative"),
    "weights-do-not-fit": (None, ("head.bias", "SHAPE"), "weights do not fit"),
}


def _hostile(folder: Path, base: tuple[dict, dict], case: str, victim: Path) -> Path:
    tensors, card = dict(base[0]), base[1]
    change, weights, _ = CASES[case]
    if isinstance(change, tuple):
        field, value = change
        value = str(victim) if value == "VICTIM" else value
        text = json.dumps(_set(card, field, value), allow_nan=True)
    elif isinstance(change, str):
        text = change
    else:
        text = json.dumps(card)
    if weights is not None:
        key, value = weights
        key = _first_bn_var(tensors) if key == "BNVAR" else key
        tensors[key] = torch.zeros(3) if value == "SHAPE" else torch.full_like(tensors[key], value)
    path = folder / f"{case}.safetensors"
    path.write_bytes(st_save(tensors, metadata={"cocopath": text}))
    return path


def _tree(root: Path, skip: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` but ``skip`` (and what a file holds)."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None)
            for p in sorted(root.rglob("*")) if skip not in p.parents and p != skip}


def _one_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("cocopath-engine: ") and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_hostile_model_is_refused_at_infer_and_import_in_one_line(case, base, pattern_slide, tmp_path,
                                                                    capsys):
    from engine.annotations import Project

    work = tmp_path / "work"
    out = work / "out"
    victim = work / "victim"  # what the card aims at: out/cache/backends/../../../victim
    victim.mkdir(parents=True)
    (victim / "precious.txt").write_text("keep me")
    model = _hostile(work, base, case, victim / "precious.txt" if "encoder" in case else victim)
    Project.create(work / "project").close()
    before = _tree(tmp_path, out)
    message = CASES[case][2]

    rc = main(["infer", str(pattern_slide), "--model", str(model), "--out", str(out)])
    err = _one_line(capsys)
    assert rc == 1 and message in err and str(model) in err, err

    rc = main(["models", "import", str(model), "--project", str(work / "project")])
    err = _one_line(capsys)
    assert rc == 1 and message in err and str(model) in err, err

    after = _tree(tmp_path, out)
    assert after == before  # nothing created, changed or removed outside --out (no version either)
    assert (victim / "precious.txt").read_text() == "keep me"
    assert not out.exists() or not any(p.suffix in (".onnx", ".choice") for p in out.rglob("*"))


def test_a_valid_model_still_imports_and_runs(base, pattern_slide, tmp_path, capsys):
    from engine.annotations import Project

    path = tmp_path / "ok.safetensors"
    path.write_bytes(st_save(base[0], metadata={"cocopath": json.dumps(base[1])}))
    Project.create(tmp_path / "project").close()
    assert main(["models", "import", str(path), "--project", str(tmp_path / "project")]) == 0
    capsys.readouterr()
    rc = main(["infer", str(pattern_slide), "--model", str(path), "--out", str(tmp_path / "out"),
               "--backend", "torch", "--json"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert json.loads(out.out)[0]["status"] == "done"


# -- the prediction cache never empties someone's folder --------------------------------------------

def _grid_and_tissue():
    from engine.inference.geometry import PredictionGrid

    grid = PredictionGrid("s.tif", (256, 256), 1.0, 0, 1.0, 64, 32, "")
    cols, rows = grid.shape
    return grid, np.ones((rows, cols), bool)


def test_a_cache_root_that_is_not_a_cache_is_never_emptied(tmp_path):
    from engine.inference.cache import CacheError, PredictionCache

    grid, tissue = _grid_and_tissue()
    victim = tmp_path / "victim"
    (victim / "sub").mkdir(parents=True)
    (victim / "precious.txt").write_text("keep me")
    (victim / "sub" / "more.txt").write_text("keep me too")
    with pytest.raises(CacheError, match="which a prediction cache never writes") as err:
        PredictionCache.open(victim, grid, "v1", 1, tissue)
    assert "\n" not in str(err.value)
    assert (victim / "precious.txt").read_text() == "keep me"
    assert (victim / "sub" / "more.txt").read_text() == "keep me too"
    link = tmp_path / "link"
    link.symlink_to(victim)  # a link to a folder: refused, the folder untouched
    with pytest.raises(CacheError, match="a link or a file"):
        PredictionCache.open(link, grid, "v1", 1, tissue)
    assert sorted(p.name for p in victim.rglob("*")) == ["more.txt", "precious.txt", "sub"]
    level = tmp_path / "cache-with-extra"
    cache = PredictionCache.open(level, grid, "v1", 1, tissue)
    cache.write_tile(0, 0, np.full((64, 64, 1), 9, np.uint8))
    (level / "L0" / "notes.txt").write_text("not a tile")  # a stranger inside a level folder
    with pytest.raises(CacheError, match="'L0'"):
        PredictionCache.open(level, grid, "v2", 1, tissue)
    assert (level / "L0" / "notes.txt").exists() and (level / "L0" / "0_0.z").exists()


def test_a_cache_of_another_version_is_still_emptied(tmp_path):
    from engine.inference.cache import PredictionCache

    grid, tissue = _grid_and_tissue()
    root = tmp_path / "c"
    cache = PredictionCache.open(root, grid, "v1", 1, tissue)
    cache.write_tile(0, 0, np.full((64, 64, 1), 9, np.uint8))
    (root / ".cache.json.123.tmp").write_bytes(b"left by a killed writer")
    cache = PredictionCache.open(root, grid, "v2", 1, tissue)
    assert cache.done_tiles() == set() and not (root / ".cache.json.123.tmp").exists()


# -- models export / import: read-only folders, folders, full disks ----------------------------------

@pytest.fixture(scope="module")
def _project_once(base, tmp_path_factory) -> Path:
    from engine.annotations import Project

    folder = tmp_path_factory.mktemp("exports")
    project = folder / "project"
    Project.create(project).close()
    path = folder / "ok.safetensors"
    path.write_bytes(st_save(base[0], metadata={"cocopath": json.dumps(base[1])}))
    assert main(["models", "import", str(path), "--project", str(project)]) == 0
    return project


@pytest.fixture
def project_with_version(_project_once, tmp_path) -> Path:
    """A project whose registry holds v0001 (a copy per test: imported once)."""
    return Path(shutil.copytree(_project_once, tmp_path / "project"))


def _export(project: Path, dest: Path) -> int:
    return main(["models", "export", "v0001", str(dest), "--project", str(project)])


def _full_disk_copy(src, dst, *a, **kw):
    """``shutil.copyfile`` on a full disk: half the bytes, then ENOSPC."""
    data = Path(src).read_bytes()
    Path(dst).write_bytes(data[: len(data) // 2])
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))


def test_export_onto_a_full_disk_is_one_line_and_leaves_nothing(project_with_version, tmp_path, capsys,
                                                                monkeypatch):
    capsys.readouterr()
    out = tmp_path / "exports"
    out.mkdir()
    monkeypatch.setattr(shutil, "copyfile", _full_disk_copy)
    assert _export(project_with_version, out / "mine.safetensors") == 1
    err = _one_line(capsys)
    assert str(out / "mine.safetensors") in err and "No space left on device" in err
    assert list(out.iterdir()) == []  # no temporary file, no card without its weights


def test_export_onto_a_folder_is_one_line(project_with_version, tmp_path, capsys):
    capsys.readouterr()
    (tmp_path / "taken.safetensors").mkdir()
    (tmp_path / "taken.safetensors" / "inside.txt").write_text("keep")
    assert _export(project_with_version, tmp_path / "taken.safetensors") == 1
    assert "is a folder" in _one_line(capsys)
    (tmp_path / "other.json").mkdir()  # the card's place is a folder: nothing is written either
    assert _export(project_with_version, tmp_path / "other.safetensors") == 1
    assert "other.json: is a folder" in _one_line(capsys)
    assert not (tmp_path / "other.safetensors").exists()
    assert (tmp_path / "taken.safetensors" / "inside.txt").read_text() == "keep"


def test_export_into_a_read_only_folder_is_one_line(project_with_version, tmp_path, capsys, monkeypatch):
    capsys.readouterr()
    ro = tmp_path / "read-only"
    ro.mkdir()
    if os.geteuid() == 0:  # root writes anywhere: the folder refuses new files as a read-only one would
        real = Path.write_bytes

        def refuse(self: Path, data: bytes) -> int:
            if self.parent == ro:
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
            return real(self, data)

        monkeypatch.setattr(Path, "write_bytes", refuse)
    else:
        ro.chmod(0o555)
    try:
        assert _export(project_with_version, ro / "mine.safetensors") == 1
        err = _one_line(capsys)
        assert str(ro / "mine.safetensors") in err and "Permission denied" in err
        assert list(ro.iterdir()) == []
    finally:
        ro.chmod(0o755)


def test_export_into_the_registry_itself_is_refused(project_with_version, capsys):
    capsys.readouterr()
    version = project_with_version / "models" / "v0001" / "model.safetensors"
    before = version.read_bytes()
    assert _export(project_with_version, project_with_version / "models" / "v0001" / "model.safetensors") == 1
    assert "versions are never changed" in _one_line(capsys)
    assert version.read_bytes() == before


def test_import_onto_a_full_disk_is_one_line_and_leaves_no_version(base, tmp_path, capsys, monkeypatch):
    from engine.annotations import Project

    project = tmp_path / "project"
    Project.create(project).close()
    path = tmp_path / "ok.safetensors"
    path.write_bytes(st_save(base[0], metadata={"cocopath": json.dumps(base[1])}))
    import engine.training.checkpoints as ck

    def full(target: Path, data: bytes) -> None:
        Path(target).write_bytes(data[: len(data) // 3])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(target))

    monkeypatch.setattr(ck, "atomic_write", full)
    capsys.readouterr()
    assert main(["models", "import", str(path), "--project", str(project)]) == 1
    err = _one_line(capsys)
    assert str(project / "models") in err and "No space left on device" in err
    assert sorted(p.name for p in (project / "models").iterdir()) == []  # no version, no temp folder
